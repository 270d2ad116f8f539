"""Sweeps through submitit: a Slurm job array, or submitit's local executor when there is no Slurm.

No Slurm cluster is available to these tests: the runs go through submitit's LocalExecutor in real
subprocesses, and the sbatch script is checked by putting stand-ins for ``sbatch`` and ``srun`` on PATH
(submitit writes the script it would submit and hands it to ``sbatch``; nothing runs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import submitit

from dalab.cli.main import main
from dalab.evaluation.benchmark import collect_benchmark, run_benchmark
from dalab.training.launcher import (RunTask, SlurmOptions, SubmititLauncher, executor_kind, parse_extra,
                                     parse_mem, parse_time, read_record)

# the tiny grid: 2 methods x 2 seeds, 2 epochs of 4 steps (256 images, batch 64), fp32 (deterministic)
GRID = dict(methods=["source-only", "dann"], seeds=2, epochs=2, limit_train=256, limit_eval=128, precision="fp32",
            device="cpu")
CLI_GRID = ["--suite", "digits-mnistm", "--methods", "source-only,dann", "--seeds", "2", "--epochs", "2",
            "--limit-train", "256", "--limit-eval", "128", "--precision", "fp32", "--device", "cpu", "--quiet"]
ACC = ("source_test_acc", "target_test_acc", "source_val_acc")


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    """PATH without sbatch, as on this machine (a developer's Slurm login node would otherwise be used)."""
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not Path(d, "sbatch").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(path))


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """The grid trained by `--jobs 1`, in this process."""
    out = tmp_path_factory.mktemp("ref")
    res = run_benchmark("digits-mnistm", out=out, data_dir=str(tiny_data), progress=False, log=lambda *_: None, **GRID)
    return out, res


def _numbers(table: str) -> list[str]:
    """The table's lines without what depends on the machine: the train-seconds column and the hardware."""
    out = []
    for ln in table.splitlines():
        if ln.startswith("Hardware:"):
            continue
        if ln.startswith("| ") and "train s" not in ln:
            ln = "|".join(ln.split("|")[:-2])
        out.append(ln)
    return out


def _pids(*needles: str) -> list[int]:
    """Processes whose command line holds every needle (Linux /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(n in cmd for n in needles):
                found.append(int(d.name))
    return found


def _until(cond, what: str, timeout: float = 240.0, step: float = 0.01):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def _stop_after_first_checkpoint(run: Path) -> int:
    """Freeze the run's training process (SIGSTOP) as soon as its first checkpoint lands; returns its pid."""
    pid = _until(lambda: _pids("dalab.training.pool", str(run)), f"the training process of {run}")[0]
    _until(lambda: (run / "ckpt.pt").is_file(), f"{run}/ckpt.pt", step=0.005)
    os.kill(pid, signal.SIGSTOP)
    assert not (run / "summary.json").exists(), "the run finished before it could be interrupted"
    return pid


