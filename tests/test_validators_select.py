"""Validators on hand-made tensors; `dalab select` and `dalab benchmark` on the tiny fixture."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dalab.errors import DalabError
from dalab.data.io import sha256_file
from dalab.cli.main import main
from dalab.evaluation.benchmark import aggregate, format_table, run_benchmark
from dalab.evaluation.selection import (config_of, config_warnings, group_by_config, judge, judge_configs,
                                        rank_correlation, select_runs)
from dalab.evaluation.validators import (VALIDATORS, bnm, compute_validators, dev_risk, importance_weights,
                                         info_max, reverse_validation, snd, source_accuracy, target_entropy)


def test_entropy_infomax_bnm_on_hand_made_logits():
    confident = 50 * torch.eye(4)                 # 4 samples, 4 classes, one each, certain
    uniform = torch.zeros(4, 4)
    collapsed = 50 * torch.eye(4)[[0, 0, 0, 0]]   # certain but all one class
    assert abs(target_entropy(confident)) < 1e-6
    assert math.isclose(target_entropy(uniform), -math.log(4), rel_tol=1e-6)
    assert math.isclose(info_max(confident), math.log(4), rel_tol=1e-5)   # H(mean) = log 4, H = 0
    assert abs(info_max(uniform)) < 1e-6 and abs(info_max(collapsed)) < 1e-5
    assert math.isclose(bnm(confident), 1.0, rel_tol=1e-5)   # identity: nuclear norm 4 / N 4
    assert math.isclose(bnm(collapsed), 0.5, rel_tol=1e-5)   # rank one: sqrt(4) / 4
    assert math.isclose(bnm(uniform), 0.25, rel_tol=1e-5)    # J/4: one singular value 1, / N 4
    assert source_accuracy(confident, torch.tensor([0, 1, 2, 0])) == 0.75


def test_snd_prefers_clustered_predictions():
    torch.manual_seed(0)
    # SND is the mean entropy of soft neighbourhoods: in tight clusters each point has many equally
    # close neighbours (high entropy, good); scattered predictions have one nearest neighbour (low).
    clustered = torch.cat([torch.tensor([[8.0, 0.0, 0.0]]).repeat(10, 1),
                           torch.tensor([[0.0, 8.0, 0.0]]).repeat(10, 1)]) + 0.01 * torch.randn(20, 3)
    isolated = torch.randn(20, 3) * 8
    assert snd(clustered) > snd(isolated)
    # 10 identical points in each of two clusters: the soft neighbourhood is uniform on the 9 others
    exact = torch.cat([torch.tensor([[8.0, 0.0, 0.0]]).repeat(10, 1), torch.tensor([[0.0, 8.0, 0.0]]).repeat(10, 1)])
    assert math.isclose(snd(exact), math.log(9), rel_tol=1e-3)


def test_dev_risk_control_variate():
    losses = np.array([1.0, 2.0, 3.0, 4.0])
    # constant weights: no variance -> plain weighted mean
    assert math.isclose(dev_risk(losses, np.ones(4)), 2.5)
    w = np.array([0.5, 1.0, 1.0, 1.5])
    wl = w * losses
    eta = -np.cov(wl, w, ddof=1)[0, 1] / w.var(ddof=1)
    assert math.isclose(dev_risk(losses, w), wl.mean() + eta * w.mean() - eta)
    # mean weight exactly 1 -> the control variate term vanishes
    assert math.isclose(dev_risk(losses, w), wl.mean())


def test_importance_weights_follow_the_density_ratio():
    rng = np.random.default_rng(0)
    fs = torch.tensor(rng.normal(0, 1, (400, 2)), dtype=torch.float32)
    ft = torch.tensor(rng.normal(1.5, 1, (400, 2)), dtype=torch.float32)
    probe = torch.tensor([[-1.5, -1.5], [3.0, 3.0]])
    w = importance_weights(fs, ft, probe)
    assert w[0] < 0.2 < 5 < w[1]


def test_reverse_validation_rewards_consistent_pseudo_labels():
    rng = np.random.default_rng(0)
    centers = np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, 0.0]])
    ys = rng.integers(0, 3, 300)
    fsv = torch.tensor(centers[ys] + rng.normal(0, 0.5, (300, 2)), dtype=torch.float32)
    yt = rng.integers(0, 3, 300)
    ft = torch.tensor(centers[yt] + rng.normal(0, 0.5, (300, 2)), dtype=torch.float32)
    good = torch.nn.functional.one_hot(torch.tensor(yt), 3).float() * 5
    bad = torch.nn.functional.one_hot(torch.tensor(rng.integers(0, 3, 300)), 3).float() * 5
    assert reverse_validation(ft, good, fsv, torch.tensor(ys)) > 0.95
    assert reverse_validation(ft, bad, fsv, torch.tensor(ys)) < 0.6
    one_class = torch.zeros(300, 3); one_class[:, 1] = 5
    assert reverse_validation(ft, one_class, fsv, torch.tensor(ys)) == pytest.approx((ys == 1).mean())


def test_compute_validators_all_names():
    torch.manual_seed(0)
    lt, ft = torch.randn(60, 10), torch.randn(60, 16)
    lsv, fsv, ysv, fs = torch.randn(40, 10), torch.randn(40, 16), torch.randint(0, 10, (40,)), torch.randn(50, 16)
    out = compute_validators(VALIDATORS, logits_t=lt, feats_t=ft, logits_sv=lsv, y_sv=ysv, feats_sv=fsv, feats_s=fs,
                             logits_t_raw=lt + 0.1 * torch.randn(60, 10), logits_t_flip=lt.flip(0))
    assert set(out) == set(VALIDATORS) and all(math.isfinite(v) for v in out.values())
    # a validator whose input is missing (e.g. no source val split) is nan, not an error
    assert math.isnan(compute_validators(["dev", "teacher-agreement"], logits_t=lt)["dev"])
    with pytest.raises(ValueError, match="unknown validator 'oracle'"):
        compute_validators(["oracle"], logits_t=lt)


def test_judge_and_rank_correlation():
    rows = [{"run": "a", "scores": {"v": 1.0}, "target_test_acc": 0.5},
            {"run": "b", "scores": {"v": 2.0}, "target_test_acc": 0.7},
            {"run": "c", "scores": {"v": 3.0}, "target_test_acc": 0.6}]
    j = judge(rows, ["v"])["v"]
    assert j["choice"] == "c" and j["choice_target_acc"] == 0.6 and j["oracle_target_acc"] == 0.7
    assert math.isclose(j["spearman"], 0.5)
    assert math.isnan(rank_correlation([1, 2], [1, 2]))


def test_select_and_benchmark_on_the_tiny_fixture(tiny_data, tmp_path, capsys):
    out = tmp_path / "bench"
    common = dict(seeds=2, epochs=1, limit_train=128, limit_eval=128, data_dir=str(tiny_data),
                  precision="fp32", progress=False, log=lambda *_: None)
    res = run_benchmark("digits-mnistm", out=out, methods=["source-only", "vada", "dirt-t"], **common)
    assert [r["method"] for r in res["rows"]] == ["source-only", "vada", "dirt-t"]
    assert all(r["runs_ok"] == 2 for r in res["rows"])
    cfg = json.loads((out / "dirt-t" / "seed1" / "summary.json").read_text())["config"]
    assert cfg["init_from"].endswith("vada/seed1/model.pt") and cfg["input_norm"] == "instance"
    table = (out / "benchmark.md").read_text()
    assert "| vada |" in table and "last epoch" in table and "±" in table
    # a second call reuses every run
    before = (out / "vada" / "seed0" / "summary.json").stat().st_mtime_ns
    res2 = run_benchmark("digits-mnistm", out=out, methods=["source-only", "vada", "dirt-t"], **common)
    assert (out / "vada" / "seed0" / "summary.json").stat().st_mtime_ns == before
    assert res2["rows"][1]["target_acc_mean"] == res["rows"][1]["target_acc_mean"]

    sel = select_runs(out, ["snd", "source-acc", "dev", "reverse"], data_dir=str(tiny_data), limit=128)
    assert len(sel["rows"]) == 6
    scores = [r["scores"]["snd"] for r in sel["rows"]]
    assert scores == sorted(scores, reverse=True)
    assert set(sel["report"]) == {"snd", "source-acc", "dev", "reverse"}
    for j in sel["report"].values():
        assert j["choice"] is not None and j["oracle_target_acc"] >= j["choice_target_acc"]

    assert main(["select", str(out), "--validator", "bnm,entropy", "--data-dir", str(tiny_data),
                 "--limit", "128", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["ranked_by"] == "bnm" and len(got["rows"]) == 6
    assert main(["select", str(out), "--validator", "info-max", "--data-dir", str(tiny_data), "--limit", "64"]) == 0
    assert "Spearman" in capsys.readouterr().out
    assert main(["select", str(out), "--validator", "bnm,entropy", "--by-config", "--data-dir", str(tiny_data),
                 "--limit", "64", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert sorted(Path(g["config"]).name for g in got["configs"]) == ["dirt-t", "source-only", "vada"]
    assert all(g["runs"] == 2 and g["seeds"] == [0, 1] for g in got["configs"])
    assert got["config_report"]["bnm"]["choice"] == got["configs"][0]["config"]
    assert main(["select", str(out), "--validator", "bnm", "--by-config", "--data-dir", str(tiny_data),
                 "--limit", "64"]) == 0
    assert "configurations ranked by mean bnm" in capsys.readouterr().out
    assert main(["select", str(out), "--validator", "oracle", "--data-dir", str(tiny_data)]) == 2
    assert "unknown validator" in capsys.readouterr().err


def test_benchmark_cli_records_failures_and_goes_on(tiny_data, tmp_path, capsys):
    out = tmp_path / "b"
    # dirt-t without its vada parent fails; source-only still runs and the table lists the failure
    assert main(["benchmark", "--out", str(out), "--seeds", "1", "--methods", "source-only,dirt-t",
                 "--epochs", "1", "--limit-train", "128", "--limit-eval", "64", "--precision", "fp32",
                 "--data-dir", str(tiny_data), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| source-only |" in text and "| dirt-t | n/a | n/a | 0/1 |" in text and "needs a finished vada" in text
    assert main(["benchmark", "--out", str(out), "--methods", "nope"]) == 2


def test_aggregate_mean_std():
    runs = {"m": [{"status": "completed", "source_test_acc": 0.9, "target_test_acc": 0.8, "train_seconds": 1.0},
                  {"status": "completed", "source_test_acc": 0.9, "target_test_acc": 0.6, "train_seconds": 3.0},
                  {"status": "diverged", "seed": 2, "failure": "nan", "source_test_acc": None,
                   "target_test_acc": None}]}
    (r,) = aggregate(runs, 3)
    assert math.isclose(r["target_acc_mean"], 0.7) and math.isclose(r["target_acc_std"], math.sqrt(0.02))
    assert r["runs_ok"] == 2 and r["runs"] == 3 and "diverged" in r["failures"][0]
    assert "70.00 ± 14.14" in format_table([r], "digits-mnistm")


def test_benchmark_jobs_runs_each_run_once_in_parallel(tiny_data, tmp_path):
    """--jobs 2: every run trains once in a worker process; the in-process pass only collects."""
    from dalab.evaluation.benchmark import run_benchmark

    lines = []
    res = run_benchmark("digits-mnistm", 1, tmp_path / "b", methods=["source-only", "dann"], epochs=1,
                        limit_train=256, limit_eval=128, data_dir=str(tiny_data), precision="fp32",
                        device="cpu", progress=False, log=lines.append, jobs=2)
    assert {r["method"] for r in res["rows"]} == {"source-only", "dann"}
    assert all(r["runs_ok"] == 1 for r in res["rows"])
    for m in ("source-only", "dann"):
        assert (tmp_path / "b" / m / "seed0" / "worker.log").is_file()  # trained by a pool worker
    assert not any("(reused)" in l for l in lines)


def test_pair_suite_table_and_pair_selection(tiny_data, tmp_path, capsys):
    out = tmp_path / "pairs"
    args = ["benchmark", "--suite", "digits-pairs", "--pairs", "mnist:mnistm,mnistm:mnist",
            "--methods", "source-only,dann", "--seeds", "1", "--epochs", "1", "--limit-train", "128",
            "--limit-eval", "64", "--precision", "fp32", "--data-dir", str(tiny_data), "--quiet", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| source -> target | source-only | dann |" in text
    assert "| mnist -> mnistm |" in text and "| mnistm -> mnist |" in text
    s = json.loads((out / "mnistm-to-mnist" / "dann" / "seed0" / "summary.json").read_text())
    assert (s["source"], s["target"]) == ("mnistm", "mnist")
    rows = json.loads((out / "benchmark.json").read_text())["rows"]
    assert {(r["source"], r["target"], r["method"]) for r in rows} == {
        ("mnist", "mnistm", "source-only"), ("mnist", "mnistm", "dann"),
        ("mnistm", "mnist", "source-only"), ("mnistm", "mnist", "dann")}
    assert main(args[:3] + ["--pairs", "mnist:usps", "--out", str(out)]) == 2
    assert "not in suite digits-pairs" in capsys.readouterr().err
    assert main(args[:3] + ["--pairs", "mnist", "--out", str(out)]) == 2
    assert "SOURCE:TARGET" in capsys.readouterr().err


def test_benchmark_refuses_to_reuse_a_run_made_with_other_settings(tiny_data, tmp_path):
    common = dict(seeds=1, epochs=1, limit_train=128, limit_eval=64, data_dir=str(tiny_data),
                  precision="fp32", progress=False, log=lambda *_: None, methods=["source-only"])
    run_benchmark("digits-mnistm", out=tmp_path, **common)
    summ = tmp_path / "source-only" / "seed0" / "summary.json"
    s = json.loads(summ.read_text())
    del s["config"]["bn_stats"]  # as written by dalab 0.1, whose batch norm shared its statistics
    summ.write_text(json.dumps(s))
    (r,) = run_benchmark("digits-mnistm", out=tmp_path, **common)["rows"]
    assert r["runs_ok"] == 0 and "other settings (bn_stats: 'shared' != 'domain')" in r["failures"][0]
    for jobs in (1, 2):  # the parallel path does not reuse it either
        (r,) = run_benchmark("digits-mnistm", out=tmp_path, jobs=jobs, **common)["rows"]
        assert r["runs_ok"] == 0


def test_benchmark_continues_a_finished_run_asked_for_more_epochs(tiny_data, tmp_path, capsys):
    common = dict(seeds=1, limit_train=128, limit_eval=64, data_dir=str(tiny_data), precision="fp32",
                  progress=False, log=lambda *_: None, methods=["source-only", "dann"])
    run_benchmark("digits-mnistm", out=tmp_path, epochs=1, **common)
    src, dann = tmp_path / "source-only" / "seed0", tmp_path / "dann" / "seed0"
    first = (src / "metrics.jsonl").read_text().splitlines()
    dann_summary = (dann / "summary.json").read_text()
    res = run_benchmark("digits-mnistm", out=tmp_path, epochs=1, epochs_for={"source-only": 2}, **common)
    s = json.loads((src / "summary.json").read_text())
    assert s["epochs_done"] == 2 and s["epochs_changed_from"] == [1]
    rows = (src / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and rows[0] == first[0]  # continued, not restarted
    assert (dann / "summary.json").read_text() == dann_summary  # the other entry is reused untouched
    assert [r["epochs"] for r in res["rows"]] == [[2], [1]]
    assert "| source-only |" in res["table"] and "| 1/1 | 2 | last epoch |" in res["table"]
    assert "Runs with a caveat:\n- source-only, seed 0: trained to 2 epochs after a plan of 1;" in res["table"]
    assert json.loads((tmp_path / "benchmark.json").read_text())["epochs_for"] == {"source-only": 2}
    # asked for fewer epochs than a run has: refused as another setting, never cut or overwritten
    (r, _) = run_benchmark("digits-mnistm", out=tmp_path, epochs=1, **common)["rows"]
    assert r["runs_ok"] == 0 and "epochs: 2 != 1" in r["failures"][0]
    assert json.loads((src / "summary.json").read_text())["epochs_done"] == 2
    with pytest.raises(DalabError, match="'vada' is not among the methods run"):
        run_benchmark("digits-mnistm", out=tmp_path, epochs=1, epochs_for={"vada": 2}, **common)
    args = ["benchmark", "--suite", "digits-mnistm", "--out", str(tmp_path), "--data-dir", str(tiny_data)]
    for bad in ("source-only", "source-only=0", "=3", "source-only=x", "source-only=\u00b2"):
        assert main(args + ["--epochs-for", bad]) == 2
        assert "METHOD=N" in capsys.readouterr().err
    assert main(args + ["--epochs-for", "dann=2", "--epochs-for", "dann=3"]) == 2
    assert "'dann' is given twice" in capsys.readouterr().err


def test_benchmark_refuses_a_warm_started_run_whose_parent_changed(tiny_data, tmp_path):
    """dann-pl starts from dann's model.pt: once dann is trained for longer, the old dann-pl no longer follows."""
    common = dict(seeds=1, limit_train=128, limit_eval=64, data_dir=str(tiny_data), precision="fp32",
                  progress=False, log=lambda *_: None, methods=["dann", "dann-pl"])
    run_benchmark("digits-mnistm", out=tmp_path, epochs=1, **common)
    dann, pl = tmp_path / "dann" / "seed0", tmp_path / "dann-pl" / "seed0"
    s = json.loads((pl / "summary.json").read_text())
    assert s["init_from_sha256"] == sha256_file(dann / "model.pt")  # recorded by the trainer
    before = (pl / "summary.json").read_text()
    assert [r["runs_ok"] for r in run_benchmark("digits-mnistm", out=tmp_path, epochs=1, **common)["rows"]] == [1, 1]
    rows = run_benchmark("digits-mnistm", out=tmp_path, epochs=1, epochs_for={"dann": 2}, **common)["rows"]
    assert [r["runs_ok"] for r in rows] == [1, 0]  # dann continued to 2 epochs; the old dann-pl refused
    assert "started from an earlier version of" in rows[1]["failures"][0] and "move it away" in rows[1]["failures"][0]
    assert (pl / "summary.json").read_text() == before  # left as it was
    # recorded as null (resumed from a checkpoint of dalab < 0.6.0) or not at all (a run of dalab < 0.6.0):
    # refused, since its parent was trained for longer at some point and it cannot show which version it saw
    for legacy in ({**s, "init_from_sha256": None}, {k: v for k, v in s.items() if k != "init_from_sha256"}):
        (pl / "summary.json").write_text(json.dumps(legacy))
        for jobs in (1, 2):
            rows = run_benchmark("digits-mnistm", out=tmp_path, epochs=1, epochs_for={"dann": 2}, jobs=jobs,
                                 **common)["rows"]
            assert [r["runs_ok"] for r in rows] == [1, 0]
            assert "cannot show that it started from the current" in rows[1]["failures"][0]
    # ... but reused when its parent was never continued
    d = json.loads((dann / "summary.json").read_text())
    del d["epochs_changed_from"]
    (dann / "summary.json").write_text(json.dumps(d))
    rows = run_benchmark("digits-mnistm", out=tmp_path, epochs=1, epochs_for={"dann": 2}, **common)["rows"]
    assert [r["runs_ok"] for r in rows] == [1, 1]
    # a parent that is gone cannot vouch for the child: reported, not reused, and the child is left alone
    child = (pl / "summary.json").read_text()
    (dann / "model.pt").unlink()
    rows = run_benchmark("digits-mnistm", out=tmp_path, epochs=1, methods=["dann-pl"],
                         **{k: v for k, v in common.items() if k != "methods"})["rows"]
    assert rows[0]["runs_ok"] == 0 and "needs a finished dann run for seed 0" in rows[0]["failures"][0]
    assert (pl / "summary.json").read_text() == child


