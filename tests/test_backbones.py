"""Backbones by name (torchvision, timm), their weights, and PhotoNet under every classification method.

The torchvision and timm tests build models without downloading anything (``weights=None``,
``pretrained=False``, or a state dict the test writes); a failed download is simulated. The
tests of PhotoNet's head and of the methods use a small module of their own, so they run without
either library.
"""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from dalab.errors import DalabError
from dalab.methods import Batch, make_method
from dalab.models import build_model
from dalab.models import backbones
from dalab.models.backbones import IMAGENET_MEAN, IMAGENET_STD, DomainDiscriminator, PhotoNet, make_backbone

CLASSIFICATION_METHODS = ["source-only", "target-only", "dann", "cdan", "cdan+e", "mcc", "fixmatch", "adamatch",
                          "mean-teacher"]


class Tiny(nn.Module):
    """Two strided convolutions with batch norm and global pooling: images -> (N, 16)."""

    out_features = 16

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


def images(n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_photonet_head_shapes_and_normalisation():
    torch.manual_seed(0)
    net = PhotoNet(Tiny(), num_classes=5)
    x = images(6)
    f = net.features(x)
    assert f.shape == (6, 256) and net(x).shape == (6, 5) and net.domain_logits(f, 0.5).shape == (6,)
    assert net.grl.lambd == 0.5 and net.feature_dim == 256 and net.backbone_dim == 16
    lin, bn, relu = net.bottleneck
    assert (lin.in_features, lin.out_features) == (16, 256) and isinstance(bn, nn.BatchNorm1d)
    d = [m for m in net.domain_head.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
    assert [(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m.num_features for m in d] == \
        [(256, 1024), 1024, (1024, 1024), 1024, (1024, 1)]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(net.normalize(x), (x.float() / 255 - mean) / std, atol=1e-6)
    net.eval()
    assert torch.allclose(net(x), net(x.float() / 255), atol=1e-5)  # uint8 or [0, 1] floats alike
    assert "input_mean" not in net.state_dict()  # fixed, not a weight


def test_param_groups_put_the_backbone_at_a_tenth():
    net = PhotoNet(Tiny(), num_classes=4)
    groups = net.param_groups(0.01)
    assert [g["name"] for g in groups] == ["backbone", "new layers"]
    assert groups[0]["lr"] == pytest.approx(0.001) and groups[1]["lr"] == pytest.approx(0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in net.backbone.parameters()}
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.01])


def test_domain_discriminator_gives_one_logit():
    d = DomainDiscriminator(256, 1024)
    assert d(torch.randn(7, 256)).shape == (7,)


@pytest.mark.parametrize("name", CLASSIFICATION_METHODS)
def test_every_classification_method_runs_on_photonet(name):
    torch.manual_seed(0)
    net = PhotoNet(Tiny(), num_classes=4)
    m = make_method(name)
    m.setup(net, torch.device("cpu"))
    xs, xt = images(6, seed=1), images(6, seed=2)
    ys, yt = torch.arange(6) % 4, (torch.arange(6) + 1) % 4
    loss, logs = m.loss(net, Batch(xs, ys, xt, yt if m.uses_target_labels else None, p=0.6))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in logs.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.backbone.parameters())
    if m.needs_domain_head:
        assert all(p.grad is not None for p in net.domain_head.parameters())


def test_methods_pass_both_domains_through_photonet_at_once():
    """joint_batch_norm: one backbone pass over source + target, as TLlib's scripts (not one per domain)."""
    net = PhotoNet(Tiny(), num_classes=4)
    calls = []
    net.backbone.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    for name in ("dann", "cdan", "mcc"):
        calls.clear()
        m = make_method(name)
        m.setup(net, torch.device("cpu"))
        m.loss(net, Batch(images(5), torch.arange(5) % 4, images(5, seed=3), p=0.5))
        assert calls == [10], name


def test_own_module_errors_and_rebuild():
    with pytest.raises(DalabError, match="feature_dim"):
        PhotoNet(nn.Sequential(nn.Flatten()), num_classes=3)
    with pytest.raises(DalabError, match="by name"):
        PhotoNet(Tiny(), num_classes=3, pretrained=True)
    net = PhotoNet(Tiny(), num_classes=3)
    with pytest.raises(DalabError, match="your own backbone module"):
        build_model(net.config())


def test_without_either_library_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(backbones, "_installed", lambda lib: False)
    with pytest.raises(DalabError, match=r"needs torchvision or timm, optional extras: pip install torchvision"):
        make_backbone("resnet18")


# ------------------------------------------------------------------------ torchvision

