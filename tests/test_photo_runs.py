"""Photos end to end, as a user runs them: an Office-31 tree of photos of many sizes and modes, a torchvision
ResNet-18 and a timm model as backbones (no weights downloaded: random ones, or a state dict the test
writes), a few DANN steps, then ``evaluate``, ``predict`` (class names shown) and ``select`` on the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from test_photos import CLASSES, fill_classes

pytestmark = pytest.mark.slow



def dalab(*args, env):
    return subprocess.run([sys.executable, "-m", "dalab", *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "DALAB_DATA": str(tmp_path_factory.mktemp("cache")), "OMP_NUM_THREADS": "2"}


@pytest.fixture(scope="module")
def office(tmp_path_factory):
    """amazon and webcam, 3 classes, 4 photos each (sizes 200x300 to 1200x900; grey, CMYK, EXIF-rotated, palette,
    RGBA and 16-bit files among them), plus one file that is not an image."""
    root = tmp_path_factory.mktemp("office31")
    for n, dom in enumerate(("amazon", "webcam")):
        fill_classes(root / dom / "images", 4, offset=n)
    (root / "webcam" / "images" / CLASSES[0] / "broken.jpg").write_bytes(b"not a jpeg")
    return root


TRAIN = ("--method", "dann", "--image-size", 64, "--epochs", 1, "--steps-per-epoch", 3, "--batch-size", 4, "--workers", 0,
         "--precision", "fp32", "--device", "cpu", "--quiet", "--json")


@pytest.fixture(scope="module")
def resnet_run(office, tmp_path_factory, env):
    pytest.importorskip("torchvision")
    out = tmp_path_factory.mktemp("runs") / "resnet18"
    r = dalab("train", "--source", f"office31:{office / 'amazon'}", "--target", f"office31:{office / 'webcam'}",
              "--backbone", "resnet18", *TRAIN, "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_dann_on_a_torchvision_backbone(resnet_run):
    out, s = resnet_run
    assert s["status"] == "completed" and s["config"]["backbone"] == "resnet18"
    # the photo recipe (TLlib's): SGD, 0.01, weight decay 1e-3, the inverse decay
    cfg = s["config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["lr_schedule"]) == ("sgd", 0.01, 0.001, "inv")
    assert cfg["nesterov"] is True and s["steps_per_epoch"] == 3  # TLlib's 1,000 per epoch, unless asked
    assert "all target images" in s["protocol"]["target"] or s["protocol"]["target"]
    assert s["skipped_files"] == {"target": 1} and "broken.jpg" in (out / "data_check.log").read_text()
    assert 0.0 <= s["target_test_acc"] <= 1.0 and s["n_source_train"] == 12
    assert s["config"]["batch_size"] == 4 and s["config"]["epochs"] == 1  # the flags win over the recipe
    ck = torch.load(out / "model.pt", weights_only=True)
    assert ck["config"]["arch"] == "photonet" and ck["config"]["classes"] == list(CLASSES)


def test_evaluate_predict_and_select_on_the_photo_run(resnet_run, office, env, tmp_path):
    out, s = resnet_run
    r = dalab("evaluate", "--checkpoint", out / "model.pt", "--domain", f"office31:{office / 'webcam'}",
              "--split", "test", "--json", env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n"] == 12 and abs(res["accuracy"] - s["target_test_acc"]) < 0.1
    photo = next((office / "webcam" / "images" / CLASSES[1]).glob("*_0.*"))
    r = dalab("predict", "--checkpoint", out / "model.pt", photo, "--json", env=env)
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout)["predictions"][0]
    assert pred["class_name"] == CLASSES[pred["label"]]
    r = dalab("select", out.parent, "--validator", "entropy,info-max", "--target-split", "train", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"][0]["method"] == "dann"


def test_a_timm_backbone_from_a_state_dict_the_test_writes(office, tmp_path, env):
    timm = pytest.importorskip("timm")
    weights = tmp_path / "resnet10t.pt"
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), weights)
    r = dalab("train", "--source", f"office31:{office / 'amazon'}", "--target", f"office31:{office / 'webcam'}",
              "--backbone", "timm:resnet10t", "--init", weights, *TRAIN, "--out", tmp_path / "run", env=env)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["status"] == "completed" and s["config"]["backbone_init"] == str(weights)


@pytest.mark.parametrize("extra, words", [
    (["--backbone", "no_such_net_xyz"], "no_such_net_xyz"),
    (["--backbone", "resnet18", "--init", "MISSING"], "MISSING"),
    (["--pretrained"], "--backbone"),
])
def test_photo_bad_input_is_one_line_exit_2(office, tmp_path, env, extra, words):
    if "resnet18" in extra:
        pytest.importorskip("torchvision")
    out = tmp_path / "run"
    r = dalab("train", "--source", f"office31:{office / 'amazon'}", "--target", f"office31:{office / 'webcam'}",
              *extra, *TRAIN, "--out", out, env=env)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists()


def test_export_then_train_back_through_folder_streamed(tiny_data, tmp_path, env):
    """A built-in pair written as PNG folders trains back through folder: streamed from the files, on the same
    view of the digits as in memory (28x28, no augmentation)."""
    for dom in ("mnist", "mnistm"):
        r = dalab("data", "export", dom, "--out", tmp_path / dom, "--limit", 96, "--data-dir", tiny_data, env=env)
        assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "mnist" / "train").rglob("*.png"))) == 96
    r = dalab("train", "--method", "dann", "--source", f"folder:{tmp_path / 'mnist'}",
              "--target", f"folder:{tmp_path / 'mnistm'}", "--stream", "--image-size", 28, "--photo-transform",
              "resize", "--epochs", 1, "--batch-size", 16, "--workers", 0, "--precision", "fp32", "--device", "cpu",
              "--quiet", "--json", "--out", tmp_path / "run", env=env)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["status"] == "completed" and s["n_source_train"] == 96 and s["image_size"] == 28
    assert "streamed" in s["source_description"] and s["data_wait_seconds"] >= 0
    r = dalab("data", "export", "mnist", "--out", tmp_path / "mnist", "--data-dir", tiny_data, env=env)
    assert r.returncode == 2 and "already exists" in r.stderr  # nothing replaced without --overwrite