def test_benchmark_does_not_continue_a_warm_started_run_whose_parent_changed(tiny_data, tmp_path):
    """Asked for more epochs of both, in parallel: the parent is continued first, and the child, finished or
    cut (a ckpt.pt only), is not continued from the old parent's weights; its files stay as they were."""
    common = dict(seeds=1, limit_train=128, limit_eval=64, data_dir=str(tiny_data), precision="fp32",
                  progress=False, log=lambda *_: None, methods=["dann", "dann-pl"], jobs=2)
    run_benchmark("digits-mnistm", out=tmp_path, epochs=1, **common)
    pl = tmp_path / "dann-pl" / "seed0"
    files = {f: (pl / f).read_bytes() for f in ("summary.json", "ckpt.pt")}
    rows = run_benchmark("digits-mnistm", out=tmp_path, epochs=1, epochs_for={"dann": 2, "dann-pl": 2},
                         **common)["rows"]
    assert [r["runs_ok"] for r in rows] == [1, 0] and "earlier version" in rows[1]["failures"][0]
    assert {f: (pl / f).read_bytes() for f in files} == files
    for f in ("summary.json", "model.pt"):  # as if cut before its end: only the checkpoint is left
        (pl / f).unlink()
    for jobs in (1, 2):
        rows = run_benchmark("digits-mnistm", out=tmp_path, epochs=1, **{**common, "jobs": jobs})["rows"]
        assert rows[1]["runs_ok"] == 0 and "earlier version" in rows[1]["failures"][0]
        assert (pl / "ckpt.pt").read_bytes() == files["ckpt.pt"] and not (pl / "summary.json").exists()