def _dann_steps(net, steps=3, size=64):
    torch.manual_seed(0)
    m = make_method("dann")
    m.setup(net, torch.device("cpu"))
    opt = torch.optim.SGD(net.param_groups(0.01), lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.train()
    for step in range(steps):
        loss, _ = m.loss(net, Batch(images(4, size, step), torch.arange(4) % 3, images(4, size, 10 + step),
                                    p=step / steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    after = net.state_dict()
    changed = {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])}
    return changed


def test_torchvision_resnet18_trains_dann_steps_and_rebuilds():
    pytest.importorskip("torchvision")
    net = PhotoNet("resnet18", num_classes=3)  # weights=None: nothing is downloaded
    assert net.backbone_spec == "torchvision:resnet18" and net.backbone_dim == 512 and net.weights == "random"
    changed = _dann_steps(net)
    assert any(k.startswith("backbone.") and k.endswith("conv1.weight") for k in changed)
    assert {"label_head.weight", "bottleneck.0.weight", "domain_head.net.0.weight"} <= changed
    again = build_model(net.config())
    again.load_state_dict(net.state_dict())
    net.eval(), again.eval()
    x = images(2, 64, 99)
    assert torch.equal(net(x), again(x))


def test_torchvision_init_from_a_state_dict(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    full = tv.models.resnet18(num_classes=1000)
    torch.save(full.state_dict(), tmp_path / "r18.pt")  # with its 1000-class fc: ignored
    net = PhotoNet("resnet18", num_classes=3, init=tmp_path / "r18.pt")
    assert torch.equal(net.backbone.net.conv1.weight, full.conv1.weight) and net.weights == "init r18.pt"
    wrapped = {"state_dict": {f"module.{k}": v for k, v in full.state_dict().items() if not k.startswith("fc.")}}
    torch.save(wrapped, tmp_path / "ddp.pt")
    net = PhotoNet("resnet18", num_classes=3, init=tmp_path / "ddp.pt")
    assert torch.equal(net.backbone.net.layer4[1].bn2.running_var, full.layer4[1].bn2.running_var)


def test_a_state_dict_that_does_not_fit_is_one_line(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.save(tv.models.resnet34().state_dict(), tmp_path / "r34.pt")
    with pytest.raises(DalabError, match=r"r34.pt does not fit torchvision:resnet18: \d+ unexpected keys") as e:
        make_backbone("resnet18", init=tmp_path / "r34.pt")
    assert "\n" not in str(e.value)
    sd = tv.models.resnet18().state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    del sd["bn1.bias"]
    torch.save(sd, tmp_path / "odd.pt")
    with pytest.raises(DalabError, match=r"1 missing key \(bn1.bias\), 1 shape mismatch \(conv1.weight: "
                                         r"\(64, 3, 3, 3\) in the file, \(64, 3, 7, 7\) in the model\)"):
        make_backbone("resnet18", init=tmp_path / "odd.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DalabError, match="junk.pt: not a readable state dict"):
        make_backbone("resnet18", init=tmp_path / "junk.pt")
    with pytest.raises(DalabError, match="no such file"):
        make_backbone("resnet18", init=tmp_path / "gone.pt")
    with pytest.raises(DalabError, match="pass one of them"):
        make_backbone("resnet18", pretrained=True, init=tmp_path / "r34.pt")


def test_unknown_names_are_one_line():
    pytest.importorskip("torchvision")
    with pytest.raises(DalabError, match=r"--backbone resnet51: neither torchvision.* knows this model "
                                         r"\(did you mean .*resnet50"):
        make_backbone("resnet51")
    with pytest.raises(DalabError, match="torchvision has no model 'nope'"):
        make_backbone("torchvision:nope")


def test_pretrained_without_network_says_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(DalabError, match=r"could not get the pretrained weights of torchvision:resnet18 \(URLError: "
                                         r".*copy its cache to .*checkpoints here, or pass --init PATH") as e:
        make_backbone("resnet18", pretrained=True)
    assert "\n" not in str(e.value) and "IMAGENET1K_V1" in str(e.value)
    with pytest.raises(DalabError, match="has no weights 'IMAGENET9K'"):
        make_backbone("resnet18", pretrained="IMAGENET9K")


# ------------------------------------------------------------------------ timm

def test_timm_model_trains_dann_steps_init_and_download_failure(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    net = PhotoNet("timm:resnet10t", num_classes=3, pretrained=False)
    assert net.backbone_spec == "timm:resnet10t" and net.backbone_dim == 512
    changed = _dann_steps(net)
    assert any(k.startswith("backbone.") for k in changed) and "label_head.weight" in changed
    assert isinstance(build_model(net.config()), PhotoNet)
    torch.manual_seed(2)
    full = timm.create_model("resnet10t", pretrained=False)  # with its classifier: ignored
    torch.save(full.state_dict(), tmp_path / "r10t.pt")
    loaded = PhotoNet("timm:resnet10t", num_classes=3, init=tmp_path / "r10t.pt")
    assert torch.equal(loaded.backbone.conv1[0].weight, full.conv1[0].weight)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(DalabError, match=r"could not get the pretrained weights of timm:resnet10t \(OSError: .*"
                                         r"timm.create_model\('resnet10t', pretrained=True\).*--init PATH"):
        make_backbone("timm:resnet10t", pretrained=True)