def _pending(pid: int, sig: signal.Signals) -> bool:
    """Whether ``sig`` is pending for the (stopped) process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(m, 16) for m in re.findall(r"^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)", status, flags=re.M)]
    return any(m & (1 << (int(sig) - 1)) for m in masks)


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds processes through /proc")


def test_no_sbatch_means_the_local_executor():
    assert shutil.which("sbatch") is None and executor_kind() == "local"


def test_grid_through_the_local_executor_equals_jobs_1(tiny_data, tmp_path, reference, capsys):
    ref_out, ref = reference
    out = tmp_path / "b"
    args = ["benchmark", *CLI_GRID, "--data-dir", str(tiny_data), "--out", str(out),
            "--launcher", "submitit", "--slurm-parallel", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "submitit, local executor (no sbatch on PATH" in text  # says which executor ran
    table = (out / "benchmark.md").read_text()
    assert _numbers(table) == _numbers(ref["table"])
    assert "| reused |" not in table
    for m in ("source-only", "dann"):
        for seed in (0, 1):
            run = out / m / f"seed{seed}"
            rec = read_record(run)
            assert rec["executor"] == "local" and Path(rec["stdout"]).is_file()  # trained by a submitit job
            assert "training into" in Path(rec["stdout"]).read_text()
            assert {k: _summary(run)[k] for k in ACC} == {k: _summary(ref_out / m / f"seed{seed}")[k] for k in ACC}
    assert "submitit" in json.loads((out / "benchmark.json").read_text())["launcher"]
    # --collect builds the same table from what landed, and submitting again reuses every run
    assert main(["benchmark", "--collect", str(out), "--quiet"]) == 0
    assert "4 of 4 runs completed" in capsys.readouterr().out
    assert _numbers((out / "benchmark.md").read_text()) == _numbers(ref["table"])
    assert main(args) == 0
    assert "| reused |" in (out / "benchmark.md").read_text() and "waiting for" not in capsys.readouterr().out


@needs_proc
def test_a_killed_task_is_reported_then_resubmitted_and_resumes(tiny_data, tmp_path, reference):
    ref_out, _ = reference
    out, run = tmp_path / "k", tmp_path / "k" / "source-only" / "seed0"
    grid = {**GRID, "methods": ["source-only"], "seeds": 1}
    lines: list[str] = []
    launcher = SubmititLauncher(out / "submitit", SlurmOptions(parallel=1), wait=False, progress=False,
                                log=lines.append)
    assert run_benchmark("digits-mnistm", out=out, data_dir=str(tiny_data), launcher=launcher, log=lines.append,
                         **grid)["rows"] is None  # submitted, not waited for
    trainer = _stop_after_first_checkpoint(run)
    (task,) = _pids("submitit.core._submit", str(out))
    os.kill(task, signal.SIGKILL)  # the whole task dies, as on a failed node
    os.kill(trainer, signal.SIGKILL)
    rec = read_record(run)
    _until(lambda: not _pids("submitit.local._local", str(out)), "the job to end", step=0.1)
    res = collect_benchmark(out, log=lines.append)
    assert res["counts"] == {"failed": 1}
    (failure,) = res["rows"][0]["failures"]
    assert "the job ended without a result" in failure and rec["stdout"] in failure
    # submitted again: the run resumes from its checkpoint and ends as the uninterrupted run
    again = SubmititLauncher(out / "submitit", SlurmOptions(parallel=1), progress=False, log=lines.append)
    (row,) = run_benchmark("digits-mnistm", out=out, data_dir=str(tiny_data), launcher=again, log=lines.append,
                           **grid)["rows"]
    assert row["runs_ok"] == 1
    assert f"resuming from {run / 'ckpt.pt'}" in Path(read_record(run)["stdout"]).read_text()
    assert {k: _summary(run)[k] for k in ACC} == {k: _summary(ref_out / "source-only" / "seed0")[k] for k in ACC}


@needs_proc
def test_a_preempted_task_is_requeued_and_resumes_from_its_checkpoint(tiny_data, tmp_path, reference):
    ref_out, _ = reference
    out, run = tmp_path / "p", tmp_path / "p" / "dann" / "seed0"
    grid = {**GRID, "methods": ["dann"], "seeds": 1}
    lines: list[str] = []
    launcher = SubmititLauncher(out / "submitit", SlurmOptions(parallel=1), wait=False, progress=False,
                                log=lines.append)
    run_benchmark("digits-mnistm", out=out, data_dir=str(tiny_data), launcher=launcher, log=lines.append, **grid)
    trainer = _stop_after_first_checkpoint(run)
    (task,) = _pids("submitit.core._submit", str(out))
    os.kill(task, submitit.JobEnvironment._usr_sig())  # what Slurm sends before pre-empting or timing out
    _until(lambda: _pending(trainer, signal.SIGTERM), "the task to stop its training process")
    os.kill(trainer, signal.SIGCONT)
    res = collect_benchmark(out, wait=True, progress=False, log=lines.append)
    assert res["counts"] == {"completed": 1}
    log = Path(read_record(run)["stdout"]).read_text()
    assert "requeued to resume" in log and f"resuming from {run / 'ckpt.pt'}" in log
    assert {k: _summary(run)[k] for k in ACC} == {k: _summary(ref_out / "dann" / "seed0")[k] for k in ACC}


def _fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """Stand-ins for sbatch (records its arguments, answers as sbatch does) and srun, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls.txt"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in ("sbatch", "srun"):
        (bin_dir / f).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_the_sbatch_script_of_a_grid(tiny_data, tmp_path, monkeypatch, capsys):
    calls = _fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "s"
    assert main(["benchmark", *CLI_GRID, "--data-dir", str(tiny_data), "--out", str(out), "--launcher", "submitit",
                 "--no-wait", "--slurm-partition", "gpu", "--slurm-time", "1:30:00", "--slurm-cpus", "8",
                 "--slurm-gpus", "2", "--slurm-mem", "16G", "--slurm-parallel", "3",
                 "--slurm-extra", "--account=lab --qos high"]) == 0
    text = capsys.readouterr().out
    assert "Slurm executor" in text and "submitted job array 4242: 4 runs, at most 3 at once" in text
    folder = out.resolve() / "submitit" / "%j"
    script_file = submitit.SlurmJob(folder=folder, job_id="4242").paths.submission_file
    (call,) = calls.read_text().split()  # one sbatch call: one job array
    assert Path(call).resolve() == script_file.resolve()
    script = script_file.read_text()
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --gpus-per-node=2", "#SBATCH --mem=16G",
                 "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --job-name=dalab"):
        assert line in script.splitlines(), line
    assert "-m submitit.core._submit" in script  # each task runs submitit's runner on its own pickle
    runs = {out.resolve() / m / f"seed{s}" for m in ("source-only", "dann") for s in (0, 1)}
    seen = set()
    for k in range(4):
        job = submitit.SlurmJob(folder=folder, job_id=f"4242_{k}")
        task = job.submission().function
        assert isinstance(task, RunTask)
        # two GPUs per run: torchrun (torch.distributed.run) with two processes; 8 CPUs / 2 = 4 threads each
        assert task.command("CFG") == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       "--nproc_per_node=2", "-m", "dalab.training.pool", "CFG", task.out, "4"]
        assert task.config["epochs"] == 2 and task.config["precision"] == "fp32"
        assert read_record(Path(task.out))["job_id"] == f"4242_{k}"
        seen.add(Path(task.out))
    assert seen == runs
    # submitted again while the jobs are pending (sacct cannot tell: UNKNOWN): not submitted twice
    assert main(["benchmark", *CLI_GRID, "--data-dir", str(tiny_data), "--out", str(out), "--launcher", "submitit",
                 "--no-wait", "--slurm-time", "90"]) == 0
    assert calls.read_text().split() == [call]
    assert "already submitted as job 4242_0 (UNKNOWN), not submitted again" in capsys.readouterr().out