def test_a_resumed_warm_start_keeps_the_sha256_of_the_weights_it_started_from(tiny_data, tmp_path):
    from dalab.training import Trainer, TrainConfig

    base = dict(epochs=1, batch_size=16, limit_train=64, limit_eval=32, data_dir=str(tiny_data),
                precision="fp32", device="cpu")
    Trainer(TrainConfig(method="source-only", **base), tmp_path / "parent", progress=False).fit()
    parent = tmp_path / "parent" / "model.pt"
    first = sha256_file(parent)
    child_cfg = TrainConfig(method="dann", init_from=str(parent), **base)
    Trainer(child_cfg, tmp_path / "child", progress=False).fit()
    assert json.loads((tmp_path / "child" / "summary.json").read_text())["init_from_sha256"] == first
    Trainer(TrainConfig(method="source-only", **{**base, "epochs": 2}), tmp_path / "parent", progress=False,
            resume=True).fit()
    assert sha256_file(parent) != first  # the parent moved on
    Trainer(TrainConfig(method="dann", init_from=str(parent), **{**base, "epochs": 2}), tmp_path / "child",
            progress=False, resume=True).fit()
    # the continued child's weights still descend from the first parent: that is what it records
    assert json.loads((tmp_path / "child" / "summary.json").read_text())["init_from_sha256"] == first
    assert json.loads((tmp_path / "child" / "summary.json").read_text())["epochs_done"] == 2


