"""The public API: top-level exports, training on user tensors with a user backbone, the example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import dalab
from dalab.errors import DalabError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ exports
def test_import_dalab_is_cheap():
    code = ("import sys, dalab; bad = [m for m in ('torch', 'matplotlib', 'sklearn') if m in sys.modules]; "
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"`import dalab` imported {r.stdout.strip()}"


def test_every_public_name_resolves_and_none_pulls_in_plotting():
    code = ("import sys, dalab\n"
            "for n in dalab.__all__: getattr(dalab, n)\n"
            "print(','.join(m for m in ('matplotlib', 'sklearn') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_paper_vocabulary_is_exported():
    from dalab.methods import DANN as DANN_
    from dalab.models.grl import GradientReversal as GRL_

    assert dalab.DANN is DANN_ and dalab.GradientReversal is GRL_
    for name in ("grad_reverse", "GradReverseFn", "LambdaSchedule", "ganin_lambda", "DANNNet",
                 "FeatureExtractor", "LabelHead", "DomainHead", "SourceOnly", "NoGRL", "TargetOnly",
                 "Batch", "Method", "METHODS", "make_method", "load_domain", "Domain", "Split",
                 "Trainer", "TrainConfig", "train", "fit", "TensorData", "accuracy_of", "predict_logits",
                 "extract_features", "load_model", "TensorBoardLogger", "DalabError"):
        assert name in dalab.__all__ and getattr(dalab, name) is not None
    assert "DANN" in dir(dalab) and "fit" in dir(dalab)
    with pytest.raises(AttributeError):
        dalab.no_such_thing  # noqa: B018


def test_every_registered_method_is_importable_from_the_top_package():
    for name, cls in dalab.METHODS.items():
        assert getattr(dalab, cls.__name__) is cls, f"method {name!r} ({cls.__name__}) is not exported"


def test_public_api_has_docstrings():
    for name in ("GradientReversal", "grad_reverse", "ganin_lambda", "LambdaSchedule", "DANNNet", "DANN",
                 "SourceOnly", "Method", "Batch", "load_domain", "Split", "Domain", "fit", "TensorData",
                 "Trainer", "TensorBoardLogger"):
        assert (getattr(dalab, name).__doc__ or "").strip(), f"{name} has no docstring"


# ------------------------------------------------------------------ domains as tensors / Dataset
def test_split_dataset_is_a_torch_dataset(tiny_data):
    dom = dalab.load_domain("mnistm", tiny_data)
    ds = dom["train"].dataset(limit=100)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 100
    x, y = ds[3]
    assert x.shape == (3, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=16)))
    assert xb.shape == (16, 3, 28, 28) and yb.shape == (16,)
    xt, yt = dom["train"].tensors(limit=100)
    assert torch.equal(xb, xt[:16]) and torch.equal(yb, yt[:16])


# ------------------------------------------------------------------ the method as a loss in a user loop
def test_method_loss_in_a_hand_written_loop():
    torch.manual_seed(0)
    net = dalab.DANNNet(num_classes=10)
    method = dalab.DANN()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    xs = torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8)
    xt = torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8)
    ys = torch.randint(0, 10, (8,))
    loss, logs = method.loss(net, dalab.Batch(xs, ys, xt, p=0.5))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert {"task_loss", "domain_loss", "domain_acc", "lambda"} <= set(logs)
    assert logs["lambda"].item() == pytest.approx(dalab.ganin_lambda(0.5))


# ------------------------------------------------------------------ fit on user tensors
def _toy(n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 6, generator=g) * 0.5
    x[:, 0] += y.float() * 2
    return x + shift, y


class Backbone(nn.Module):  # a user's own feature extractor on vectors (not images)
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU())

    def forward(self, x):
        return self.net(x)


def test_fit_trains_a_user_backbone_on_user_tensors(tmp_path):
    xs, ys = _toy(256, 0.0, 0)
    xt, yt = _toy(256, 1.0, 1)
    torch.manual_seed(0)
    net = dalab.DANNNet(feature_extractor=Backbone(), feature_dim=16, num_classes=3)
    before = [p.detach().clone() for p in net.features_net.parameters()]
    rows = []
    res = dalab.fit(net, dalab.DANN(), xs, ys, xt, target_test=(xt, yt), source_val=(xs[:64], ys[:64]),
                    epochs=2, batch_size=32, optimizer="adam", lr=0.01, device="cpu", precision="fp32",
                    progress=False, out=tmp_path / "run", logger=rows.append)
    assert res.model is net and res["status"] == "completed"
    assert all(not torch.equal(a, b) for a, b in zip(before, net.features_net.parameters()))
    assert [r["epoch"] for r in res.history] == [1, 2] and rows == res.history
    last = res.history[-1]
    assert {"task_loss", "domain_loss", "domain_acc", "lambda", "target_test_acc", "source_val_acc"} <= set(last)
    assert "source_test_acc" not in last  # not given, so not measured
    assert 0 <= res["target_test_acc"] <= 1 and res["source_val_acc"] > 0.5
    assert res["n_source_train"] == 256 and res["n_target_train"] == 256
    for f in ("summary.json", "metrics.jsonl", "model.pt", "ckpt.pt"):
        assert (tmp_path / "run" / f).is_file()
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["config"]["arch"] == "custom"


def test_fit_source_only_needs_no_target_and_builds_the_default_net():
    g = torch.Generator().manual_seed(0)
    xs = torch.randint(0, 256, (128, 3, 28, 28), dtype=torch.uint8, generator=g)
    ys = torch.randint(0, 4, (128,), generator=g)
    res = dalab.fit(None, "source-only", xs, ys, epochs=1, batch_size=32, device="cpu", precision="fp32",
                    progress=False, source_test=(xs, ys))
    assert isinstance(res.model, dalab.DANNNet)
    assert res.model(xs[:2]).shape == (2, 4)  # num_classes inferred from ys
    assert res["n_target_train"] == 0


def test_fit_rejects_bad_input_with_one_line_errors():
    xs, ys = _toy(64, 0.0, 0)
    net = dalab.DANNNet(feature_extractor=Backbone(), feature_dim=16, num_classes=3)
    kw = dict(epochs=1, batch_size=16, device="cpu", progress=False)
    with pytest.raises(DalabError, match="needs unlabelled target images"):
        dalab.fit(net, "dann", xs, ys, None, **kw)
    with pytest.raises(DalabError, match="64 images but ys has 10"):
        dalab.fit(net, "dann", xs, ys[:10], xs, **kw)
    with pytest.raises(DalabError, match="integer tensor"):
        dalab.fit(net, "dann", xs, ys.float(), xs, **kw)
    with pytest.raises(DalabError, match="same input shape|share one input shape"):
        dalab.fit(net, "dann", xs, ys, xs[:, :3], **kw)
    with pytest.raises(DalabError, match="oracle"):
        dalab.fit(net, "target-only", xs, ys, xs, **kw)
    with pytest.raises(DalabError, match="unknown method"):
        dalab.fit(net, "nope", xs, ys, xs, **kw)


def test_tensors_and_domains_go_through_the_same_trainer(tiny_data):
    """fit() on a domain's tensors == Trainer on the domain on disk: one loop, same weights."""
    from dalab.training import TrainConfig, Trainer

    cfg = TrainConfig(method="dann", epochs=1, batch_size=32, data_dir=str(tiny_data), precision="fp32",
                      device="cpu", seed=5)
    t = Trainer(cfg, progress=False)
    s_disk = t.fit()
    src, tgt = dalab.load_domain("mnist", tiny_data), dalab.load_domain("mnistm", tiny_data)
    res = dalab.fit(None, dalab.DANN(), *src["train"].tensors(), tgt["train"].tensors()[0],
                    source_val=src["val"].tensors(), source_test=src["test"].tensors(),
                    target_test=tgt["test"].tensors(), epochs=1, batch_size=32, precision="fp32",
                    device="cpu", seed=5, progress=False)
    for k in ("source_val_acc", "source_test_acc", "target_test_acc"):
        assert res[k] == s_disk[k]
    a, b = t.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ live progress bar
