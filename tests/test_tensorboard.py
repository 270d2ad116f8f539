"""Live logs: ``dalab train --tensorboard`` writes event files next to metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from dalab.cli.main import main
from dalab.training import tensorboard as tb


def _train_argv(tiny, out, *extra):
    return ["train", "--method", "dann", "--epochs", "2", "--batch-size", "32", "--data-dir", str(tiny),
            "--precision", "fp32", "--device", "cpu", "--quiet", "--out", str(out), *extra]


def test_scalar_tags_group_related_curves():
    assert tb.scalar_tag("task_loss") == "loss/task_loss"
    assert tb.scalar_tag("domain_acc") == "accuracy/domain_acc"
    assert tb.scalar_tag("target_test_acc") == "accuracy/target_test_acc"
    assert tb.scalar_tag("lambda") == "schedule/lambda"
    assert tb.scalar_tag("lr") == "schedule/lr"
    assert tb.scalar_tag("n_pseudo") == "other/n_pseudo"


def test_missing_tensorboard_is_a_one_line_error(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tb, "tensorboard_available", lambda: False)
    rc = main(_train_argv(tiny_data, tmp_path / "r", "--tensorboard"))
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "pip install tensorboard" in err
    assert not (tmp_path / "r" / "summary.json").exists()  # failed before training


def test_tensorboard_event_files_hold_every_metric(tiny_data, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "r"
    assert main(_train_argv(tiny_data, out, "--tensorboard")) == 0
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and (out / "metrics.jsonl").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for t in ("loss/task_loss", "loss/domain_loss", "accuracy/domain_acc", "accuracy/target_test_acc",
              "accuracy/source_val_acc", "schedule/lambda", "schedule/lr"):
        assert t in tags, f"{t} missing from {sorted(tags)}"
    for tag, key in (("schedule/lambda", "lambda"), ("accuracy/domain_acc", "domain_acc"),
                     ("loss/task_loss", "task_loss")):
        scal = acc.Scalars(tag)
        assert [s.step for s in scal] == [r["step"] for r in rows]
        assert [s.value for s in scal] == pytest.approx([r[key] for r in rows], rel=1e-5)

    # --overwrite starts the curves again instead of mixing two runs in one folder
    assert main(_train_argv(tiny_data, out, "--tensorboard", "--overwrite")) == 0
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    capsys.readouterr()


def test_without_the_flag_there_is_no_tb_folder(tiny_data, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_train_argv(tiny_data, out)) == 0
    assert not (out / "tb").exists()
    capsys.readouterr()
