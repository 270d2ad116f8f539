"""GTA5 -> Cityscapes (and SYNTHIA) end to end on trees in the real layouts at the real sizes, with the
real copies' flaws (tests/realdata.py): mixed GTA5 resolutions, a label 2 rows short, an image without
its label, a Cityscapes training split without labels. Each command runs as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from realdata import CITYSCAPES_VAL, GTA5_N

pytestmark = pytest.mark.slow


def dalab(*args, env_data):
    return subprocess.run([sys.executable, "-m", "dalab", *map(str, args)], capture_output=True, text=True,
                          env=env_data)


@pytest.fixture(scope="module")
def env_data(tmp_path_factory):
    import os

    return {**os.environ, "DALAB_DATA": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def runs(real_trees, tmp_path_factory, env_data):
    """DACS and AdvEnt, a few steps each, GTA5 -> Cityscapes, 128x128 crops of the base-size images."""
    out = tmp_path_factory.mktemp("runs")
    done = {}
    for method in ("dacs", "advent"):
        r = dalab("train", "--method", method, "--source", f"gta5:{real_trees.gta5}",
                  "--target", f"cityscapes:{real_trees.cityscapes}", "--crop", "128x128", "--batch-size", 2,
                  "--epochs", 1, "--workers", 1, "--precision", "fp32", "--device", "cpu", "--quiet",
                  "--bn-calibration", 4, "--out", out / method, "--json", env_data=env_data)
        assert r.returncode == 0, r.stderr
        done[method] = (out / method, json.loads(r.stdout))
    return done


def test_train_reads_the_real_trees_skips_and_repairs(runs):
    run, s = runs["dacs"]
    assert s["status"] == "completed" and s["task"] == "segmentation"
    # one GTA5 image has no label (skipped), one label is 2 rows short (resized to its image): counted and named
    check = s["data_check"]["source"]
    assert check["unpaired_skipped"] == 1 and check["labels_resized"] == 1
    assert check["pairs"] == GTA5_N - 1
    log = (run / "data_check.log").read_text()
    assert "00008" in log and "00003" in log
    # the target trained without labels (Cityscapes has no gtFine/train here) and was scored on val
    assert s["target_scored_split"] == "val" and s["n_target_train"] == 4
    assert s["resize"] == "base" and s["eval_size"] == "base"
    for k in ("source_val_miou", "target_test_miou"):
        assert s[k] is None or 0.0 <= s[k] <= 1.0
    assert s["target_test_miou"] is not None  # Cityscapes val is labelled: it is scored
    text = (run / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    assert runs["advent"][1]["status"] == "completed"


def test_evaluate_at_full_resolution(runs, real_trees, env_data):
    run, _ = runs["advent"]
    r = dalab("evaluate", "--checkpoint", run / "model.pt", "--domain", f"cityscapes:{real_trees.cityscapes}",
              "--split", "val", "--workers", 0, "--json", env_data=env_data)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n"] == sum(CITYSCAPES_VAL.values()) and "labels at full size" in res["resolution"]
    assert 0.0 <= res["miou"] <= 1.0
    # GTA5's held-out pairs mix 1052x1914 and 720x1280 images: scored at each label's size
    r = dalab("evaluate", "--checkpoint", run / "model.pt", "--domain", f"gta5:{real_trees.gta5}", "--split", "val",
              "--workers", 0, env_data=env_data)
    assert r.returncode == 0, r.stderr
    assert "mIoU" in r.stdout


def test_unlabelled_split_cannot_be_scored(runs, real_trees, env_data):
    run, _ = runs["advent"]
    r = dalab("evaluate", "--checkpoint", run / "model.pt", "--domain", f"cityscapes:{real_trees.cityscapes}",
              "--split", "train", env_data=env_data)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_predict_writes_masks_at_the_image_size(runs, real_trees, tmp_path, env_data):
    from PIL import Image

    run, _ = runs["dacs"]
    img = next((real_trees.cityscapes / "leftImg8bit" / "val").rglob("*.png"))
    r = dalab("predict", "--checkpoint", run / "model.pt", img, "--out-dir", tmp_path / "masks", env_data=env_data)
    assert r.returncode == 0, r.stderr
    mask = tmp_path / "masks" / f"{img.stem}_mask.png"
    with Image.open(mask) as m, Image.open(img) as i:
        assert m.size == i.size == (2048, 1024)


def test_select_scores_streamed_runs(runs, env_data):
    root = runs["dacs"][0].parent
    r = dalab("select", root, "--json", "--validator", "entropy,source-acc", env_data=env_data)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {row["method"] for row in res["rows"]} == {"dacs", "advent"}
    for row in res["rows"]:
        assert isinstance(row["scores"]["entropy"], float) and row["scores"]["entropy"] <= 0.0


def test_a_crop_larger_than_the_images_is_one_line(real_trees, tmp_path, env_data):
    r = dalab("train", "--method", "source-only", "--source", f"gta5:{real_trees.gta5}",
              "--target", f"cityscapes:{real_trees.cityscapes}", "--crop", "4000x9000", "--batch-size", 2,
              "--out", tmp_path / "run", "--quiet", env_data=env_data)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "crop" in r.stderr and not (tmp_path / "run").exists()


def test_a_first_step_too_large_for_the_memory_stops_with_one_line(real_trees, tmp_path, monkeypatch):
    """The estimate of the first step (activations counted on a small probe, scaled to the crops) against the
    memory available; here the machine is made to look small instead of training a huge crop."""
    from dalab.errors import DalabError
    from dalab.training import TrainConfig, Trainer
    from dalab.training import memory

    cfg = TrainConfig(method="dacs", source=f"gta5:{real_trees.gta5}", target=f"cityscapes:{real_trees.cityscapes}",
                      crop_size=[256, 512], batch_size=2, epochs=1, workers=0, precision="fp32", device="cpu",
                      data_dir=str(tmp_path / "cache"))
    saved, pixels = memory.probe_bytes(*_probe_parts(cfg))
    assert saved > 0 and pixels == memory.PROBE_BATCH * 64 * 64
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10 * 2**20)  # 10 MiB free
    with pytest.raises(DalabError, match="would not fit in memory: about .* GiB for the first step"):
        Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert not (tmp_path / "run").exists()  # stopped before --out was touched


def test_the_probe_counts_activations_once_and_not_the_weights():
    """A layer saves its weight beside its input, and several ops may save views of one tensor: the probe
    counts the memory blocks of the activations, each once, so that scaling it to the crops does not
    multiply the weights by the pixel ratio."""
    import torch
    from torch import nn

    from dalab.training import memory

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 4 * 4, 1000)  # 192 kB of weights, far more than the probe's activations

        def forward(self, x):
            flat = x.flatten(1)
            return self.fc(flat) * flat.sum(1, keepdim=True)  # `flat` is saved twice (linear, mul), a view of x

    class Method(nn.Module):
        def loss(self, model, batch):
            return model(batch).sum()

    x_bytes = memory.PROBE_BATCH * 3 * 4 * 4 * 4
    out_bytes = memory.PROBE_BATCH * 1000 * 4
    saved, pixels = memory.probe_bytes(Net(), Method(), lambda n, hw: torch.rand(n, 3, *hw), (3, 4, 4))
    assert pixels == memory.PROBE_BATCH * 16
    # x (through its views, once), the linear's output and the sum: never the 192 kB weight
    assert x_bytes <= saved <= x_bytes + out_bytes + 64, saved


def _probe_parts(cfg):
    """(model, method, batch builder, input shape) as the trainer sets them up."""
    from dalab.training import Trainer

    t = Trainer(cfg, None, progress=False)
    from dalab.tasks import get_task
    from dalab.training.data import open_data
    from dalab.training.distributed import env_dist_info

    t.data = open_data(cfg, t.method, t.device, env_dist_info())
    t.task = get_task(t.data.source.task)
    t._check_network()
    t.model = t._build_model()
    t.method.setup(t.model, t.device)
    return t.model, t.method, t._probe_batch, t.data.input_shape()
