"""The bad-input battery: the CLI driven as a user would, through real subprocesses.

For every bad input: exit code 2 (bad input) -- or 1 for a runtime failure, see the
divergence tests at the end -- exactly one non-empty line on stderr that names the bad
flag or file, no traceback, no new or changed file anywhere in the workspace (which
holds an earlier finished run, caches and the bad files themselves), so earlier results
stay byte-identical. Odd-but-valid images (1x1, 16-bit, CMYK, ...) must be *accepted*.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_caches

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("DALAB_DEBUG", None)
ENV.pop("DALAB_DATA", None)


def run(ws: Path, *args, extra_env=None):
    return subprocess.run([sys.executable, "-m", "dalab", *args], cwd=ws, capture_output=True, text=True,
                          timeout=120, env={**ENV, **(extra_env or {})})


def snapshot(ws: Path) -> dict[str, str]:
    """Every file (and folder) under ws -> hash of its bytes. Lock files are not results."""
    out = {}
    for p in sorted(ws.rglob("*")):
        rel = str(p.relative_to(ws))
        if p.name.endswith(".lock"):
            continue
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from PIL import Image

    from dalab.training import TrainConfig, Trainer
    from dalab.training.checkpoint import MODEL_FORMAT, save_model

    ws = tmp_path_factory.mktemp("battery")
    data = write_tiny_caches(ws / "data", n_train=128, n_val=32, n_test=32)
    Trainer(TrainConfig(method="source-only", epochs=1, batch_size=32, data_dir=str(data), precision="fp32",
                        limit_train=64, device="cpu"), ws / "prev", progress=False).fit()
    model_bytes = (ws / "prev" / "model.pt").read_bytes()
    (ws / "trunc.pt").write_bytes(model_bytes[: len(model_bytes) // 2])
    (ws / "resume_bad").mkdir()
    ck = (ws / "prev" / "ckpt.pt").read_bytes()
    (ws / "resume_bad" / "ckpt.pt").write_bytes(ck[: len(ck) // 3])
    torch.save({"weight": torch.zeros(3)}, ws / "foreign.pt")
    save_model(ws / "other_arch.pt", torch.nn.Linear(5, 2), {"arch": "ganin-mnist", "num_classes": 10})
    torch.save({"format": MODEL_FORMAT, "config": {"input_norm": "sideways"}, "state_dict": {}}, ws / "badcfg.pt")
    (ws / "text.pt").write_text("this is not a checkpoint\n")
    (ws / "corrupt_data").mkdir()
    (ws / "corrupt_data" / "mnist.npz").write_bytes(b"PK\x03\x04 definitely not a zip" * 10)
    shutil.copy(data / "mnistm.npz", ws / "corrupt_data" / "mnistm.npz")
    (ws / "empty_data").mkdir()
    (ws / "tampered.pkl.gz").write_bytes(gzip.compress(pickle.dumps(([np.zeros(3)], [np.zeros(3)]))))
    (ws / "notimg.png").write_text("hello, I am text with a .png name\n")
    (ws / "empty.png").write_bytes(b"")
    (ws / "trunc.png").write_bytes(_png_bytes(Image.new("RGB", (40, 40), (200, 10, 10)))[:60])
    (ws / "emptydir").mkdir()
    (ws / "emptydir" / "README.txt").write_text("no images here\n")
    for c in ("0", "1"):
        (ws / "folder_empty" / "train" / c).mkdir(parents=True)
    Image.new("L", (1, 1), 255).save(ws / "one.png")
    yield ws


def _png_bytes(im) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


TRAIN = ["train", "--data-dir", "data", "--epochs", "1", "--batch-size", "32", "--limit-train", "64",
         "--precision", "fp32", "--quiet"]
NEW = ["--out", "new_run"]
EVAL = ["evaluate", "--data-dir", "data", "--domain", "mnistm"]
PREDICT = ["predict", "--checkpoint", "prev/model.pt"]

# (id, argv, expected exit code, text the single stderr line must contain)
CASES = [
    ("unknown-method", TRAIN + NEW + ["--method", "magic"], 2, "'magic'"),
    ("unknown-source", TRAIN + NEW + ["--source", "svhnn"], 2, "'svhnn'"),
    ("unknown-device", TRAIN + NEW + ["--device", "tpu"], 2, "tpu"),
    ("epochs-zero", TRAIN + NEW + ["--epochs", "0"], 2, "--epochs"),
    ("batch-size-zero", TRAIN + NEW + ["--batch-size", "0"], 2, "--batch-size"),
    ("batch-size-too-large-on-overwrite", TRAIN + ["--out", "prev", "--overwrite", "--batch-size", "100000"],
     2, "--batch-size 100000"),
    ("lambda-negative", TRAIN + NEW + ["--lambda-max", "-0.5"], 2, "--lambda-max"),
    ("lambda-nan", TRAIN + NEW + ["--lambda-max", "nan"], 2, "--lambda-max"),
    ("lr-not-numeric", TRAIN + NEW + ["--lr", "fast"], 2, "--lr"),
    ("out-missing", TRAIN, 2, "--out"),
    ("out-is-a-file", TRAIN + ["--out", "prev/summary.json"], 2, "prev/summary.json"),
    ("out-cannot-be-created", TRAIN + ["--out", "/proc/dalab-no/run"], 2, "/proc/dalab-no/run"),
    ("out-inside-a-file", TRAIN + ["--out", "prev/summary.json/run"], 2, "prev/summary.json/run"),
    ("existing-run-without-overwrite", TRAIN + ["--out", "prev"], 2, "--overwrite"),
    ("resume-truncated-checkpoint", TRAIN + ["--out", "resume_bad", "--resume"], 2, "resume_bad/ckpt.pt"),
    ("resume-with-other-settings", TRAIN + ["--out", "prev", "--resume", "--lr", "0.5"], 2, "other settings"),
    ("init-from-missing", TRAIN + NEW + ["--init-from", "no_such/model.pt"], 2, "no_such/model.pt"),
    ("init-from-truncated", TRAIN + NEW + ["--init-from", "trunc.pt"], 2, "trunc.pt"),
    ("corrupt-cache", TRAIN + NEW + ["--data-dir", "corrupt_data"], 2, "corrupt_data/mnist.npz"),
    ("cache-not-prepared", TRAIN + NEW + ["--data-dir", "empty_data"], 2, "dalab data prepare"),
    ("folder-domain-without-images", TRAIN + NEW + ["--target", "folder:folder_empty"], 2, "folder_empty"),
    ("tampered-mnist-pickle", ["data", "prepare", "--data-dir", "data", "--force", "--mnist-pickle",
                               "tampered.pkl.gz"], 2, "sha256 mismatch"),
    ("mnist-pickle-missing", ["data", "prepare", "--data-dir", "data", "--mnist-pickle", "nope.pkl.gz"],
     2, "nope.pkl.gz"),
    ("backgrounds-folder-without-images", ["data", "prepare", "--data-dir", "data", "--backgrounds",
                                           "emptydir"], 2, "emptydir"),
    ("evaluate-truncated-checkpoint", EVAL + ["--checkpoint", "trunc.pt"], 2, "trunc.pt"),
    ("evaluate-foreign-checkpoint", EVAL + ["--checkpoint", "foreign.pt"], 2, "foreign.pt"),
    ("evaluate-other-architecture", EVAL + ["--checkpoint", "other_arch.pt"], 2, "other_arch.pt"),
    ("evaluate-bad-config-in-checkpoint", EVAL + ["--checkpoint", "badcfg.pt"], 2, "badcfg.pt"),
    ("evaluate-resume-file-as-model", EVAL + ["--checkpoint", "prev/ckpt.pt"], 2, "dalab-model-v1"),
    ("predict-non-image", PREDICT + ["notimg.png"], 2, "notimg.png"),
    ("predict-zero-byte-file", PREDICT + ["empty.png"], 2, "empty.png"),
    ("predict-truncated-image", PREDICT + ["trunc.png"], 2, "trunc.png"),
    ("predict-missing-path", PREDICT + ["ghost.png"], 2, "ghost.png"),
    ("predict-folder-without-images", PREDICT + ["emptydir"], 2, "emptydir"),
]


def test_the_battery_is_big_enough():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id,argv,code,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input(ws, case_id, argv, code, needle):
    before = snapshot(ws)
    r = run(ws, *argv)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert len(lines) == 1, f"expected one stderr line, got: {r.stderr!r}"
    assert lines[0].startswith("dalab") and "error" in lines[0], lines[0]
    assert "internal error" not in lines[0], lines[0]
    assert needle in lines[0], lines[0]
    assert snapshot(ws) == before, "a bad input created or changed files"


# ------------------------------------------------------------------ odd but valid images

def _odd_images(d: Path) -> list[Path]:
    from PIL import Image

    d.mkdir(exist_ok=True)
    made = {
        "one_by_one.png": Image.new("L", (1, 1), 200),
        "sixteen_bit.png": Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)),
        "cmyk.jpg": Image.new("CMYK", (50, 60), (10, 200, 30, 0)),
        "cmyk.tif": Image.new("CMYK", (33, 17), (0, 0, 0, 255)),
        "palette.gif": Image.new("P", (28, 28), 3),
        "rgba.png": Image.new("RGBA", (100, 7), (1, 2, 3, 0)),
        "bilevel.bmp": Image.new("1", (28, 28), 1),
        "float32.tif": Image.fromarray(np.linspace(-1, 3, 64 * 64, dtype=np.float32).reshape(64, 64)),
        "huge_ish.png": Image.new("RGB", (1200, 900), (9, 99, 199)),
    }
    for name, im in made.items():
        im.save(d / name)
    return sorted(d / n for n in made)


def test_odd_but_valid_images_are_converted_and_predicted(ws, tmp_path):
    paths = _odd_images(tmp_path / "odd")
    before = snapshot(ws)
    r = run(ws, *PREDICT, "--json", str(tmp_path / "odd"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""
    res = json.loads(r.stdout)
    assert [p["path"] for p in res["predictions"]] == [str(p) for p in paths] and res["errors"] == []
    for p in res["predictions"]:
        assert 0 <= p["label"] < 10 and 0.0 < p["confidence"] <= 1.0
    assert snapshot(ws) == before


def test_predict_reports_a_bad_file_by_name_and_predicts_the_others(ws):
    r = run(ws, *PREDICT, "one.png", "notimg.png", "empty.png", "one.png")
    assert r.returncode == 2
    out = r.stdout.splitlines()
    assert len(out) == 2 and all(line.startswith("one.png\t") for line in out)
    label, conf = out[0].split("\t")[1:]
    assert 0 <= int(label) < 10 and 0 < float(conf) <= 1
    err = r.stderr.splitlines()
    assert len(err) == 2 and "notimg.png" in err[0] and "empty.png" in err[1]
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------ runtime failure: exit 1

@pytest.mark.parametrize("flags", [["--lr", "1e6", "--lr-schedule", "constant", "--limit-train", "128"],
                                   ["--lambda-max", "1e30", "--lambda-schedule", "constant"]],
                         ids=["lr-too-large", "lambda-too-large"])
def test_divergence_through_the_cli_is_exit_1_with_one_line(ws, tmp_path, flags):
    out = tmp_path / "div"
    r = run(ws, *TRAIN, "--out", str(out), "--method", "dann", *flags)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "diverged" in lines[0] and "lambda or learning rate is likely too large" in lines[0]
    assert "no checkpoint" in lines[0] and not (out / "ckpt.pt").exists()
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged" and s["target_test_acc"] is None and "failure" in s
    assert not (out / "model.pt").exists()


# A run whose loss becomes NaN in epoch 2 (as with a lambda far too large late in the ramp):
# it must stop, keep epoch 1's checkpoint, and record the failure.
NAN_IN_EPOCH_2 = r"""
import sys
import torch
from dalab.methods.dann import DANN
calls = {"n": 0}
orig = DANN.loss
def loss(self, model, batch):
    calls["n"] += 1
    l, logs = orig(self, model, batch)
    return (l * float("nan"), logs) if calls["n"] > 2 else (l, logs)
DANN.loss = loss
from dalab.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_divergence_keeps_the_last_good_checkpoint(ws, tmp_path):
    from dalab.training.checkpoint import CKPT_FORMAT, load_checked

    out = tmp_path / "div2"
    r = subprocess.run([sys.executable, "-c", NAN_IN_EPOCH_2, *TRAIN, "--epochs", "3", "--out", str(out)],
                       cwd=ws, capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "epoch 2" in r.stderr and "last good checkpoint (epoch 1) kept" in r.stderr
    ck = load_checked(out / "ckpt.pt", CKPT_FORMAT)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged" and s["epochs_done"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
