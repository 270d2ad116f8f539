"""Resume is bit-exact for every registered method, on resident and on streamed data.

For each method of the registry (a new method is covered without editing this test): an uninterrupted
run of 2 epochs, and the same run stopped by a crash right after its first checkpoint, then resumed with
``resume=True``. Every tensor of the final model, its weight average and the method's state must be equal,
and so must the metrics rows. The crash is an exception raised in-process after ``ckpt.pt`` is written
(tests/test_resume.py kills real processes with SIGKILL for the default method).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dalab.methods import METHODS
from dalab.training import TrainConfig, Trainer

CLASSIFICATION = sorted(n for n, m in METHODS.items() if "classification" in m.tasks)
SEGMENTATION = sorted(n for n, m in METHODS.items() if "segmentation" in m.tasks)


class Crash(Exception):
    pass


class CrashAfterFirstCheckpoint(Trainer):
    def after_epoch(self, epoch, train_logs):
        super().after_epoch(epoch, train_logs)
        raise Crash


def _tensors(run):
    ck = torch.load(run / "ckpt.pt", weights_only=True)
    out = {f"model.{k}": v for k, v in ck["model"].items()}
    out.update({f"ema.{k}": v for k, v in (ck.get("ema") or {}).items()})
    out.update({f"method.{k}": v for k, v in ck["method"].items()})
    return out


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


def _check_resume_is_exact(cfg: TrainConfig, tmp_path):
    Trainer(cfg, tmp_path / "whole", progress=False).fit()
    with pytest.raises(Crash):
        CrashAfterFirstCheckpoint(cfg, tmp_path / "cut", progress=False).fit()
    assert torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["epoch"] == 1
    s = Trainer(cfg, tmp_path / "cut", progress=False, resume=True).fit()
    assert s["status"] == "completed" and s["epochs_done"] == cfg.epochs
    a, b = _tensors(tmp_path / "whole"), _tensors(tmp_path / "cut")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after resuming, e.g. {differ[:3]}"
    assert _rows(tmp_path / "whole") == _rows(tmp_path / "cut")


@pytest.mark.slow
@pytest.mark.parametrize("method", CLASSIFICATION)
def test_resume_is_exact_resident_classification(method, tiny_data, tmp_path):
    cfg = TrainConfig(method=method, epochs=2, batch_size=32, limit_train=96, limit_eval=64, bn_calibration=64,
                      data_dir=str(tiny_data), precision="fp32", device="cpu",
                      optimizer="adam" if method not in ("dann", "source-only", "target-only") else "sgd")
    _check_resume_is_exact(cfg, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("method", SEGMENTATION)
def test_resume_is_exact_resident_segmentation(method, tiny_scenes, tmp_path):
    cfg = TrainConfig(method=method, epochs=2, batch_size=8, limit_train=24, limit_eval=8, bn_calibration=16,
                      data_dir=str(tiny_scenes), source="scenes-game", target="scenes-photo", arch="segnet",
                      optimizer="adam", precision="fp32", device="cpu")
    _check_resume_is_exact(cfg, tmp_path)


@pytest.fixture(scope="module")
def small_trees(tmp_path_factory):
    """GTA5 and Cityscapes trees in their layouts with small images (the real sizes are tested in
    test_real_segmentation.py): 12 GTA5 pairs at 64x128, 8 Cityscapes train images and 2 val, labelled (the
    oracle trains on them)."""
    from PIL import Image

    from realdata import PALETTE

    root = tmp_path_factory.mktemp("smalltrees")
    rng = np.random.default_rng(0)
    ids = np.array([7, 8, 11, 21, 23, 26], np.uint8)  # road, sidewalk, building, vegetation, sky, car

    def pair(h, w):
        lab = ids[rng.integers(0, len(ids), size=(h // 16, w // 16))].repeat(16, 0).repeat(16, 1)
        img = (rng.integers(0, 256, size=(len(ids), 3))[np.searchsorted(ids, lab)]
               + rng.integers(0, 30, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
        return img, lab

    gta = root / "GTA5"
    for d in ("images", "labels"):
        (gta / d).mkdir(parents=True)
    for k in range(1, 13):
        img, lab = pair(64, 128)
        Image.fromarray(img).save(gta / "images" / f"{k:05d}.png")
        p = Image.fromarray(lab, mode="P")
        p.putpalette(PALETTE)
        p.save(gta / "labels" / f"{k:05d}.png")
    city = root / "cityscapes"
    for split, n in (("train", 8), ("val", 2)):
        (city / "leftImg8bit" / split / "x").mkdir(parents=True)
        (city / "gtFine" / split / "x").mkdir(parents=True)
        for k in range(n):
            img, lab = pair(64, 128)
            stem = f"x_000000_{k:06d}"
            Image.fromarray(img).save(city / "leftImg8bit" / split / "x" / f"{stem}_leftImg8bit.png")
            Image.fromarray(lab).save(city / "gtFine" / split / "x" / f"{stem}_gtFine_labelIds.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in SEGMENTATION if not getattr(METHODS[m], "needs_target_set", False)])
def test_resume_is_exact_streamed_segmentation(method, small_trees, tmp_path):
    cfg = TrainConfig(method=method, epochs=2, batch_size=4, bn_calibration=8, workers=0, resize="native",
                      crop_size=[32, 64], source=f"gta5:{small_trees / 'GTA5'}",
                      target=f"cityscapes:{small_trees / 'cityscapes'}", arch="segnet", optimizer="adam",
                      data_dir=str(tmp_path / "cache"), precision="fp32", device="cpu")
    _check_resume_is_exact(cfg, tmp_path)
