"""Crash safety: a real ``kill -9`` of ``dalab train`` at several moments, then ``--resume``.

The resumed run must end with exactly the summary accuracies, metrics and weights
(bit for bit) of an uninterrupted run with the same seed on the CPU. Kill points:

- right after the first ``ckpt.pt`` appears (kill -9 from outside);
- *during* a checkpoint write: the process SIGKILLs itself with half of the checkpoint
  written to its temporary file, and (second variant) with the temporary file complete
  but not yet renamed onto ``ckpt.pt``;
- at a random early time (possibly before any checkpoint, possibly after the end).

Every subprocess runs with one thread (``OMP_NUM_THREADS=1``) so the machine's other
jobs do not slow it down; determinism does not depend on it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
EPOCHS = 3

# Runs the real CLI in a process that kills itself (SIGKILL, like kill -9) during the
# KILL_AT-th write of ckpt.pt: MODE=mid-write after half of the bytes reached the temporary
# file, MODE=before-rename after the whole temporary file was written, before os.replace.
KILLER = r"""
import io, os, signal, sys
import torch
import dalab.data.io as dio
from dalab.training.checkpoint import CKPT_FORMAT
mode, kill_at = os.environ["KILL_MODE"], int(os.environ["KILL_AT"])
count = {"n": 0}
orig_save, orig_replace = torch.save, os.replace

def save(obj, f, *a, **k):
    if isinstance(obj, dict) and obj.get("format") == CKPT_FORMAT:
        count["n"] += 1
        if mode == "mid-write" and count["n"] == kill_at:
            buf = io.BytesIO()
            orig_save(obj, buf)
            data = buf.getvalue()
            with open(f, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return orig_save(obj, f, *a, **k)

def replace(src, dst, *a, **k):
    if mode == "before-rename" and os.path.basename(dst) == "ckpt.pt" and count["n"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return orig_replace(src, dst, *a, **k)

torch.save = save
dio.os.replace = replace
from dalab.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def train_args(data, out, *extra):
    return ["train", "--method", "dann", "--data-dir", str(data), "--out", str(out), "--epochs", str(EPOCHS),
            "--batch-size", "32", "--limit-train", "128", "--limit-eval", "64", "--precision", "fp32",
            "--seed", "5", "--quiet", *extra]


def dalab(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "dalab", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "dalab", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill9(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def resume(data, out):
    r = dalab(*train_args(data, out, "--resume"))
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".*.tmp")), "temporary files of the killed write were not cleaned up"
    return r


def outcome(run: Path) -> dict:
    """Everything that must be identical between two runs (timings excluded)."""
    s = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("train_seconds", None)
    return {"status": s["status"], "epochs_done": s["epochs_done"],
            "acc": (s["source_test_acc"], s["target_test_acc"], s["source_val_acc"]), "rows": rows}


def assert_same_run(a: Path, b: Path) -> None:
    assert outcome(a) == outcome(b)
    wa = torch.load(a / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(b / "model.pt", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"weight {k} differs"
    oa = torch.load(a / "ckpt.pt", weights_only=True)["optimizer"]["state"]
    ob = torch.load(b / "ckpt.pt", weights_only=True)["optimizer"]["state"]
    for k in oa:
        assert torch.equal(oa[k]["momentum_buffer"], ob[k]["momentum_buffer"])


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = dalab(*train_args(tiny_data, out))
    assert r.returncode == 0, r.stderr
    assert outcome(out)["epochs_done"] == EPOCHS
    return out


def test_same_seed_gives_identical_results_across_processes(tiny_data, reference, tmp_path):
    r = dalab(*train_args(tiny_data, tmp_path / "again"))
    assert r.returncode == 0, r.stderr
    assert_same_run(reference, tmp_path / "again")


def test_kill_after_first_checkpoint_then_resume(tiny_data, reference, tmp_path):
    out = tmp_path / "run"
    proc = start(*train_args(tiny_data, out))
    deadline = time.monotonic() + 90
    while proc.poll() is None and not (out / "ckpt.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    kill9(proc)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "summary.json").exists() and not (out / "model.pt").exists()
    epoch = torch.load(out / "ckpt.pt", weights_only=True)["epoch"]
    assert 1 <= epoch < EPOCHS
    resume(tiny_data, out)
    assert_same_run(reference, out)


@pytest.mark.parametrize("mode,kill_at", [("mid-write", 2), ("before-rename", 1)])
def test_kill_during_checkpoint_write_then_resume(tiny_data, reference, tmp_path, mode, kill_at):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", KILLER, *train_args(tiny_data, out)], capture_output=True,
                       text=True, timeout=120, env={**ENV, "KILL_MODE": mode, "KILL_AT": str(kill_at)})
    assert r.returncode == -signal.SIGKILL, r.stderr
    leftovers = list(out.glob(".ckpt.pt.*.tmp"))
    assert len(leftovers) == 1, "the kill did not happen inside the checkpoint write"
    if kill_at == 1:
        assert not (out / "ckpt.pt").exists()
    else:  # the previous checkpoint is intact and loads
        assert torch.load(out / "ckpt.pt", weights_only=True)["epoch"] == kill_at - 1
    resume(tiny_data, out)
    assert_same_run(reference, out)


def test_kill_at_a_random_early_time_then_resume(tiny_data, reference, tmp_path):
    delay = random.Random().uniform(0.0, 4.0)
    out = tmp_path / "run"
    proc = start(*train_args(tiny_data, out))
    time.sleep(delay)
    kill9(proc)
    print(f"killed after {delay:.2f} s (return code {proc.returncode})")
    resume(tiny_data, out)
    assert_same_run(reference, out)

