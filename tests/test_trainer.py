import json

import pytest
import torch

from dalab.errors import DalabError
from dalab.training import TrainConfig, Trainer, ganin_lr, load_model


def cfg(tiny, **kw):
    base = dict(method="dann", epochs=2, batch_size=32, data_dir=str(tiny), precision="fp32", seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method", ["source-only", "dann", "no-grl", "target-only"])
def test_every_method_trains_and_writes_the_contract_files(tiny_data, tmp_path, method):
    out = tmp_path / method
    s = Trainer(cfg(tiny_data, method=method), out, progress=False).fit()
    for f in ("summary.json", "metrics.jsonl", "model.pt", "ckpt.pt"):
        assert (out / f).is_file()
    saved = json.loads((out / "summary.json").read_text())
    for k in ("method", "source", "target", "seed", "epochs", "source_test_acc", "target_test_acc",
              "source_val_acc", "train_seconds", "device", "dalab_version"):
        assert k in saved
    assert saved["method"] == method and saved["status"] == "completed"
    assert 0.0 <= saved["target_test_acc"] <= 1.0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert saved["uses_target_labels"] == (method == "target-only")
    obj = torch.load(out / "model.pt", weights_only=True)
    assert obj["config"]["method"] == method
    model, _ = load_model(out / "model.pt")
    assert model(torch.zeros(2, 3, 28, 28, dtype=torch.uint8)).shape == (2, 10)
    assert s["target_test_acc"] == saved["target_test_acc"]


def test_source_only_learns_the_tiny_task(tiny_data):
    s = Trainer(cfg(tiny_data, method="source-only", epochs=4, optimizer="adam"), progress=False).fit()
    assert s["source_test_acc"] > 0.9


def test_dann_metrics_are_recorded_each_epoch(tiny_data, tmp_path):
    Trainer(cfg(tiny_data), tmp_path / "r", progress=False).fit()
    rows = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        for k in ("task_loss", "domain_loss", "domain_acc", "lambda", "source_val_acc", "target_test_acc", "lr"):
            assert k in r
        assert 0 <= r["domain_acc"] <= 1
    assert rows[1]["lambda"] > rows[0]["lambda"] > 0  # Ganin ramp


def test_same_seed_same_result_on_cpu(tiny_data, tmp_path):
    a = Trainer(cfg(tiny_data), tmp_path / "a", progress=False).fit()
    b = Trainer(cfg(tiny_data), tmp_path / "b", progress=False).fit()
    assert a["target_test_acc"] == b["target_test_acc"] and a["source_test_acc"] == b["source_test_acc"]
    wa = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_existing_run_needs_overwrite(tiny_data, tmp_path):
    Trainer(cfg(tiny_data, epochs=1), tmp_path / "r", progress=False).fit()
    before = (tmp_path / "r" / "summary.json").read_text()
    with pytest.raises(DalabError, match="--overwrite"):
        Trainer(cfg(tiny_data, epochs=1), tmp_path / "r", progress=False).fit()
    assert (tmp_path / "r" / "summary.json").read_text() == before


def test_divergence_is_recorded_not_crashing(tiny_data, tmp_path):
    s = Trainer(cfg(tiny_data, lr=1e6, lr_schedule="constant", epochs=2), tmp_path / "d", progress=False).fit()
    assert s["status"] == "diverged" and "too large" in s["failure"]
    saved = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert saved["status"] == "diverged" and saved["target_test_acc"] is None
    assert not (tmp_path / "d" / "model.pt").exists()


def test_ganin_lr_schedule():
    assert ganin_lr(0.01, 0.0) == 0.01
    assert abs(ganin_lr(0.01, 1.0) - 0.01 / 11 ** 0.75) < 1e-12


@pytest.mark.parametrize("bad,words", [(dict(epochs=0), "--epochs"), (dict(batch_size=-1), "--batch-size"),
                                       (dict(lambda_max=float("nan")), "--lambda-max"), (dict(lr=0.0), "--lr"),
                                       (dict(optimizer="rmsprop"), "optimizer 'rmsprop'"),
                                       (dict(precision="fp8"), "precision 'fp8'"),
                                       (dict(lambda_schedule="cosine"), "lambda schedule 'cosine'")])
def test_config_validation(tiny_data, bad, words):
    with pytest.raises(DalabError, match=words):  # refused for the value given, not for another reason
        cfg(tiny_data, **bad).validate()


def test_init_from_warm_starts(tiny_data, tmp_path):
    Trainer(cfg(tiny_data, method="source-only", epochs=4, optimizer="adam"), tmp_path / "a", progress=False).fit()
    s = Trainer(cfg(tiny_data, method="dann", epochs=1, init_from=str(tmp_path / "a" / "model.pt")),
                tmp_path / "b", progress=False).fit()
    assert s["config"]["init_from"].endswith("model.pt") and s["source_test_acc"] > 0.8


def test_weight_ema_is_evaluated_saved_and_resumed(tiny_data, tmp_path):
    from dalab.models.ema import EMA, decay_at

    # the EMA maths: warm-up decay min(d, (1 + t) / (10 + t)), buffers copied
    m = torch.nn.BatchNorm1d(2)
    ema = EMA(m, 0.9, warmup="tf")
    with torch.no_grad():
        m.weight.fill_(3.0)
        m.running_mean.fill_(5.0)
    ema.update(m)  # t = 1: d = 2 / 11
    assert torch.allclose(ema.model.weight, torch.full((2,), (2 / 11) * 1.0 + (9 / 11) * 3.0))
    assert torch.equal(ema.model.running_mean, m.running_mean)
    # the other warm-ups: DACS's plain mean until the decay, a constant decay
    assert [decay_at(0.9, t, "mean") for t in (0, 1, 3, 50)] == [0.0, 0.5, 0.75, 0.9]
    assert decay_at(0.9, 0, "constant") == 0.9 and decay_at(0.9, 10 ** 6, "tf") == 0.9
    # in a run: model.pt holds the EMA weights, not the raw ones
    t = Trainer(cfg(tiny_data, ema_decay=0.99), tmp_path / "e", progress=False)
    s = t.fit()
    saved = torch.load(tmp_path / "e" / "model.pt", weights_only=True)["state_dict"]
    raw = t.model.state_dict()
    assert any(not torch.equal(saved[k], raw[k].cpu()) for k in saved if k.endswith("weight"))
    ck = torch.load(tmp_path / "e" / "ckpt.pt", weights_only=True)
    assert "ema" in ck and ck["ema_updates"] == 2 * s["steps_per_epoch"]
    with pytest.raises(DalabError, match="ema"):
        cfg(tiny_data, ema_decay=1.0).validate()


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


def test_resume_with_more_epochs_continues_the_run_and_records_it(tiny_data, tmp_path):
    # DIRT-T at a constant learning rate depends on nothing but the epoch it is in, so a 2-epoch run
    # continued to 3 epochs is, bit for bit, the 3-epoch run
    kw = dict(method="dirt-t", optimizer="adam", lr_schedule="constant", ema_decay=0.99)
    straight = Trainer(cfg(tiny_data, epochs=3, **kw), tmp_path / "straight", progress=False).fit()
    Trainer(cfg(tiny_data, epochs=2, **kw), tmp_path / "ext", progress=False).fit()
    s = Trainer(cfg(tiny_data, epochs=3, **kw), tmp_path / "ext", progress=False, resume=True).fit()
    assert s["epochs_done"] == 3 and s["epochs_changed_from"] == [2] and "epochs_changed_from" not in straight
    assert s["target_test_acc"] == straight["target_test_acc"]
    assert _rows(tmp_path / "ext") == _rows(tmp_path / "straight")
    a = torch.load(tmp_path / "ext" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resumed once more, with nothing left to train, the record stays
    again = Trainer(cfg(tiny_data, epochs=3, **kw), tmp_path / "ext", progress=False, resume=True).fit()
    assert again["epochs_changed_from"] == [2] and again["target_test_acc"] == s["target_test_acc"]
    # a run cannot be shortened below the epochs it has, and the refusal changes nothing
    before = (tmp_path / "ext" / "summary.json").read_text()
    with pytest.raises(DalabError, match="already has 3 epochs; --epochs 2 cannot shorten it"):
        Trainer(cfg(tiny_data, epochs=2, **kw), tmp_path / "ext", progress=False, resume=True).fit()
    assert (tmp_path / "ext" / "summary.json").read_text() == before


def test_resume_without_epochs_keeps_the_checkpoints_plan(tiny_data, tmp_path):
    from dalab.cli.main import main

    args = ["train", "--method", "source-only", "--data-dir", str(tiny_data), "--out", str(tmp_path / "r"),
            "--batch-size", "32", "--limit-train", "128", "--limit-eval", "64", "--precision", "fp32", "--quiet"]
    assert main(args + ["--epochs", "2"]) == 0
    assert main(args + ["--resume"]) == 0  # not the default 10 epochs: the run stays a 2-epoch run
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["epochs"] == s["epochs_done"] == 2 and "epochs_changed_from" not in s
    # its warm start's folder moved (as when a benchmark folder is copied): on resume the weights come
    # from the checkpoint, so the other init_from path is no reason to refuse
    Trainer(cfg(tiny_data, method="dann", epochs=1), tmp_path / "w0", progress=False).fit()
    w = dict(method="dann", epochs=1, init_from=str(tmp_path / "w0" / "model.pt"))
    Trainer(cfg(tiny_data, **w), tmp_path / "w", progress=False).fit()
    (tmp_path / "w0").rename(tmp_path / "moved")
    w["init_from"], w["epochs"] = str(tmp_path / "moved" / "model.pt"), 2
    assert Trainer(cfg(tiny_data, **w), tmp_path / "w", progress=False, resume=True).fit()["status"] == "completed"


def test_nesterov_without_momentum_is_plain_sgd_not_an_error(tiny_data):
    """The photo recipe sets Nesterov momentum; ``--momentum 0`` on top of it must still train (torch's SGD
    refuses Nesterov without momentum, and the two are the same step then)."""
    cfg = TrainConfig(method="source-only", nesterov=True, momentum=0.0, batch_size=8, device="cpu")
    t = Trainer(cfg, None, progress=False)
    model = torch.nn.Linear(2, 2)
    opt = t._optimizer(model, torch.nn.Module())
    assert opt.param_groups[0]["nesterov"] is False and opt.param_groups[0]["momentum"] == 0.0
    t.cfg = TrainConfig(method="source-only", nesterov=True, momentum=0.9, batch_size=8, device="cpu")
    assert t._optimizer(model, torch.nn.Module()).param_groups[0]["nesterov"] is True