def test_progress_bar_shows_losses_current_lambda_and_domain_accuracy(tiny_data, monkeypatch):
    import tqdm.auto

    postfixes = []

    class FakeBar:
        def __init__(self, *a, **k):
            pass

        def set_postfix(self, d, refresh=True):
            postfixes.append(dict(d))

        def update(self, n):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    from dalab.training import TrainConfig, Trainer

    cfg = TrainConfig(method="dann", epochs=1, batch_size=32, data_dir=str(tiny_data), precision="fp32",
                      device="cpu")
    Trainer(cfg, progress=True).fit()
    assert postfixes, "the trainer never set the progress bar's postfix"
    last = postfixes[-1]
    assert set(last) == {"task_loss", "domain_loss", "domain_acc", "lambda"}
    steps = 512 // 32
    assert float(last["lambda"]) == pytest.approx(dalab.ganin_lambda((steps - 1) / steps), abs=1e-3)
    assert 0 <= float(last["domain_acc"]) <= 1


# ------------------------------------------------------------------ the own-data example (docs/api.md)
def test_own_data_example_runs(capsys):
    src = (ROOT / "examples" / "own_data.py").read_text()
    assert len(src.splitlines()) < 30, "the own-data example of docs/api.md must stay under 30 lines"
    # same code, smaller: fewer images and one epoch, so the test takes seconds
    small = src.replace("2048", "256").replace("epochs=3", "epochs=1")
    assert small != src
    path = ROOT / "examples" / "own_data.py"
    code = compile(small, str(path), "exec")
    exec(code, {"__name__": "__main__", "__file__": str(path)})
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in out] == ["source-only", "dann"]
    assert all("target accuracy" in ln for ln in out)