def test_one_gpu_or_none_runs_the_worker_itself():
    for gpus in (0, 1):
        assert RunTask("r", {}, "/o", 3, gpus).command("C") == [sys.executable, "-m", "dalab.training.pool", "C",
                                                                "/o", "3"]


def test_slurm_option_values():
    assert [parse_time(t) for t in ("90", "1:30", "1:30:00", "2-0", "1-2:30", "0-0:0:61", 45)] == \
        [90, 2, 90, 2880, 1590, 2, 45]
    assert parse_mem("16G") == 16 and parse_mem("512M") == 0.5 and parse_mem("1t") == 1024
    assert parse_extra("--account=lab --qos high --exclusive") == {"account": "lab", "qos": "high", "exclusive": True}
    assert parse_extra(["--constraint=a100"]) == {"constraint": "a100"}
    opts = SlurmOptions.parse({"partition": "gpu", "gpus": "2"}).updated(SlurmOptions.parse({"gpus": "4"}, "x"))
    assert (opts.partition, opts.gpus) == ("gpu", 4)


def _rc_and_one_line(capsys, argv) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's errors
        rc = e.code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return rc, err


@pytest.mark.parametrize("extra, says", [
    (["--launcher", "nope"], "invalid choice: 'nope'"),
    (["--launcher", "submitit", "--slurm-partition"], "expected one argument"),
    (["--launcher", "submitit", "--slurm-time"], "expected one argument"),
    (["--launcher", "submitit", "--slurm-time", "soon"], "--slurm-time: expected a time"),
    (["--launcher", "submitit", "--slurm-time", "0"], "at least one minute"),
    (["--launcher", "submitit", "--slurm-mem", "16"], "--slurm-mem: expected a size with its unit"),
    (["--launcher", "submitit", "--slurm-gpus", "two"], "--slurm-gpus: expected a positive integer"),
    (["--launcher", "submitit", "--slurm-parallel", "0"], "--slurm-parallel: expected a positive integer"),
    (["--launcher", "submitit", "--slurm-extra", "-A lab"], "expected long sbatch options"),
    (["--launcher", "submitit", "--slurm-extra=--array=0-9"], "--array is set by submitit itself"),
    (["--launcher", "submitit", "--slurm-partition", ""], "expected a partition name"),
    (["--slurm-partition", "gpu"], "--slurm-partition needs --launcher submitit"),
    (["--launcher", "submitit", "--jobs", "2"], "--jobs is for --launcher local"),
    (["--no-wait"], "--no-wait needs --launcher submitit"),
    (["--wait"], "--wait is for --collect"),
])
def test_bad_launcher_input_is_one_line_and_exit_2(tiny_data, tmp_path, capsys, extra, says):
    rc, err = _rc_and_one_line(capsys, ["benchmark", "--out", str(tmp_path / "o"), "--data-dir", str(tiny_data),
                                        *extra])
    assert rc == 2 and says in err


