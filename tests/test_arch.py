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
    # cut after the second block, as Shu et al.'s code (trim=5): the domain head sees 64 x 7 x 7 features
    assert net.features(x).shape == (6, 64 * 7 * 7) and net(x).shape == (6, 10)
    assert net.feature_dim == 3136 and net.domain_head.net[0].in_features == 3136
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 9 and all(c.kernel_size == (3, 3) and c.out_channels == 64 for c in convs)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.label_head.modules()) == 3
    assert sum(isinstance(m, DomainBatchNorm2d) for m in net.modules()) == 9
    assert isinstance(net.label_head.net[-1], torch.nn.Linear) and net.label_head.net[-1].in_features == 64
    net.eval()
    assert torch.equal(net(x), net(x))  # dropout and Gaussian noise only in training
    net.train()
    assert not torch.equal(net(x), net(x))
    with pytest.raises(ValueError, match="unknown arch"):
        DANNNet(arch="resnet")


@pytest.mark.parametrize("method,args", [("dann", {}), ("cdan", {"random_dim": 64}), ("vada", {}), ("mcc", {})])
def test_conv9_methods_take_a_finite_step(method, args):
    torch.manual_seed(0)
    net = DANNNet(arch="conv9", batch_norm=True, input_norm="instance")
    m = make_method(method, **args)
    m.setup(net, torch.device("cpu"))
    xs, xt = (torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8) for _ in range(2))
    loss, _ = m.loss(net, Batch(xs, torch.arange(8) % 10, xt, p=0.5))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.features_net.parameters())


def test_classify_per_domain_uses_each_domains_statistics():
    """conv9's head has batch norm: source and target features go through it in separate passes, so
    each half is normalised with its own batch statistics and fills its own running-statistics row."""
    from dalab.methods.dann import classify_per_domain

    torch.manual_seed(0)
    net = DANNNet(arch="conv9", batch_norm=True, input_norm="instance")
    fs, ft = torch.randn(5, 3136), 3 * torch.randn(7, 3136) + 2
    both = classify_per_domain(net, torch.cat([fs, ft]), 5)
    with torch.no_grad():
        alone_s, alone_t = net.classify(fs), net.classify(ft)
    assert torch.allclose(both[:5], alone_s, atol=1e-5) and torch.allclose(both[5:], alone_t, atol=1e-5)
    bn = next(m for m in net.label_head.modules() if isinstance(m, DomainBatchNorm2d))
    assert bn.num_batches_tracked.tolist() == [3, 1]  # source: 2 passes above + 1 here; target: 1 here
    assert not torch.allclose(net.classify(torch.cat([fs, ft]))[:5], alone_s, atol=1e-3)  # mixed batch differs
    ganin = DANNNet(batch_norm=True)  # a head without batch norm: one pass, the same numbers
    f = torch.randn(6, 768)
    assert torch.equal(classify_per_domain(ganin, f, 2), ganin.classify(f))


def test_conv9_run_saves_reloads_and_rescores(tiny_data, tmp_path):
    cfg = TrainConfig(method="dann", arch="conv9", epochs=1, batch_size=32, limit_train=128, limit_eval=64,
                      bn_calibration=64, data_dir=str(tiny_data), precision="fp32", device="cpu")
    s = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert s["status"] == "completed" and s["config"]["arch"] == "conv9"
    model, config = load_model(tmp_path / "run" / "model.pt")
    assert config["arch"] == "conv9-shu" and isinstance(model, DANNNet) and model.features_net.out_features == 3136
    from dalab.data import load_domain

    x, y = load_domain("mnistm", tiny_data)["test"].tensors("cpu", 64)
    assert accuracy_of(model, x, y, precision="fp32", domain="target") == pytest.approx(s["target_test_acc"])