class _Killed(BaseException):
    pass


def test_benchmark_continuation_killed_half_way_is_not_taken_for_finished(tiny_data, tmp_path, monkeypatch):
    from dalab.training import Trainer

    common = dict(seeds=1, limit_train=128, limit_eval=64, data_dir=str(tiny_data), precision="fp32",
                  progress=False, log=lambda *_: None, methods=["source-only"])
    run_benchmark("digits-mnistm", out=tmp_path, epochs=1, **common)
    run = tmp_path / "source-only" / "seed0"

    def killed(*a, **k):
        raise _Killed

    with monkeypatch.context() as m:  # the process dies before the continuation's first checkpoint
        m.setattr(Trainer, "_checkpoint_state", killed)
        with pytest.raises(_Killed):
            run_benchmark("digits-mnistm", out=tmp_path, epochs=1, epochs_for={"source-only": 2}, **common)
    assert not (run / "summary.json").exists() and not (run / "model.pt").exists()
    assert (run / "ckpt.pt").is_file()  # the 1-epoch state, from which the next call goes on
    (r,) = run_benchmark("digits-mnistm", out=tmp_path, epochs=1, **common)["rows"]  # not reused as 1 epoch
    assert r["runs_ok"] == 1 and r["epochs"] == [1]  # the checkpoint's own plan, 1 epoch, completed again
    # the parallel path continues finished runs as well
    (r,) = run_benchmark("digits-mnistm", out=tmp_path, epochs=3, jobs=2, **common)["rows"]
    s = json.loads((run / "summary.json").read_text())
    assert r["runs_ok"] == 1 and s["epochs_done"] == 3 and s["epochs_changed_from"] == [1]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_configurations_are_chosen_by_their_mean_score_over_seeds():
    """A lucky seed does not win: config b has the best single run but the lower mean."""
    def row(run, score, acc, seed, target="mnistm"):
        return {"run": run, "scores": {"v": score}, "target_test_acc": acc, "seed": seed, "source": "mnist",
                "target": target}

    rows = [row("s/a/seed0", 0.5, 0.90, 0), row("s/a/seed1", 0.5, 0.92, 1),
            row("s/b/seed0", 0.9, 0.95, 0), row("s/b/seed1", 0.0, 0.50, 1),
            row("s/c/seed0", 0.1, 0.60, 0), row("s/c/seed1", float("nan"), 0.99, 1),
            row("s/one", 0.2, 0.70, None)]
    groups = {g["config"]: g for g in group_by_config(rows, ["v"])}
    assert set(groups) == {"s/a", "s/b", "s/c", "s/one"}
    assert groups["s/a"]["runs"] == 2 and groups["s/a"]["seeds"] == [0, 1]
    assert math.isclose(groups["s/a"]["scores"]["v"], 0.5) and math.isclose(groups["s/a"]["target_test_acc"], 0.91)
    assert math.isnan(groups["s/c"]["scores"]["v"])  # a broken seed is not averaged away
    assert groups["s/one"]["runs"] == 1 and groups["s/one"]["seeds"] == []
    j = judge_configs(list(groups.values()), ["v"])["v"]
    assert j["choice"] == "s/a" and math.isclose(j["choice_target_acc"], 0.91)
    assert math.isclose(j["oracle_target_acc"], 0.91)  # the best mean over seeds, not b's lucky 0.95
    assert config_of("x/seed12") == "x" and config_of("x/seedling") == "x/seedling"
    warn = config_warnings(list(groups.values()))
    assert len(warn) == 1 and "different seeds" in warn[0] and "one: 1 runs" in warn[0]
    same = group_by_config(rows[:4], ["v"])
    assert config_warnings(same) == []
    # a seed whose accuracy is not finite makes the judging column n/a, as a broken score does
    broken = group_by_config([row("s/d/seed0", 0.3, 0.9, 0), row("s/d/seed1", 0.3, float("nan"), 1)], ["v"])
    assert broken[0]["target_test_acc"] is None
    pairs = group_by_config([row("p/e/seed0", 0.1, 0.5, 0), row("q/e/seed0", 0.1, 0.5, 0, target="syndigits")], ["v"])
    assert any("2 domain pairs" in w for w in config_warnings(pairs))
    assert config_of("x/seed\u0663") == "x/seed\u0663"  # non-ASCII digits are not a seed folder


