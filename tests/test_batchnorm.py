"""Per-domain batch-norm statistics (models/batchnorm.py) and their use by methods, trainer and CLI."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from dalab.errors import DalabError
from dalab.methods.dann import features_per_domain
from dalab.models import DANNNet, DomainBatchNorm2d, bn_domain, calibrate_bn, set_bn_domain
from dalab.models.inference import accuracy_of
from dalab.training import TrainConfig, Trainer, load_model


def test_one_domain_matches_torch_batchnorm_in_training_and_eval():
    torch.manual_seed(0)
    ref, dom = nn.BatchNorm2d(4), DomainBatchNorm2d(4)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0)
        ref.bias.uniform_(-1, 1)
        dom.weight.copy_(ref.weight)
        dom.bias.copy_(ref.bias)
    for _ in range(3):
        x = torch.randn(8, 4, 5, 5) * 3 + 1
        assert torch.allclose(ref(x), dom(x), atol=1e-5)
    assert torch.allclose(ref.running_mean, dom.running_mean[0]) and torch.allclose(ref.running_var, dom.running_var[0])
    assert int(dom.num_batches_tracked[0]) == 3 and int(dom.num_batches_tracked[1]) == 0
    ref.eval(), dom.eval()
    x = torch.randn(6, 4, 5, 5)
    assert torch.allclose(ref(x), dom(x), atol=1e-5)


def test_rows_are_independent_and_an_unfilled_row_falls_back_to_row_0():
    bn = DomainBatchNorm2d(3)
    bn.domain = 1
    bn(torch.randn(16, 3, 4, 4) * 5 + 10)  # fills row 1 only
    assert torch.equal(bn.running_mean[0], torch.zeros(3)) and bn.running_mean[1].mean() > 0.5
    fresh = DomainBatchNorm2d(3)
    fresh(torch.randn(16, 3, 4, 4) + 2)  # row 0 only
    fresh.eval()
    x = torch.randn(4, 3, 4, 4)
    fresh.domain = 0
    a = fresh(x)
    fresh.domain = 1
    assert torch.equal(fresh(x), a)  # row 1 never filled: row 0 is used


def test_calibrate_bn_recomputes_exact_statistics_of_one_domain():
    torch.manual_seed(0)
    net = DANNNet(batch_norm=True)
    x = torch.randint(0, 256, (300, 3, 28, 28), dtype=torch.uint8)
    assert calibrate_bn(net, x, "target", batch_size=300)  # one batch: the statistics are exact
    bn0 = net.features_net.net[1]
    with torch.no_grad():
        pre = net.features_net.net[0]((x.float() / 255 - 0.5) / 0.5)
    assert torch.allclose(bn0.running_mean[1], pre.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn0.running_var[1], pre.var(dim=(0, 2, 3), unbiased=True), rtol=1e-3)
    assert torch.equal(bn0.running_mean[0], torch.zeros(32))  # source row untouched
    assert bn0.momentum == 0.1 and bn0.domain == 0 and net.training  # settings restored
    assert not calibrate_bn(DANNNet(batch_norm=False), x, "target")


def test_bn_domain_context_and_unknown_domain():
    net = DANNNet(batch_norm=True)
    with bn_domain(net, "target"):
        assert all(m.domain == 1 for m in net.modules() if isinstance(m, DomainBatchNorm2d))
    assert all(m.domain == 0 for m in net.modules() if isinstance(m, DomainBatchNorm2d))
    with pytest.raises(ValueError, match="unknown batch-norm domain"):
        set_bn_domain(net, "elsewhere")


def test_features_per_domain_fills_each_domains_row():
    net = DANNNet(batch_norm=True)
    xs = torch.zeros(8, 3, 28, 28, dtype=torch.uint8)
    xt = torch.full((8, 3, 28, 28), 200, dtype=torch.uint8)
    features_per_domain(net, xs, xt)
    bn = net.features_net.net[1]
    assert bn.num_batches_tracked.tolist() == [1, 1]
    assert not torch.allclose(bn.running_mean[0], bn.running_mean[1])


def _cfg(tiny, **kw):
    base = dict(method="dann", epochs=1, batch_size=32, data_dir=str(tiny), precision="fp32", seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_calibrates_saves_and_evaluate_uses_each_domains_statistics(tiny_data, tmp_path):
    s = Trainer(_cfg(tiny_data), tmp_path / "r", progress=False).fit()
    assert "AdaBN" in s["bn_statistics"]
    model, config = load_model(tmp_path / "r" / "model.pt")
    assert config["domain_bn"] is True
    bn = [m for m in model.modules() if isinstance(m, DomainBatchNorm2d)][0]
    assert not torch.allclose(bn.running_mean[0], bn.running_mean[1])
    from dalab.data import load_domain

    xt, yt = load_domain("mnistm", tiny_data)["test"].tensors()
    xs, ys = load_domain("mnist", tiny_data)["test"].tensors()
    assert accuracy_of(model, xt, yt, domain="target") == pytest.approx(s["target_test_acc"], abs=1e-6)
    assert accuracy_of(model, xs, ys, domain="source") == pytest.approx(s["source_test_acc"], abs=1e-6)
    out = subprocess.run([sys.executable, "-m", "dalab", "evaluate", "--checkpoint", str(tmp_path / "r" / "model.pt"),
                          "--domain", "mnistm", "--split", "test", "--json", "--data-dir", str(tiny_data)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accuracy"] == pytest.approx(s["target_test_acc"], abs=1e-6)


def test_source_only_never_sees_target_statistics(tiny_data, tmp_path):
    t = Trainer(_cfg(tiny_data, method="source-only"), tmp_path / "s", progress=False)
    t.fit()
    bn = [m for m in t.model.modules() if isinstance(m, DomainBatchNorm2d)][0]
    assert int(bn.num_batches_tracked[1]) == 0  # target row empty: target is evaluated with source statistics
    assert list(t._calib) == ["source"]


def test_shared_statistics_and_old_checkpoints(tiny_data, tmp_path):
    s = Trainer(_cfg(tiny_data, bn_stats="shared"), tmp_path / "sh", progress=False).fit()
    assert s["bn_statistics"].startswith("shared")
    model, config = load_model(tmp_path / "sh" / "model.pt")
    assert config["domain_bn"] is False
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # a dalab 0.1 checkpoint has no "domain_bn" key: it loads as plain batch norm
    from dalab.training.checkpoint import save_atomic

    ck = torch.load(tmp_path / "sh" / "model.pt", weights_only=True)
    ck["config"].pop("domain_bn")
    ck.pop("sha256")
    save_atomic(ck, tmp_path / "old.pt")
    old, _ = load_model(tmp_path / "old.pt")
    assert not any(isinstance(m, DomainBatchNorm2d) for m in old.modules())


@pytest.mark.parametrize("bad", [dict(bn_stats="per-class"), dict(bn_calibration=-1)])
def test_bn_config_validation(tiny_data, bad):
    with pytest.raises(DalabError, match="bn"):
        _cfg(tiny_data, **bad).validate()
