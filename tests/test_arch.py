"""``--arch conv9``: Shu et al.'s 9-conv digit network, through the one trainer and checkpoints."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dalab.methods import Batch, make_method
from dalab.models import DANNNet, build_model
from dalab.models.batchnorm import DomainBatchNorm2d
from dalab.models.inference import accuracy_of
from dalab.training import TrainConfig, Trainer, load_model
from dalab.training.checkpoint import CheckpointError, save_model


def test_conv9_shapes_layers_and_train_only_noise():
    torch.manual_seed(0)
    net = DANNNet(arch="conv9", batch_norm=True, input_norm="instance")
    x = torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8)
    assert net.features(x).shape == (6, 64) and net(x).shape == (6, 10)
    convs = [m for m in net.features_net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 9 and all(c.kernel_size == (3, 3) and c.out_channels == 64 for c in convs)
    assert sum(isinstance(m, DomainBatchNorm2d) for m in net.modules()) == 9
    assert len(net.label_head.net) == 1  # a linear head on the 64 pooled features
    net.eval()
    assert torch.equal(net(x), net(x))  # dropout and Gaussian noise only in training
    net.train()
    assert not torch.equal(net(x), net(x))
    with pytest.raises(ValueError, match="unknown arch"):
        DANNNet(arch="resnet")


@pytest.mark.parametrize("method", ["dann", "cdan"])
def test_conv9_methods_take_a_finite_step(method):
    torch.manual_seed(0)
    net = DANNNet(arch="conv9", batch_norm=True, input_norm="instance")
    m = make_method(method)
    m.setup(net, torch.device("cpu"))
    xs, xt = (torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8) for _ in range(2))
    loss, _ = m.loss(net, Batch(xs, torch.arange(8) % 10, xt, p=0.5))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.features_net.parameters())


def test_conv9_run_saves_reloads_and_rescores(tiny_data, tmp_path):
    cfg = TrainConfig(method="dann", arch="conv9", epochs=1, batch_size=32, limit_train=128, limit_eval=64,
                      bn_calibration=64, data_dir=str(tiny_data), precision="fp32", device="cpu")
    s = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert s["status"] == "completed" and s["config"]["arch"] == "conv9"
    model, config = load_model(tmp_path / "run" / "model.pt")
    assert config["arch"] == "conv9" and isinstance(model, DANNNet) and model.features_net.out_features == 64
    from dalab.data import load_domain

    x, y = load_domain("mnistm", tiny_data)["test"].tensors("cpu", 64)
    assert accuracy_of(model, x, y, precision="fp32", domain="target") == pytest.approx(s["target_test_acc"])


def test_old_checkpoints_are_ganin_and_unknown_arch_is_refused(tmp_path):
    assert build_model({"num_classes": 10}).features_net.out_features == 768  # dalab <= 0.2: no arch key
    assert build_model({"arch": "ganin-mnist"}).features_net.out_features == 768
    save_model(tmp_path / "m.pt", DANNNet(), {"arch": "vgg16", "num_classes": 10})
    with pytest.raises(CheckpointError, match="does not describe a dalab network"):
        load_model(tmp_path / "m.pt")


def test_resume_of_a_checkpoint_without_arch(tiny_data, tmp_path):
    """A resume checkpoint written before ``arch`` existed continues as Ganin's network."""
    cfg = TrainConfig(method="source-only", epochs=2, batch_size=32, limit_train=64, limit_eval=32,
                      data_dir=str(tiny_data), precision="fp32", device="cpu")
    out = tmp_path / "run"
    Trainer(TrainConfig(**{**cfg.to_dict(), "epochs": 1}), out, progress=False).fit()
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    del ck["config"]["arch"]
    from dalab.training.checkpoint import CKPT_FORMAT, save_atomic

    ck.pop("sha256", None)
    assert ck["format"] == CKPT_FORMAT
    save_atomic(ck, out / "ckpt.pt")
    s = Trainer(cfg, out, progress=False, resume=True).fit()
    assert s["status"] == "completed" and s["epochs_done"] == 2


def test_cli_arch_flag(tiny_data, tmp_path):
    base = [sys.executable, "-m", "dalab", "train", "--data-dir", str(tiny_data), "--quiet"]
    bad = subprocess.run(base + ["--arch", "resnet", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--arch" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run(base + ["--arch", "conv9", "--epochs", "1", "--limit-train", "64", "--limit-eval", "32",
                                "--batch-size", "32", "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert '"arch": "conv9"' in (tmp_path / "r" / "summary.json").read_text()


def test_conv9_suite_configs_are_valid():
    from dalab.evaluation.benchmark import SUITES

    entries = SUITES["digits-mnistm-conv9"]["entries"]
    assert {e.method for e in entries} == {"source-only", "dann", "cdan", "fixmatch", "target-only"}
    for e in entries:
        cfg = TrainConfig(method=e.method, **e.overrides).validate()
        assert cfg.arch == "conv9" and cfg.optimizer == "adam"