def test_benchmark_table_says_which_row_used_target_labels():
    def run(method, seed, acc):
        return {"method": method, "seed": seed, "status": "completed", "source_test_acc": 0.99,
                "target_test_acc": acc, "train_seconds": 1.0, "epochs_done": 10}

    rows = aggregate({"dann": [run("dann", 0, 0.8)], "target-only (oracle)": [run("target-only", 0, 0.97)]}, 1)
    assert [r.get("uses_target_labels", False) for r in rows] == [False, True]
    table = format_table(rows, "digits-mnistm")
    assert "no target label used for training, tuning or model choice, except target-only (oracle), trained " \
           "on the target labels" in table
    assert "except" not in format_table(rows[:1], "digits-mnistm")  # no oracle row, no exception to state


def test_select_never_offers_a_model_trained_on_target_labels(tiny_data, tmp_path, capsys):
    out = tmp_path / "bench"
    run_benchmark("digits-mnistm", out=out, methods=["source-only", "target-only (oracle)"], seeds=1, epochs=1,
                  limit_train=128, limit_eval=64, data_dir=str(tiny_data), precision="fp32", progress=False,
                  log=lambda *_: None)
    sel = select_runs(out, ["bnm"], data_dir=str(tiny_data), limit=64)
    assert [Path(r["run"]).parent.name for r in sel["rows"]] == ["source-only"]
    assert sel["skipped_target_label_runs"] == [str(out / "target-only-oracle" / "seed0")]
    assert main(["select", str(out), "--validator", "bnm", "--data-dir", str(tiny_data), "--limit", "64"]) == 0
    assert "not candidates: 1 run trained on target labels (oracle)" in capsys.readouterr().out
    assert main(["select", str(out), "--validator", "bnm", "--by-config", "--data-dir", str(tiny_data),
                 "--limit", "64", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["skipped_target_label_runs"] == [str(out / "target-only-oracle" / "seed0")]
    assert [Path(g["config"]).name for g in got["configs"]] == ["source-only"]
    assert main(["select", str(out / "target-only-oracle"), "--validator", "bnm", "--data-dir", str(tiny_data)]) == 2
    assert "trained on target labels" in capsys.readouterr().err
    # a model warm-started from the oracle's weights inherits them: not a candidate either
    from dalab.training import Trainer, TrainConfig

    Trainer(TrainConfig(method="source-only", init_from=str(out / "target-only-oracle" / "seed0" / "model.pt"),
                        epochs=1, batch_size=16, limit_train=64, limit_eval=32, data_dir=str(tiny_data),
                        precision="fp32", device="cpu"), out / "from-oracle" / "seed0", progress=False).fit()
    sel = select_runs(out, ["bnm"], data_dir=str(tiny_data), limit=64)
    assert [Path(r["run"]).parent.name for r in sel["rows"]] == ["source-only"]
    assert sorted(sel["skipped_target_label_runs"]) == [str(out / "from-oracle" / "seed0"),
                                                       str(out / "target-only-oracle" / "seed0")]


def test_a_warm_start_replaced_while_it_is_read_is_refused(tiny_data, tmp_path, monkeypatch):
    """The sha256 recorded must be that of the weights loaded: a file swapped during the load stops the run."""
    from dalab.training import Trainer, TrainConfig
    from dalab.training import checkpoint

    base = dict(epochs=1, batch_size=16, limit_train=64, limit_eval=32, data_dir=str(tiny_data),
                precision="fp32", device="cpu")
    Trainer(TrainConfig(method="source-only", **base), tmp_path / "parent", progress=False).fit()
    parent = tmp_path / "parent" / "model.pt"
    real = checkpoint.load_model

    def load_then_swap(path, device):
        out = real(path, device)
        parent.write_bytes(parent.read_bytes() + b"\0")  # another process replaced it meanwhile
        return out

    monkeypatch.setattr(checkpoint, "load_model", load_then_swap)
    with pytest.raises(DalabError, match="changed while it was read"):
        Trainer(TrainConfig(method="dann", init_from=str(parent), **base), tmp_path / "child", progress=False).fit()
    assert not (tmp_path / "child" / "summary.json").exists()


def test_benchmark_table_gap_closed_and_per_class_means():
    from dalab.evaluation.benchmark import gap_closed

    def run(method, seed, miou, per_class):
        return {"method": method, "seed": seed, "status": "completed", "metric": "miou", "source_test_miou": 0.7,
                "target_test_miou": miou, "target_test_per_class_iou": per_class, "train_seconds": 1.0,
                "epochs_done": 3}

    rows = aggregate({
        "source-only": [run("source-only", 0, 0.30, {"sky": 0.5, "road": 0.2, "bus": None}),
                        run("source-only", 1, 0.40, {"sky": 0.7, "road": 0.4, "bus": None})],
        "dacs": [run("dacs", 0, 0.50, {"sky": 0.9, "road": 0.6, "bus": None})],
        "target-only (oracle)": [run("target-only", 0, 0.75, {"sky": 1.0, "road": 0.9, "bus": 0.5})]}, 2)
    so = rows[0]
    assert so["target_per_class_mean"] == pytest.approx({"sky": 0.6, "road": 0.3})  # None (absent) left out
    g = gap_closed(rows)
    # source-only mean 0.35, oracle 0.75: dacs closes (0.50 - 0.35) / 0.40
    oracle = "target-only (oracle)"
    assert g == {oracle: pytest.approx({"source-only": 0.0, "dacs": 0.375, oracle: 1.0})}
    table = format_table(rows, "scenes")
    assert "| dacs | 70.00 ± 0.00 | 50.00 ± 0.00 | 38 % | 1/1 |" in table
    assert "| method | road | sky | bus |" in table  # Cityscapes' train-id order
    assert "| source-only | 30.0 | 60.0 | n/a |" in table
    assert gap_closed(rows[:2]) == {} and "gap closed" not in format_table(rows[:2], "scenes")
    # two oracles (e.g. with and without warm-up): the share against each, a column each
    rows2 = aggregate({**{r["method"]: [] for r in rows},
                       "source-only": [run("source-only", 0, 0.30, {}), run("source-only", 1, 0.40, {})],
                       "dacs": [run("dacs", 0, 0.50, {})], oracle: [run("target-only", 0, 0.75, {})],
                       "target-only (oracle, warm-up)": [run("target-only", 0, 0.65, {})]}, 2)
    g2 = gap_closed(rows2)
    assert g2[oracle]["dacs"] == pytest.approx(0.375) and g2["target-only (oracle, warm-up)"]["dacs"] == pytest.approx(0.5)
    assert "gap closed vs target-only (oracle, warm-up)" in format_table(rows2, "scenes-recipe")