def test_bad_slurm_config_files(tiny_data, tmp_path, capsys):
    base = ["benchmark", "--out", str(tmp_path / "o"), "--data-dir", str(tiny_data), "--launcher", "submitit"]
    cfg = tmp_path / "slurm.json"
    for text, says in (("{", "not valid JSON"), ('["gpu"]', "expected a JSON object"),
                       ('{"partiton": "gpu"}', "unknown option 'partiton'"), ('{"time": "x"}', "time: expected a time")):
        cfg.write_text(text)
        rc, err = _rc_and_one_line(capsys, [*base, "--slurm-config", str(cfg)])
        assert rc == 2 and says in err, err
    rc, err = _rc_and_one_line(capsys, [*base, "--slurm-config", str(tmp_path / "missing.json")])
    assert rc == 2 and "cannot read it" in err


def test_slurm_needs_a_time_limit(tiny_data, tmp_path, monkeypatch, capsys):
    _fake_slurm(tmp_path, monkeypatch)
    rc, err = _rc_and_one_line(capsys, ["benchmark", "--out", str(tmp_path / "o"), "--data-dir", str(tiny_data),
                                        "--launcher", "submitit"])
    assert rc == 2 and "needs --slurm-time" in err


def test_without_submitit_the_launcher_says_what_to_install(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    for cmd in (["benchmark", "--out", str(tmp_path / "o")], ["study", "--preset", "smoke", "--out", str(tmp_path / "s")]):
        rc, err = _rc_and_one_line(capsys, [*cmd, "--data-dir", str(tiny_data), "--launcher", "submitit"])
        assert rc == 2 and "pip install 'dalab[cluster]'" in err


def test_collect_needs_a_benchmark_folder(tmp_path, capsys):
    rc, err = _rc_and_one_line(capsys, ["benchmark", "--collect", str(tmp_path)])
    assert rc == 2 and "benchmark-plan.json" in err
    rc, err = _rc_and_one_line(capsys, ["benchmark", "--collect", str(tmp_path), "--out", str(tmp_path)])
    assert rc == 2 and "leave out --out" in err


def test_collect_says_which_runs_are_missing_and_why(tiny_data, tmp_path):
    """Nothing submitted: each run is listed as not run yet; a dependent run as needing its parent."""
    out = tmp_path / "c"
    out.mkdir()
    (out / "benchmark-plan.json").write_text(json.dumps({
        "suite": "digits-mnistm", "seeds": 1, "methods": ["vada", "dirt-t"], "pairs": [["mnist", "mnistm"]],
        "settings": {"epochs": 1, "data_dir": str(tiny_data)}, "epochs_for": {}}))
    lines: list[str] = []
    res = collect_benchmark(out, log=lines.append)
    assert res["counts"] == {"missing": 1, "failed": 1}
    assert "seed 0: missing: not run yet" in res["table"] and "needs a finished vada run for seed 0" in res["table"]
    assert lines[-1].endswith("0 of 2 runs completed, 1 failed, 1 missing")


def test_study_hands_each_wave_to_the_launcher(tmp_path):
    """Teachers and every other run first, the pseudo-label runs after their teachers have a model."""
    from dalab.experiments.study import Study

    class Recorder:
        def __init__(self):
            self.waves = []

        def run(self, jobs):
            self.waves.append([j.label for j in jobs])
            for j in jobs:  # as if each run had finished
                j.out.mkdir(parents=True, exist_ok=True)
                (j.out / "model.pt").write_bytes(b"")
            return {}

    rec = Recorder()
    study = Study("smoke", tmp_path, device="cpu", seeds=1, log=lambda *_: None, launcher=rec)
    study._run_parallel()
    assert len(rec.waves) == 2
    assert rec.waves[0] and not any("_from-" in label for label in rec.waves[0])
    assert rec.waves[1] and all("_from-" in label for label in rec.waves[1])
    assert len(rec.waves[0]) + len(rec.waves[1]) == len(study.specs)
