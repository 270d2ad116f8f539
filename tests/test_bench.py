"""The benchmark scripts under bench/ run, and both sides train the same network."""

from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import throughput as mod

    return mod


@pytest.mark.parametrize("network", ["default", "ganin"])
def test_throughput_bench_runs_both_sides_on_the_same_network(tiny_data, throughput, network, monkeypatch):
    built = []
    import naive

    real = naive.DANNNet

    def spy(**kw):
        built.append(kw)
        return real(**kw)

    monkeypatch.setattr(naive, "DANNNet", spy)
    r = throughput.bench_device("cpu", steps=3, batch=16, data_dir=str(tiny_data), network=network)
    assert r["network"] == network and r["naive_img_s"] > 0 and r["dalab_img_s"] > 0 and r["inference_img_s"] > 0
    assert r["speedup"] == pytest.approx(r["dalab_img_s"] / r["naive_img_s"])
    want_bn = network == "default"
    assert built and all(kw["batch_norm"] is want_bn for kw in built)
    m = real(**built[-1])
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()) is want_bn


def test_throughput_variants_run_the_same_number_of_steps(tiny_data, throughput, monkeypatch):
    """--variants times dalab in fp32/bf16 x NCHW/channels_last, each over the same steps as the
    main measurement (each after its own warm-up)."""
    from dalab.training import trainer as trainer_mod

    seen = []
    real_fit = trainer_mod.Trainer.fit

    def spy(self):
        s = real_fit(self)
        seen.append((self.cfg.limit_train, s["steps_per_epoch"] * s["epochs"]))
        return s

    monkeypatch.setattr(trainer_mod.Trainer, "fit", spy)
    r = throughput.bench_device("cpu", steps=3, batch=16, data_dir=str(tiny_data), variants=True)
    combos = {(v["precision"], v["channels_last"]) for v in r["variants"]}
    assert combos == {("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)}
    assert all(v["img_s"] > 0 for v in r["variants"])
    timed = [steps for limit, steps in seen if limit == 3 * 16]  # not the warm-ups / the inference model
    assert len(timed) == 5 and all(s == 3 for s in timed)


def test_fast_suite_scales_lr_and_ema_with_the_batch():
    from dalab.evaluation.benchmark import SUITES, fast_batch
    from dalab.training import TrainConfig

    o = fast_batch(512, 40)
    assert o["lr"] == pytest.approx(0.08) and o["ema_decay"] == pytest.approx(0.999 ** 8, abs=1e-6)
    assert o["eval_every"] == 4 and fast_batch(64, 10)["lr"] == pytest.approx(0.01)
    for e in SUITES["digits-mnistm-fast"]["entries"]:
        TrainConfig(method=e.method, **e.overrides).validate()


def test_gpu_script_parses():
    import subprocess

    assert subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")]).returncode == 0


def test_ops_per_step_counts_grow_with_steps(tiny_data, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import ops_per_step

    short, long = (ops_per_step.op_counts("dann", n, "fp32", str(tiny_data)) for n in (2, 4))
    extra = sum(long.values()) - sum(short.values())
    assert extra > 0 and long["aten::convolution"] > short["aten::convolution"]


def test_ops_per_step_conv9_uses_the_suite_settings(tiny_data, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import ops_per_step

    cfg = ops_per_step.conv9_settings("dirt-t")
    assert cfg["arch"] == "conv9" and cfg["method_args"]["vat_eps"] == 1.5 and cfg["optimizer"] == "adam"
    with pytest.raises(SystemExit, match="not in the digits-mnistm-conv9 suite"):
        ops_per_step.conv9_settings("mean-teacher")
    small = ops_per_step.op_counts("source-only", 2, "fp32", str(tiny_data))
    conv9 = ops_per_step.op_counts("source-only", 2, "fp32", str(tiny_data), ops_per_step.conv9_settings("source-only"))
    assert conv9["aten::convolution"] > small["aten::convolution"]  # nine convolutions per pass, not two


def _gpu_conv9(*args, data=None, **env_extra):
    """bench/gpu_conv9.sh with ARGS, on the CPU (DEVICE=cpu), with DALAB_DATA=data when given. The runs
    that train pass --precision fp32: measuring the precision of conv9 takes minutes on a 2-core CPU."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, **env_extra}
    if data is not None:
        env["DALAB_DATA"] = str(data)
    return subprocess.run(["bash", str(BENCH / "gpu_conv9.sh"), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def test_gpu_conv9_script_dry_run_returns_results_and_weights(tiny_data, tmp_path):
    """The device script, on the CPU with tiny data: it trains the chain and the reference rows, and
    RETURN gets the small files plus one weights tar per seed (the models of finished runs)."""
    import json
    import subprocess
    import tarfile

    work, ret = tmp_path / "work", tmp_path / "ret"
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_conv9.sh")]).returncode == 0
    p = _gpu_conv9(work, ret, data=tiny_data, EXTRA="--epochs 1 --limit-train 128 --limit-eval 32 --seeds 1 --precision fp32",
                   BUDGET_S="400", REF_NEEDS_S="1", CHAIN_OUT="c9", CHAIN_EXTRA="--epochs-for adamatch=2")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "conv9 chain: rc 0" in p.stdout and "reference rows: rc 0" in p.stdout
    assert "Failed or diverged" not in p.stdout and "| 1/1 |" in p.stdout
    with tarfile.open(ret / "results.tgz") as t:
        names = t.getnames()
    assert "./c9/benchmark.md" in names and "./conv9-ref/benchmark.md" in names
    assert json.loads((work / "c9" / "adamatch" / "seed0" / "summary.json").read_text())["epochs_done"] == 2
    with tarfile.open(ret / "weights-seed0.tar") as t:
        assert sorted(t.getnames()) == ["c9/adamatch/seed0/model.pt", "c9/dirt-t-from-adamatch/seed0/model.pt"]
    with tarfile.open(ret / "weights-ref.tar") as t:
        assert sorted(t.getnames()) == ["conv9-ref/source-only/seed0/model.pt",
                                        "conv9-ref/target-only-oracle/seed0/model.pt"]


def test_gpu_conv9_script_runs_other_rows_of_the_suite(tiny_data, tmp_path):
    """CHAIN_METHODS and CHAIN_JOBS put other suite rows in the chain's place; their weights come back."""
    import tarfile

    work, ret = tmp_path / "work", tmp_path / "ret"
    p = _gpu_conv9(work, ret, data=tiny_data, EXTRA="--epochs 1 --limit-train 128 --limit-eval 32 --seeds 1 --precision fp32",
                   BUDGET_S="400", REF_NEEDS_S="99999", CHAIN_OUT="rest", CHAIN_METHODS="dann", CHAIN_JOBS="2")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "| dann |" in p.stdout and "| adamatch |" not in p.stdout
    with tarfile.open(ret / "weights-seed0.tar") as t:
        assert t.getnames() == ["rest/dann/seed0/model.pt"]
    assert not (work / "conv9-ref").exists()  # REF_NEEDS_S above the budget: no reference rows


def test_gpu_conv9_script_with_no_time_left_returns_the_checkpoints(tiny_data, tmp_path):
    """A chain cut in an earlier run (a ckpt.pt and no summary.json) comes back as its checkpoint; a
    tar that would pass 15 MiB is split; with no time left nothing is started and the exit is 124."""
    import tarfile

    work, ret = tmp_path / "work", tmp_path / "ret"
    a, d = work / "c9" / "adamatch" / "seed0", work / "c9" / "dirt-t-from-adamatch" / "seed0"
    for f in (a, d):
        f.mkdir(parents=True)
    (a / "ckpt.pt").write_bytes(b"0" * 10)
    with open(d / "ckpt.pt", "wb") as fh:
        fh.truncate(16 * 1024 * 1024)
    p = _gpu_conv9(work, ret, data=tiny_data, BUDGET_S="0", CHAIN_OUT="c9")
    assert p.returncode == 124, p.stdout[-2000:] + p.stderr[-2000:]
    stages = (work / "stages.txt").read_text()
    assert "conv9 chain: not run" in stages and "reference rows: not run" in stages
    assert "weights-seed0.tar: over 15 MiB, split into 2 tars" in stages
    assert not (ret / "weights-seed0.tar").exists()
    with tarfile.open(ret / "weights-seed0-part0.tar") as t0, tarfile.open(ret / "weights-seed0-part1.tar") as t1:
        assert t0.getnames() + t1.getnames() == ["c9/adamatch/seed0/ckpt.pt", "c9/dirt-t-from-adamatch/seed0/ckpt.pt"]
    assert (ret / "results.tgz").is_file() and not list(ret.glob("*.tmp"))
    # the budget's name up to dalab 0.8.0 is still read
    p = _gpu_conv9(tmp_path / "w2", tmp_path / "r2", data=tiny_data, DEADLINE_S="0", CHAIN_OUT="c9")
    assert p.returncode == 124 and "conv9 chain: not run" in (tmp_path / "w2" / "stages.txt").read_text()


def test_gpu_conv9_script_rejects_bad_arguments(tiny_data, tmp_path):
    p = _gpu_conv9(data=tiny_data)
    assert p.returncode == 2 and p.stderr.strip().startswith("usage:")
    p = _gpu_conv9(tmp_path / "w", tmp_path / "r", data=tiny_data, CHAIN_OUT="a/b")
    assert p.returncode == 2 and "CHAIN_OUT must be a plain folder name" in p.stderr
    for bad in ("0", "x", "-1", ""):
        p = _gpu_conv9(tmp_path / "w", tmp_path / "r", data=tiny_data, CHAIN_JOBS=bad)
        assert p.returncode == 2 and "CHAIN_JOBS must be a positive integer" in p.stderr, bad
    p = _gpu_conv9(tmp_path / "w", tmp_path / "r", data=tiny_data, CHAIN_METHODS="")
    assert p.returncode == 2 and "CHAIN_METHODS is empty" in p.stderr
    q = _gpu_conv9(tmp_path / "w", tmp_path / "r", tmp_path / "missing.pkl.gz")
    assert q.returncode == 2 and q.stderr.strip() == f"gpu_conv9.sh: {tmp_path / 'missing.pkl.gz'}: no such file"
    assert not (tmp_path / "w").exists()  # nothing was created before the arguments were checked


# bench/peers.py: dalab against pytorch-adapt (which lives in its own environment, see the script)
PEERS_WITHOUT_ADAPT = ("import runpy, sys; sys.modules['pytorch_adapt'] = None; "  # as if it were not installed
                       "sys.argv = [sys.argv[1]] + sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _peers(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", PEERS_WITHOUT_ADAPT, str(BENCH / "peers.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_peers_without_pytorch_adapt_says_how_to_install_it_and_exits_2(tiny_data):
    r = _peers("--steps", "5", "--data-dir", str(tiny_data))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pytorch-adapt==0.0.83" in lines[0] and "pip install" in lines[0]


@pytest.mark.parametrize("args", [["--steps", "0"], ["--device", "tpu"], ["--steps", "100000"]])
def test_peers_bad_input_exits_2(tiny_data, args):
    r = _peers("--only", "dalab", "--data-dir", str(tiny_data), *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_peers_dalab_side_runs_the_trainer(tiny_data):
    r = _peers("--only", "dalab", "--steps", "5", "--data-dir", str(tiny_data))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("dalab ")]
    assert len(rows) == 1 and " img/s | training " in rows[0] and "target test acc" in rows[0]
    assert "pytorch-adapt" not in r.stdout.split("\n", 1)[1]  # no peer row


def test_epoch_overhead_bench_runs_and_rejects_bad_input(tiny_data):
    import subprocess
    import sys

    run = lambda *a: subprocess.run([sys.executable, str(BENCH / "epoch_overhead.py"), "--data-dir", str(tiny_data), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=600)
    r = run("--steps", "3", "--rounds", "1", "--batch-size", "16")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "round 1: step loop" in r.stdout and "the step loop) | wall" in r.stdout
    r = run("--ops", "--batch-size", "16")
    assert r.returncode == 0 and "take_rows" in r.stdout and "SGD step, fused" in r.stdout
    for bad in (["--steps", "0"], ["--steps", "100000"]):
        r = run(*bad)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