def test_old_checkpoints_are_ganin_and_unknown_arch_is_refused(tmp_path):
    assert build_model({"num_classes": 10}).features_net.out_features == 768  # dalab <= 0.2: no arch key
    assert build_model({"arch": "ganin-mnist"}).features_net.out_features == 768
    save_model(tmp_path / "m.pt", DANNNet(), {"arch": "vgg16", "num_classes": 10})
    with pytest.raises(CheckpointError, match="does not describe a dalab network"):
        load_model(tmp_path / "m.pt")
    save_model(tmp_path / "old9.pt", DANNNet(), {"arch": "conv9", "num_classes": 10})  # dalab 0.3.0's cut
    with pytest.raises(CheckpointError, match="dalab 0.3.0.*retrain"):
        load_model(tmp_path / "old9.pt")


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

    from dalab.methods import check_method_args

    entries = SUITES["digits-mnistm-conv9"]["entries"]
    assert {e.method for e in entries} == {"source-only", "dann", "cdan", "vada", "dirt-t", "fixmatch", "adamatch",
                                             "target-only"}
    assert [e.init_from_method for e in entries if e.method == "dirt-t"] == ["vada", "adamatch"]
    for e in entries:
        cfg = TrainConfig(method=e.method, **e.overrides).validate()
        check_method_args(cfg.method, cfg.method_args)
        # Shu et al.'s settings, as published
        assert (cfg.arch, cfg.optimizer, cfg.adam_beta1, cfg.lr_schedule, cfg.ema_decay) == (
            "conv9", "adam", 0.5, "constant", 0.998)
        # AdaMatch's 20 epochs were chosen by label-free validators (BNM, info-max); the rest keep the default 10
        assert cfg.epochs == (20 if e.method == "adamatch" else 10), e.key


def test_adam_beta1_reaches_the_optimiser_and_is_checked(tiny_data):
    cfg = TrainConfig(method="source-only", optimizer="adam", adam_beta1=0.5, epochs=1, batch_size=16,
                      limit_train=32, limit_eval=16, data_dir=str(tiny_data), precision="fp32", device="cpu")
    tr = Trainer(cfg, None, progress=False)
    tr.setup()
    assert tr.opt.param_groups[0]["betas"] == (0.5, 0.999)
    from dalab.errors import DalabError

    with pytest.raises(DalabError, match="adam-beta1"):
        TrainConfig(adam_beta1=1.0).validate()


def test_calibration_fills_the_batch_norm_of_conv9s_head():
    """AdaBN recalibration runs the whole network: the third block's statistics are recomputed too."""
    from dalab.models.batchnorm import calibrate_bn

    torch.manual_seed(0)
    net = DANNNet(arch="conv9", batch_norm=True, input_norm="instance")
    x = torch.randint(0, 256, (40, 3, 28, 28), dtype=torch.uint8)
    assert calibrate_bn(net, x, "target", batch_size=40)
    head_bns = [m for m in net.label_head.modules() if isinstance(m, DomainBatchNorm2d)]
    assert len(head_bns) == 3 and all(int(m.num_batches_tracked[1]) == 1 for m in head_bns)
    assert all(not torch.allclose(m.running_var[1], torch.ones(64)) for m in head_bns)


def test_every_warm_start_names_an_earlier_entry_and_gets_its_own_folder(tmp_path):
    from dalab.evaluation.benchmark import SUITES, _run_config, _run_dir

    for name, suite in SUITES.items():
        keys = [e.key for e in suite["entries"]]
        assert len(set(keys)) == len(keys), name
        for i, e in enumerate(suite["entries"]):
            if e.init_from_method:
                assert e.init_from_method in keys[:i], (name, e.key)
                # one level only: `--jobs` trains every parent in a first phase, every child in a second
                parent = next(p for p in suite["entries"] if p.key == e.init_from_method)
                assert parent.init_from_method is None, (name, e.key)
    e = next(e for e in SUITES["digits-mnistm-conv9"]["entries"] if e.key == "dirt-t (from adamatch)")
    cfg, why = _run_config(e, ("mnist", "mnistm"), 2, tmp_path, {})
    assert cfg is None and "adamatch run for seed 2" in why
    (tmp_path / "adamatch" / "seed2").mkdir(parents=True)
    (tmp_path / "adamatch" / "seed2" / "model.pt").write_bytes(b"")
    cfg, _ = _run_config(e, ("mnist", "mnistm"), 2, tmp_path, {"epochs": 3})
    assert cfg["init_from"] == str(tmp_path / "adamatch" / "seed2" / "model.pt") and cfg["epochs"] == 3
    assert _run_dir(tmp_path, e.key, 2) == tmp_path / "dirt-t-from-adamatch" / "seed2"
    # an entry's own epochs (conv9's AdaMatch: 20) are its default; --epochs given to the benchmark wins
    a = next(e for e in SUITES["digits-mnistm-conv9"]["entries"] if e.key == "adamatch")
    assert _run_config(a, ("mnist", "mnistm"), 0, tmp_path, {})[0]["epochs"] == 20
    assert _run_config(a, ("mnist", "mnistm"), 0, tmp_path, {"epochs": 3})[0]["epochs"] == 3
