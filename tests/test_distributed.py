"""Two CPU processes (gloo) launched by torchrun vs one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def _train(args, out, tiny, nproc=None):
    base = ["-m", "dalab", "train", "--data-dir", str(tiny), "--out", str(out), "--quiet",
            "--precision", "fp32", "--device", "cpu", "--batch-size", "32", "--epochs", "2", "--seed", "5",
            "--no-batch-norm", *args]  # batch norm statistics are per rank: compared without BN
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"] + base
    else:
        cmd = [sys.executable] + base
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # one result line, however many ranks
    assert [ln for ln in r.stdout.splitlines() if "status=" in ln] == [r.stdout.strip()], r.stdout
    # DDP is told which methods use every parameter: no warning about a wasted search for unused ones
    assert "find_unused_parameters=True" not in r.stderr, r.stderr[-2000:]
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("method", ["dann", "source-only"])
def test_two_process_gloo_matches_single_process(tiny_data, tmp_path, method):
    single = _train(["--method", method], tmp_path / "one", tiny_data)
    multi = _train(["--method", method], tmp_path / "two", tiny_data, nproc=2)
    assert multi["world_size"] == 2 and multi["batch_per_domain_per_rank"] == 16
    assert single["world_size"] == 1 and multi["steps_per_epoch"] == single["steps_per_epoch"]
    # only rank 0 wrote files, and the run is complete
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if not p.name.startswith(".")) == \
        ["ckpt.pt", "metrics.jsonl", "model.pt", "summary.json"]
    # same global batch, same permutation, averaged gradients: the same training up to float order
    wa = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["state_dict"]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-4, rtol=1e-3), k
    for k in ("source_test_acc", "target_test_acc"):
        assert abs(single[k] - multi[k]) <= 0.02
    rows1 = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    rows2 = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows1[-1]["task_loss"] - rows2[-1]["task_loss"]) < 1e-3  # metrics averaged over ranks


def test_global_batch_must_divide_by_world_size(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "localhost:0", "-m", "dalab", "train", "--data-dir", str(tiny_data),
           "--out", str(tmp_path / "r"), "--quiet", "--device", "cpu", "--batch-size", "33", "--epochs", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "divisible" in r.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("method", ["cdan", "mean-teacher", "vada"])
def test_other_methods_and_batch_norm_run_under_two_processes(tiny_data, tmp_path, method):
    """Methods with their own modules (CDAN's discriminator, the EMA teacher), VADA (every parameter used,
    VAT's extra passes inside the step) and default BN."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "localhost:0", "-m", "dalab", "train", "--data-dir", str(tiny_data),
           "--out", str(tmp_path / "r"), "--quiet", "--device", "cpu", "--batch-size", "32", "--epochs", "1",
           "--method", method, "--precision", "fp32"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "find_unused_parameters=True" not in r.stderr, r.stderr[-2000:]
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "completed" and s["world_size"] == 2 and s["config"]["batch_norm"] is True


@pytest.mark.parametrize("rank,printed", [("0", True), ("1", False)])
@pytest.mark.parametrize("as_json", [False, True])
def test_only_rank_0_prints_the_result(monkeypatch, capsys, tmp_path, rank, printed, as_json):
    """Each rank's Trainer returns the summary; what `dalab train` prints depends on RANK alone."""
    from dalab.cli import train_cmd
    from dalab.cli.main import main

    summary = {"method": "dann", "source": "mnist", "target": "mnistm", "status": "completed",
               "source_test_acc": 0.9, "target_test_acc": 0.7, "train_seconds": 1.0, "device": "cpu",
               "precision": "fp32"}

    class FakeTrainer:
        def __init__(self, *a, **k):
            pass

        def fit(self):
            return summary

    monkeypatch.setattr(train_cmd, "Trainer", FakeTrainer)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", rank)
    assert main(["train", "--out", str(tmp_path / "r"), *(["--json"] if as_json else [])]) == 0
    out = capsys.readouterr().out
    if not printed:
        assert out == ""
    elif as_json:
        assert json.loads(out)["target_test_acc"] == 0.7
    else:
        assert out.count("\n") == 1 and "status=completed" in out and "70.00%" in out
