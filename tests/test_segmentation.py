"""Segmentation as a second task: label table, losses and scores, the street scenes, the network,
and the one trainer / CLI end to end on tiny scene caches."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dalab.data import load_domain, scenes
from dalab.data.cityscapes_labels import ID_TO_TRAIN_ID, IGNORE, NUM_CLASSES, TRAIN_NAMES, colorize
from dalab.models.segnet import SegNet
from dalab.tasks import accuracy, confusion_matrix, evaluate_model, scores_from_confusion, task_loss
from dalab.training import TrainConfig, Trainer, load_model


def dalab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dalab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


# ------------------------------------------------------------------ label table

def test_cityscapes_table():
    assert len(TRAIN_NAMES) == NUM_CLASSES == 19
    assert TRAIN_NAMES[0] == "road" and TRAIN_NAMES[13] == "car" and TRAIN_NAMES[18] == "bicycle"
    assert ID_TO_TRAIN_ID[7] == 0 and ID_TO_TRAIN_ID[26] == 13 and ID_TO_TRAIN_ID[33] == 18
    assert ID_TO_TRAIN_ID[9] == IGNORE and ID_TO_TRAIN_ID[0] == IGNORE and ID_TO_TRAIN_ID[200] == IGNORE
    c = colorize(np.array([[0, 13, 255]], np.uint8))
    assert c.shape == (1, 3, 3) and tuple(c[0, 0]) == (128, 64, 128) and tuple(c[0, 1]) == (0, 0, 142)
    assert tuple(c[0, 2]) == (0, 0, 0)


# ------------------------------------------------------------------ losses and scores

def test_task_loss_ignores_255_and_upsamples():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 2, 3)            # feature resolution
    y = torch.randint(0, 4, (2, 4, 6), dtype=torch.uint8)   # label resolution (2x)
    y[0, :2] = IGNORE
    up = torch.nn.functional.interpolate(logits, size=(4, 6), mode="bilinear", align_corners=False)
    keep = y != IGNORE
    manual = torch.nn.functional.cross_entropy(up.permute(0, 2, 3, 1)[keep], y[keep].long())
    assert torch.allclose(task_loss(logits, y), manual, atol=1e-6)
    # the logits at ignored pixels do not matter: a change there leaves the loss as it was
    y2 = y.clone()
    y2[:, :, :] = IGNORE
    y2[1] = y[1]
    assert torch.allclose(task_loss(logits, y2), torch.nn.functional.cross_entropy(
        up[1:].permute(0, 2, 3, 1).reshape(-1, 4), y[1].reshape(-1).long()), atol=1e-6)


def test_task_loss_classification_unchanged():
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    assert torch.allclose(task_loss(logits, y), torch.nn.functional.cross_entropy(logits, y))
    assert accuracy(torch.eye(3)[[0, 1, 2, 0, 0]], y).item() == pytest.approx(4 / 5)


def test_pixel_accuracy_skips_ignored():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = 1.0                            # predicts class 1 everywhere
    y = torch.tensor([[[1, 0, IGNORE, 1]]], dtype=torch.uint8)
    assert accuracy(logits, y).item() == pytest.approx(2 / 3)


def test_confusion_and_miou_by_hand():
    y = torch.tensor([0, 0, 0, 1, 1, 2, IGNORE], dtype=torch.uint8)
    p = torch.tensor([0, 0, 1, 1, 3, 2, 0])
    cm = confusion_matrix(p, y, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]
    s = scores_from_confusion(cm, ["a", "b", "c", "d"])
    iou = s["per_class_iou"]
    assert iou["a"] == pytest.approx(2 / 3) and iou["b"] == pytest.approx(1 / 3) and iou["c"] == 1.0
    assert iou["d"] is None                     # predicted, but not in the labels: not in the mean
    assert s["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3) and s["classes_scored"] == 3
    assert s["pixel_acc"] == pytest.approx(4 / 6)


def test_scores_accumulate_over_all_pixels_not_per_image():
    # image 1: class 0 everywhere, right; image 2: one pixel of class 1, wrong -> one matrix over both
    y = torch.tensor([[[0, 0, 0, 0]], [[0, 0, 0, 1]]], dtype=torch.uint8)
    p = torch.tensor([[[0, 0, 0, 0]], [[0, 0, 0, 0]]])
    s = scores_from_confusion(confusion_matrix(p, y, 2))
    assert s["per_class_iou"]["0"] == pytest.approx(7 / 8) and s["per_class_iou"]["1"] == 0.0
    assert s["miou"] == pytest.approx(7 / 16)


# ------------------------------------------------------------------ street scenes

def test_scenes_deterministic_and_shaped():
    rng_photos = [np.random.default_rng(1).integers(0, 256, (110, 140, 3), dtype=np.uint8)]
    a = scenes.build_scenes(scenes.PHOTO, 3, {"train": 12, "val": 4}, photos=rng_photos)
    b = scenes.build_scenes(scenes.PHOTO, 3, {"train": 12, "val": 4}, photos=rng_photos)
    c = scenes.build_scenes(scenes.PHOTO, 4, {"train": 12, "val": 4}, photos=rng_photos)
    assert a["train_x"].shape == (12, scenes.H, scenes.W, 3) and a["train_x"].dtype == np.uint8
    assert a["train_y"].shape == (12, scenes.H, scenes.W) and a["train_y"].dtype == np.uint8
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train_y"], c["train_y"])
    assert set(np.unique(a["train_y"])) <= set(scenes.CLASSES_USED)


def test_scene_domains_shift_in_layout_statistics_and_appearance():
    rng = np.random.default_rng(0)
    g = scenes.draw_layouts(400, scenes.GAME, rng)
    p = scenes.draw_layouts(400, scenes.PHOTO, rng)
    # the photo camera sits lower (horizon higher: more sky-free rows), with more cars and fewer trees
    assert (p == scenes.CAR).mean() > 1.3 * (g == scenes.CAR).mean()
    assert (p == scenes.VEG).mean() < (g == scenes.VEG).mean()
    assert (p == scenes.SKY).mean() < (g == scenes.SKY).mean()
    # the same layout rendered two ways: flat game colours are piecewise constant, photo renders are not
    lab = scenes.draw_layouts(4, scenes.GAME, np.random.default_rng(1))
    photos = [np.random.default_rng(2).integers(0, 256, (110, 140, 3), dtype=np.uint8)]
    game = scenes.render(lab, scenes.GAME, np.random.default_rng(3)).astype(int)
    photo = scenes.render(lab, scenes.PHOTO, np.random.default_rng(3), photos).astype(int)
    road = lab == scenes.ROAD
    row_std_game = np.mean([game[i][road[i]].std(0).mean() for i in range(4)])
    row_std_photo = np.mean([photo[i][road[i]].std(0).mean() for i in range(4)])
    assert row_std_photo > 3 * row_std_game


def test_scene_domain_registry(tiny_scenes):
    d = load_domain("scenes-photo", tiny_scenes)
    assert d.task == "segmentation" and d.num_classes == 19 and d.classes == TRAIN_NAMES
    assert "procedural street scenes" in d.description and "not Cityscapes" in d.description
    x, y = d["train"].tensors()
    assert x.shape == (48, 3, scenes.H, scenes.W) and y.dtype == torch.uint8 and y.shape == (48, scenes.H, scenes.W)


# ------------------------------------------------------------------ network

def test_segnet_shapes_and_checkpoint_roundtrip(tmp_path):
    from dalab.training.checkpoint import save_model

    m = SegNet(num_classes=19, width=8)
    x = torch.randint(0, 256, (2, 3, 48, 96), dtype=torch.uint8)
    f = m.features(x)
    assert f.shape == (2, 16, 12, 24)
    assert m.classify(f).shape == (2, 19, 12, 24)
    assert m.domain_logits(f, 0.5).shape == (2, 1, 12, 24)
    assert m(x).shape == (2, 19, 48, 96)
    save_model(tmp_path / "m.pt", m, {"arch": "segnet-dalab", "num_classes": 19, "width": 8, "batch_norm": True,
                                      "domain_bn": True, "input_norm": "instance", "task": "segmentation"})
    m2, cfg = load_model(tmp_path / "m.pt")
    m.eval()
    assert torch.allclose(m2(x), m(x))


def test_grl_on_pixels_reverses_the_domain_gradient():
    m = SegNet(width=4, batch_norm=False)
    f = torch.randn(2, 8, 3, 5, requires_grad=True)
    m.domain_logits(f, 0.7).sum().backward()
    g_rev = f.grad.clone()
    f.grad = None
    m.domain_head(f).sum().backward()
    assert torch.allclose(g_rev, -0.7 * f.grad, atol=1e-6)


# ------------------------------------------------------------------ the one trainer

SEG = dict(source="scenes-game", target="scenes-photo", epochs=1, batch_size=8, precision="fp32",
           device="cpu", bn_calibration=16)


@pytest.mark.parametrize("method", ["source-only", "dann", "target-only"])
def test_trainer_segmentation_end_to_end(tiny_scenes, tmp_path, method):
    s = Trainer(TrainConfig(method=method, data_dir=str(tiny_scenes), **SEG), tmp_path / method,
                progress=False).fit()
    assert s["status"] == "completed" and s["task"] == "segmentation" and s["metric"] == "miou"
    assert 0.0 <= s["target_test_miou"] <= 1.0 and 0.0 <= s["source_test_pixel_acc"] <= 1.0
    assert "target_test_acc" not in s
    assert set(s["target_test_per_class_iou"]) == set(TRAIN_NAMES)
    assert s["config"]["arch"] == "segnet"
    row = json.loads((tmp_path / method / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["target_test_miou"] == s["target_test_miou"]
    model, cfg = load_model(tmp_path / method / "model.pt")
    assert cfg["task"] == "segmentation" and cfg["input"] == [3, scenes.H, scenes.W]
    d = load_domain("scenes-photo", tiny_scenes)
    x, y = d["test"].tensors()
    again = evaluate_model(model, x, y, "segmentation", 19, domain="target")
    assert again["miou"] == pytest.approx(s["target_test_miou"], abs=1e-6)


def test_trainer_segmentation_resume_matches_straight_run(tiny_scenes, tmp_path):
    # constant schedules: a 1-epoch run continued to 2 epochs is then the same run as a straight 2-epoch one
    const = {**SEG, "lr_schedule": "constant", "lambda_schedule": "constant"}
    cfg = TrainConfig(method="dann", data_dir=str(tiny_scenes), **{**const, "epochs": 2})
    straight = Trainer(cfg, tmp_path / "a", progress=False).fit()
    Trainer(TrainConfig(method="dann", data_dir=str(tiny_scenes), **{**const, "epochs": 1}), tmp_path / "b",
            progress=False).fit()
    resumed = Trainer(cfg, tmp_path / "b", progress=False, resume=True).fit()
    assert resumed["target_test_miou"] == straight["target_test_miou"]


def test_cli_segmentation_commands(tiny_scenes, tmp_path):
    run = tmp_path / "run"
    r = dalab("train", "--method", "dann", "--source", "scenes-game", "--target", "scenes-photo", "--epochs", 1,
              "--batch-size", 8, "--precision", "fp32", "--device", "cpu", "--bn-calibration", 16, "--quiet",
              "--out", run, "--data-dir", tiny_scenes)
    assert r.returncode == 0, r.stderr
    assert "target test mIoU" in r.stdout
    r = dalab("evaluate", "--checkpoint", run / "model.pt", "--domain", "scenes-photo", "--split", "test",
              "--data-dir", tiny_scenes, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res["per_class_iou"]) == set(TRAIN_NAMES) and 0 <= res["miou"] <= 1
    assert res["resolution"] == [scenes.H, scenes.W]
    r = dalab("evaluate", "--checkpoint", run / "model.pt", "--domain", "scenes-photo", "--data-dir", tiny_scenes)
    assert r.returncode == 0 and "mIoU" in r.stdout and "| road" in r.stdout
    # predict: a colour-coded mask at the image's own size
    from PIL import Image

    img = tmp_path / "street.png"
    Image.fromarray(load_domain("scenes-photo", tiny_scenes)["test"].x[0]).resize((150, 70)).save(img)
    r = dalab("predict", "--checkpoint", run / "model.pt", img, "--out-dir", tmp_path / "masks")
    assert r.returncode == 0, r.stderr
    mask = Image.open(tmp_path / "masks" / "street_mask.png")
    assert mask.size == (150, 70) and mask.mode == "RGB"
    r = dalab("predict", "--checkpoint", run / "model.pt", img)
    assert r.returncode == 2 and "--out-dir" in r.stderr and "Traceback" not in r.stderr
    # compare figure and data show
    r = dalab("compare", "--model", f"dann={run / 'model.pt'}", "--domain", "scenes-photo", "--n", 2,
              "--out", tmp_path / "cmp.png", "--data-dir", tiny_scenes)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    r = dalab("data", "show", "scenes-game", "--out", tmp_path / "show.png", "--data-dir", tiny_scenes)
    assert r.returncode == 0 and (tmp_path / "show.png").stat().st_size > 1000
    # label-free selection on segmentation runs: pixel entropy, info-max, BNM, SND, source mIoU
    r = dalab("select", run, "--validator", "entropy,bnm,info-max,source-acc", "--data-dir", tiny_scenes, "--json")
    assert r.returncode == 0, r.stderr
    r = dalab("select", run, "--validator", "dev", "--data-dir", tiny_scenes)
    assert r.returncode == 2 and "segmentation" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, words", [
    (["--source", "mnist", "--target", "scenes-photo"], "same task"),
    (["--source", "scenes-game", "--target", "mnistm"], "same task"),
    (["--method", "cdan"], "does not handle segmentation"),
    (["--arch", "conv9"], "classification network"),
])
def test_segmentation_bad_input_one_line_exit_2(tiny_scenes, tmp_path, args, words):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"keep": 1}')
    base = {"--method": "dann", "--source": "scenes-game", "--target": "scenes-photo"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    flat = [a for kv in base.items() for a in kv]
    r = dalab("train", *flat, "--epochs", 1, "--out", out, "--overwrite", "--data-dir", tiny_scenes, "--quiet")
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert (out / "summary.json").read_text() == '{"keep": 1}'   # nothing on disk touched


def test_cli_takes_the_segmentation_recipe_unless_told(tiny_scenes, tmp_path):
    from dalab.training.config import TASK_RECIPES

    r = dalab("train", "--method", "source-only", "--source", "scenes-game", "--target", "scenes-photo",
              "--precision", "fp32", "--device", "cpu", "--quiet", "--json", "--out", tmp_path / "a",
              "--data-dir", tiny_scenes)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)["config"]
    rec = TASK_RECIPES["segmentation"]
    assert (cfg["epochs"], cfg["batch_size"], cfg["optimizer"]) == (rec["epochs"], rec["batch_size"], rec["optimizer"])
    r = dalab("train", "--method", "source-only", "--source", "scenes-game", "--target", "scenes-photo",
              "--epochs", 1, "--batch-size", 8, "--optimizer", "sgd", "--precision", "fp32", "--device", "cpu",
              "--quiet", "--json", "--out", tmp_path / "b", "--data-dir", tiny_scenes)
    cfg = json.loads(r.stdout)["config"]
    assert (cfg["epochs"], cfg["batch_size"], cfg["optimizer"]) == (1, 8, "sgd")


def test_unlabelled_source_for_segmentation_is_one_line_exit_2(tiny_scenes, tmp_path):
    from PIL import Image

    flat = tmp_path / "photos"
    flat.mkdir()
    for k in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * k, np.uint8)).save(flat / f"p{k}.png")
    r = dalab("train", "--method", "dann", "--source", f"folder:{flat}", "--target", "scenes-photo", "--out",
              tmp_path / "run", "--quiet", "--data-dir", tiny_scenes)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "same task" in r.stderr and not (tmp_path / "run").exists()


def test_select_all_validators_on_segmentation_runs_uses_the_pixel_ones(tiny_scenes, tmp_path):
    from dalab.tasks import get_task

    Trainer(TrainConfig(method="dann", data_dir=str(tiny_scenes), **SEG), tmp_path / "runs" / "dann",
            progress=False).fit()
    r = dalab("select", tmp_path / "runs", "--data-dir", tiny_scenes, "--json")   # --validator all
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["validators"] == list(get_task("segmentation").validators)
    assert "dev" not in get_task("segmentation").validators  # a per-image validator: not defined for pixels


def test_mask_names_never_collide(tiny_scenes, tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    Trainer(TrainConfig(method="source-only", data_dir=str(tiny_scenes), **SEG), run, progress=False).fit()
    img = load_domain("scenes-photo", tiny_scenes)["test"].x[0]
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(img).save(tmp_path / sub / "1.png")
    r = dalab("predict", "--checkpoint", run / "model.pt", tmp_path / "a" / "1.png", tmp_path / "b" / "1.png",
              "--out-dir", tmp_path / "masks")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["1_2_mask.png", "1_mask.png"]


def test_miou_over_a_named_subset_of_classes():
    from dalab.tasks import miou_over

    table = {"road": 0.9, "sky": 0.5, "train": None, "pole": 0.1}
    assert miou_over(table, ["road", "sky"]) == (pytest.approx(0.7), 2)
    assert miou_over(table, ["road", "train"]) == (pytest.approx(0.9), 1)  # absent from the labels: left out
    with pytest.raises(ValueError, match="no class 'bus'"):
        miou_over(table, ["road", "bus"])


def test_a_batch_whose_pixels_are_all_ignored_has_zero_loss_and_no_gradient():
    from dalab.tasks import IGNORE, task_loss

    logits = torch.randn(2, 5, 6, 8, requires_grad=True)
    y = torch.full((2, 12, 16), IGNORE, dtype=torch.uint8)
    loss = task_loss(logits, y)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    # otherwise the mean over the scored pixels, as reduction="mean" computes it
    y[0, :3, :4] = 1
    logits.grad = None
    full = torch.nn.functional.interpolate(logits, size=(12, 16), mode="bilinear", align_corners=False)
    expected = torch.nn.functional.cross_entropy(full, y.long(), ignore_index=IGNORE)
    assert torch.equal(task_loss(logits, y), expected) and torch.isfinite(expected)
