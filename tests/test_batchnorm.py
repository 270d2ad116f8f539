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
    bns = [m for m in net.modules() if isinstance(m, DomainBatchNorm2d)]
    assert len(bns) == 2  # Ganin's network: one after each convolution
    with bn_domain(net, "target"):
        assert [m.domain for m in bns] == [1, 1]
    assert [m.domain for m in bns] == [0, 0]
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


# ---------------------------------------------------------------- one pass for both domains
# Every method whose loss goes through features_per_domain / classify_per_domain / logits_per_domain.
PER_DOMAIN_METHODS = ["dann", "no-grl", "cdan", "cdan+e", "vada", "mcc", "pseudo-label", "dann-pl",
                      "mean-teacher", "fixmatch", "adamatch"]


def _split_step(method_name, arch, one_pass, monkeypatch, channels_last=False):
    """Loss, gradients, running statistics and logs of one training step on a fixed batch."""
    import copy

    import dalab.methods.dann as dann_mod
    from dalab.methods import Batch, make_method

    torch.manual_seed(0)
    net = DANNNet(batch_norm=True, input_norm="instance", arch=arch)
    for m in net.modules():  # conv9's dropout and noise draw other random numbers for 2B rows than for B + B
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "std"):
            m.std = 0.0
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    method = make_method(method_name)
    method.setup(net, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    xs = torch.randint(0, 256, (12, 3, 28, 28), dtype=torch.uint8, generator=g)
    xt = (torch.randint(0, 256, (12, 3, 28, 28), dtype=torch.uint8, generator=g) // 2 + 60).to(torch.uint8)
    ys = torch.randint(0, 10, (12,), generator=g)
    method.on_epoch_start(net, 0, xt)  # pseudo-labels for the pseudo-label methods (a one-pass inference)
    net, method = copy.deepcopy(net), copy.deepcopy(method)
    if not one_pass:
        monkeypatch.setattr(dann_mod, "splits_domains", lambda model: False)
    torch.manual_seed(2)  # the same augmentations / VAT noise on both sides
    loss, logs = method.loss(net, Batch(xs, ys, xt, p=0.3, idx_t=torch.arange(12)))
    loss.backward()
    monkeypatch.undo()
    grads = {k: p.grad.clone() for k, p in list(net.named_parameters()) + list(method.named_parameters())
             if p.grad is not None}
    bufs = {k: b.clone() for k, b in net.named_buffers()}
    return loss.detach(), grads, bufs, {k: v.detach().float() for k, v in logs.items()}


# conv9 (batch norm in the label head too): one method per per-domain function is enough, at ~1 s a method
@pytest.mark.parametrize("method_name,arch", [(m, "ganin") for m in PER_DOMAIN_METHODS]
                         + [(m, "conv9") for m in ("dann", "vada", "mcc", "fixmatch")])
def test_one_pass_with_per_domain_statistics_matches_two_passes(method_name, arch, monkeypatch):
    """One pass over the concatenated batch (DomainBatchNorm2d split at the source size) gives the
    two-pass step: loss, every gradient, every running statistic and every logged metric agree to
    float32 rounding (rtol 1e-4, atol 1e-5; conv9's label head is split too)."""
    loss1, g1, b1, l1 = _split_step(method_name, arch, True, monkeypatch)
    loss2, g2, b2, l2 = _split_step(method_name, arch, False, monkeypatch)
    assert torch.allclose(loss1, loss2, rtol=1e-4, atol=1e-5), (loss1, loss2)
    assert g1.keys() == g2.keys() and g1
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-4, atol=1e-5), f"gradient of {k} differs"
    assert b1.keys() == b2.keys()
    for k in b1:
        assert torch.allclose(b1[k].float(), b2[k].float(), rtol=1e-4, atol=1e-5), f"buffer {k} differs"
    assert any(k.endswith("num_batches_tracked") and b1[k].tolist()[:2] != [0, 0] for k in b1)
    for k in l1:
        assert torch.allclose(l1[k], l2[k], rtol=1e-4, atol=1e-5), f"logged {k} differs"


def test_one_pass_runs_the_convolutions_once_on_both_domains():
    net = DANNNet(batch_norm=True)
    calls = []
    net.features_net.net[0].register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    features_per_domain(net, torch.zeros(8, 3, 28, 28, dtype=torch.uint8), torch.ones(5, 3, 28, 28, dtype=torch.uint8))
    assert calls == [13]
    bn = net.features_net.net[1]
    assert bn.num_batches_tracked.tolist() == [1, 1] and bn.split is None  # split only inside the pass


def test_plain_batchnorm_keeps_two_passes_and_shared_statistics():
    net = DANNNet(batch_norm=True, domain_bn=False)
    calls = []
    net.features_net.net[0].register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    xs, xt = torch.zeros(8, 3, 28, 28, dtype=torch.uint8), torch.full((6, 3, 28, 28), 200, dtype=torch.uint8)
    f = features_per_domain(net, xs, xt)
    assert calls == [8, 6] and f.shape == (14, 768)
    assert int(net.features_net.net[1].num_batches_tracked) == 2


def test_split_at_the_ends_uses_one_domain():
    bn = DomainBatchNorm2d(3)
    x = torch.randn(6, 3, 4, 4)
    bn.split = 6
    bn(x)
    bn.split = 0
    bn(x + 5)
    assert bn.num_batches_tracked.tolist() == [1, 1]
    assert bn.running_mean[1].mean() > bn.running_mean[0].mean() + 0.4


class _Mixed(nn.Module):
    """A user's network: an ordinary BatchNorm2d (a pretrained backbone's) before dalab's per-domain one."""

    def __init__(self):
        super().__init__()
        self.conv1, self.plain = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.dom = nn.Conv2d(4, 5, 3), DomainBatchNorm2d(5)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = x.float() / 255
        h = torch.relu(self.plain(self.conv1(x)))
        return self.dom(self.conv2(self.drop(h)))


def _mixed_with_backbone_statistics():
    torch.manual_seed(0)
    net = _Mixed()
    net(torch.randint(0, 256, (16, 3, 10, 10), dtype=torch.uint8))  # training: the backbone's running statistics
    net.drop.eval()  # a user's choice of modes that calibration must give back
    assert int(net.plain.num_batches_tracked) == 1 and not torch.equal(net.plain.running_mean, torch.zeros(4))
    return net


def test_calibrate_bn_leaves_an_ordinary_batchnorm_alone_by_default():
    net = _mixed_with_backbone_statistics()
    net.drop.p = 0.0  # calibration runs in training mode (dropout on, as in training): off for the exact check
    before = {k: b.clone() for k, b in net.plain.named_buffers()}
    dom_before = net.dom.running_mean.clone()
    x = torch.randint(100, 256, (40, 3, 10, 10), dtype=torch.uint8)
    assert calibrate_bn(net, x, "target", batch_size=40)
    for k, b in net.plain.named_buffers():
        assert torch.equal(b, before[k]), f"ordinary batch norm's {k} changed"
    assert torch.equal(net.dom.running_mean[0], dom_before[0])  # source row untouched
    assert not torch.equal(net.dom.running_mean[1], dom_before[1])  # target row recomputed
    # ... from the features of the network as it evaluates: the backbone's batch norm with its running statistics
    with torch.no_grad():
        net.eval()
        pre = net.conv2(torch.relu(net.plain(net.conv1(x.float() / 255))))
    assert torch.allclose(net.dom.running_mean[1], pre.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(net.dom.running_var[1], pre.var(dim=(0, 2, 3)), rtol=1e-4)
    net.train()
    net.drop.eval()
    modes = {n: m.training for n, m in net.named_modules()}
    calibrate_bn(net, x, "target")
    assert {n: m.training for n, m in net.named_modules()} == modes  # each module's own mode given back
    assert modes["drop"] is False and modes["plain"] is True


def test_calibrate_bn_all_recomputes_the_ordinary_batchnorm_on_request():
    net = _mixed_with_backbone_statistics()
    net.drop.p = 0.0
    x = torch.randint(100, 256, (40, 3, 10, 10), dtype=torch.uint8)
    assert calibrate_bn(net, x, "target", batch_size=40, layers="all")
    with torch.no_grad():
        pre = net.conv1(x.float() / 255)
    assert torch.allclose(net.plain.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)  # one batch: exact
    assert torch.allclose(net.plain.running_var, pre.var(dim=(0, 2, 3)), rtol=1e-4)
    assert int(net.plain.num_batches_tracked) == 1 and net.plain.momentum == 0.1  # momentum restored
    assert int(net.dom.num_batches_tracked[1]) == 1
    # only ordinary batch norm: nothing to do by default, recomputed with layers="all"
    plain_only = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert not calibrate_bn(plain_only, x.float(), "target")
    assert torch.equal(plain_only[1].running_mean, torch.zeros(4))
    assert calibrate_bn(plain_only, x.float(), "target", layers="all")
    assert not torch.equal(plain_only[1].running_mean, torch.zeros(4))
    with pytest.raises(ValueError, match="calibration layers"):
        calibrate_bn(net, x, "target", layers="plain")
