"""`dalab study`: pseudo-labelling, analyses, the answer writer and the whole pipeline (tiny data)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from dalab.evaluation.domain_shift import proxy_a_distance, tsne_2d
from dalab.evaluation.pseudo_labels import pseudo_label_curve, pseudo_label_quality
from dalab.experiments.study import PRESETS, Study, plan
from dalab.methods import METHODS, make_method
from dalab.methods.pseudo_label import select_pseudo_labels
from dalab.reports.study_report import build_report, summarize, write_answers
from dalab.training import TrainConfig, Trainer

torch.set_num_threads(1)  # the CPU is shared: one thread is far faster under contention


# ---------------------------------------------------------------- pseudo-labelling
def test_selection_by_threshold_and_class_balanced():
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9], [0.45, 0.55]])
    labels, keep = select_pseudo_labels(probs, threshold=0.8)
    assert labels.tolist() == [0, 0, 1, 1, 1] and keep.tolist() == [True, False, False, True, False]
    labels, keep = select_pseudo_labels(probs, class_balanced=True, fraction=0.5)
    # class 0: 2 predicted -> keep 1 (the 0.95); class 1: 3 predicted -> keep 2 (0.9, 0.7)
    assert keep.tolist() == [True, False, True, True, False]


def test_pseudo_label_methods_registered():
    assert {"pseudo-label", "dann-pl"} <= set(METHODS)
    m = make_method("dann-pl", threshold=0.7, lambda_max=0.5)
    assert m.threshold == 0.7 and m.lambda_max == 0.5 and not m.uses_target_labels


def test_pseudo_label_trains_from_teacher_records_coverage_and_resumes(tiny_data, tmp_path):
    base = dict(epochs=2, batch_size=32, data_dir=str(tiny_data), precision="fp32", optimizer="adam", seed=1)
    Trainer(TrainConfig(method="source-only", **base), tmp_path / "t", progress=False).fit()
    # the tiny teacher is unsure on the target (top probability ~0.15), so a confidence threshold would
    # keep nothing: the class-balanced selection keeps the surest half of each predicted class
    cfg = TrainConfig(method="pseudo-label", init_from=str(tmp_path / "t" / "model.pt"),
                      method_args={"class_balanced": True, "fraction": 0.5}, **base)
    s = Trainer(cfg, tmp_path / "pl", progress=False).fit()
    assert s["status"] == "completed" and s["method_params"]["fraction"] == 0.5
    rows = [json.loads(x) for x in (tmp_path / "pl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["pl_round"] for r in rows] == [1, 2]
    assert all(0.3 < r["pl_coverage"] < 0.7 and r["pl_loss"] > 0 for r in rows), rows  # the term is trained
    state = torch.load(tmp_path / "pl" / "ckpt.pt", weights_only=True)["method"]
    assert len(state["pl_labels"]) == s["n_target_train"]
    # resume: a fresh method (empty buffers) adopts the saved pseudo-labels of another length
    cfg3 = TrainConfig(**{**cfg.to_dict(), "epochs": 3})
    s3 = Trainer(cfg3, tmp_path / "pl", progress=False, resume=True).fit()
    assert s3["epochs_done"] == 3
    # the coverage recorded for the last round is that of the pseudo-labels saved with the run
    mask, labels = state["pl_mask"].numpy(), state["pl_labels"].numpy()
    assert rows[-1]["pl_coverage"] == pytest.approx(mask.mean())
    q = pseudo_label_quality(labels, mask, np.zeros(len(labels), int))
    assert q["coverage"] == pytest.approx(mask.mean()) and q["kept"] == int(mask.sum()) > 0
    assert q["accuracy"] == pytest.approx((labels[mask] == 0).mean())


def test_pseudo_label_loss_never_reads_target_labels(tiny_data):
    from dalab.methods import Batch
    from dalab.models import DANNNet

    model, m = DANNNet(), make_method("pseudo-label", threshold=0.0)
    xt = torch.randint(0, 255, (16, 3, 28, 28), dtype=torch.uint8)
    m.on_epoch_start(model, 0, xt)
    assert m.pl_mask.all()
    b = Batch(xs=xt[:4], ys=torch.zeros(4, dtype=torch.long), xt=xt[:4], yt=None, idx_t=torch.arange(4))
    loss, logs = m.loss(model, b)
    assert torch.isfinite(loss) and "pl_loss" in logs


# ---------------------------------------------------------------- analyses
def test_proxy_a_distance_extremes():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5))
    assert proxy_a_distance(a, a + 10.0)["pad"] > 1.9
    assert abs(proxy_a_distance(a[:200], a[200:])["pad"]) < 0.6


def test_pseudo_label_curve_and_tsne():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    c = pseudo_label_curve(probs, np.array([0, 1, 1]), [0.5, 0.75, 0.99])
    assert [x["coverage"] for x in c] == pytest.approx([1.0, 2 / 3, 0.0])
    assert c[0]["accuracy"] == pytest.approx(2 / 3) and c[1]["accuracy"] == 1.0 and c[2]["accuracy"] is None
    assert tsne_2d(np.random.default_rng(0).normal(size=(40, 60))).shape == (40, 2)


def test_plan_dedups_shared_runs_and_encodes_config():
    specs = plan(PRESETS["quick"], 3)
    keys0 = [s.key for s in specs if s.seed == 0]
    assert len(keys0) == len(set(keys0))
    assert "dann_ganin-g10_lam1" in keys0 and "dann_const_lam1" in keys0 and "dann_const_lam0.01" in keys0
    assert len(specs) == 3 * len(keys0)
    assert {0, 0.01, 0.03, 0.1, 0.3, 1, 3} <= set(PRESETS["quick"].lambdas)
    assert specs[0].seed == 0 and specs[-1].seed == 2  # seed-major


# ---------------------------------------------------------------- answers from numbers
def _fake(target: dict, source: dict, dom: dict, lam_status: dict | None = None) -> dict:
    def run(key, method, t, s_acc, d, lam=1.0, sched="ganin", status="completed", label=None):
        seeds = []
        for i, (tt, ss) in enumerate(zip(t, s_acc)):
            st = status[i] if isinstance(status, list) else status
            summ = {"target_test_acc": tt, "source_test_acc": ss, "status": "completed" if st != "diverged"
                    else "diverged"}
            hist = [{"epoch": 1, "target_test_acc": tt, "source_test_acc": ss, "domain_acc": d}]
            seeds.append({"seed": i, "status": st, "summary": summ, "history": hist})
        return {"key": key, "label": label or key, "method": method, "lambda_max": lam, "lambda_schedule": sched,
                "gamma": 10.0, "teacher": None, "method_args": None, "seeds": seeds}

    runs = {"source-only": run("source-only", "source-only", target["src"], source["src"], None),
            "dann_ganin-g10_lam1": run("dann_ganin-g10_lam1", "dann", target["dann"], source["dann"], dom["dann"]),
            "no-grl_ganin-g10_lam1": run("no-grl_ganin-g10_lam1", "no-grl", target["nogrl"], source["nogrl"],
                                         dom["nogrl"])}
    for lam, st in (lam_status or {}).items():
        runs[f"dann_const_lam{lam}"] = run(f"dann_const_lam{lam}", "dann", [0.6, 0.62, 0.61], [0.98, 0.97, 0.98],
                                            0.6, lam=lam, sched="constant", status=st)
    return {"runs": runs, "analysis": {"pad": {"source-only": [{"pad": 1.9}] * 3, "dann_ganin-g10_lam1":
                                               [{"pad": 0.8}, {"pad": 0.9}, {"pad": 1.0}],
                                               "no-grl_ganin-g10_lam1": [{"pad": 1.99}] * 3}}}


def test_answers_are_written_from_the_numbers():
    a = _fake({"src": [0.50, 0.52, 0.51], "dann": [0.75, 0.76, 0.74], "nogrl": [0.40, 0.41, 0.42]},
              {"src": [0.99, 0.99, 0.99], "dann": [0.97, 0.975, 0.97], "nogrl": [0.99, 0.99, 0.99]},
              {"dann": 0.55, "nogrl": 0.99},
              {0: "completed", 1: "completed", 10: ["completed", "collapsed", "diverged"]})
    ans = write_answers(summarize(a))
    q1 = " ".join(ans["q1"])
    assert "loses DANN's gain" in q1 and "41.0 ± 1.0%" in q1 and "75.0 ± 1.0%" in q1
    assert "99.0" in q1 and "lower than DANN" in q1
    q3 = " ".join(ans["q3"])
    assert "lambda=10: 1 diverged" in q3 and "1 collapsed" in q3 and "breaks training" in q3
    assert "lower than source-only" in " ".join(ans["q2"])

    # change the numbers: the sentences follow
    b = copy.deepcopy(a)
    b["runs"]["no-grl_ganin-g10_lam1"]["seeds"] = a["runs"]["dann_ganin-g10_lam1"]["seeds"]
    b["runs"]["dann_const_lam10"]["seeds"] = a["runs"]["dann_const_lam1"]["seeds"]
    ans2 = write_answers(summarize(b))
    assert "within seed noise of DANN" in " ".join(ans2["q1"]) and "loses" not in " ".join(ans2["q1"])
    assert "breaks training" not in " ".join(ans2["q3"]) and "No run broke down" in " ".join(ans2["q3"])
    assert ans2["q1"] != ans["q1"]


# ---------------------------------------------------------------- the HTML template
def test_report_template_escapes_text_and_embeds_figures(tmp_path):
    import base64

    from PIL import Image

    from dalab.reports.study_report import render_html

    png = tmp_path / "f.png"
    Image.new("RGB", (4, 3), (200, 10, 10)).save(png)
    blocks = [("h1", "A <b>title</b>"), ("sub", "*small* print"), ("findings", ["**bold** finding"]),
              ("list", ["a `code` item & more"]), ("answer", ["<script>alert(1)</script>", "second"]),
              ("table", (["configuration", "acc"], [["DANN <x>", "91.0 %"]])), ("fig", "f")]
    page = render_html(blocks, {"f": (png, 'Caption with "quotes" and **bold**')}, title="T & T")
    assert page.startswith("<!DOCTYPE html>") and "<title>T &amp; T</title>" in page
    assert "<h1>A &lt;b&gt;title&lt;/b&gt;</h1>" in page and '<p class="sub"><em>small</em> print</p>' in page
    assert "<li><strong>bold</strong> finding</li>" in page and "<li>a <code>code</code> item &amp; more</li>" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<td>DANN &lt;x&gt;</td>" in page
    b64 = base64.b64encode(png.read_bytes()).decode("ascii")
    assert f'src="data:image/png;base64,{b64}"' in page  # self-contained: the PNG is in the page
    assert "<figcaption>Caption with &quot;quotes&quot; and <strong>bold</strong></figcaption>" in page
    assert 'alt="Caption with &#34;quotes&#34; and **bold**"' in page
    assert "<link" not in page and "http" not in page.replace("http-equiv", "")  # nothing fetched from outside


def test_report_template_ships_with_the_package():
    from importlib.resources import files

    assert files("dalab.reports").joinpath("templates", "report.html.j2").is_file()


# ---------------------------------------------------------------- the whole pipeline
@pytest.fixture(scope="module")
def smoke_study(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    logs = []
    study = Study("smoke", out, device="cpu", seeds=2, data_dir=tiny_data, log=logs.append)
    results = study.run()
    rep = build_report(results, study.out, data=study._data())
    return study, results, rep, logs


def test_smoke_study_writes_report_and_results(smoke_study):
    study, results, rep, logs = smoke_study
    out = study.out
    for f in ("report.md", "report.html", "results.json", "figures/lambda.png", "figures/tsne.png",
              "figures/pseudo_labels.png", "figures/curves.png", "figures/samples.png", "figures/q1.png"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "results.json").read_text())
    assert saved["seeds"] == 2 and set(saved["runs"]) >= {"source-only", "dann_ganin-g10_lam1",
                                                          "no-grl_ganin-g10_lam1", "dann-pl_from-dann_ganin-g10_lam1_thr0.9"}
    md = (out / "report.md").read_text()
    assert "MNIST-M (rebuilt" in md and "never used for training or model selection" in md
    for h in ("Q1.", "Q2.", "Q3.", "Q4.", "| configuration |"):
        assert h in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 7 and 'src="figures/' not in html
    # every run reports a status; the huge lambda is shown, not crashed on
    assert all(s["status"] in ("completed", "collapsed", "diverged") for r in saved["runs"].values()
               for s in r["seeds"])
    assert saved["analysis"]["pad"]["dann_ganin-g10_lam1"][0]["pad"] is not None


def test_killed_study_restarts_where_it_stopped(smoke_study):
    study, _, _, _ = smoke_study
    folders = [s.folder(study.out, study.preset) for s in study.specs]
    victim = folders[4]
    before = {f: (f / "summary.json").stat().st_mtime_ns for f in folders}
    # "killed" mid-run: the final files are missing but the resume checkpoint is there
    (victim / "summary.json").unlink()
    (victim / "model.pt").unlink()
    logs = []
    again = Study("smoke", study.out, device="cpu", seeds=2, data_dir=study.data_dir, log=logs.append)
    again.run()
    assert (victim / "summary.json").is_file()
    changed = [f for f in folders if (f / "summary.json").stat().st_mtime_ns != before[f]]
    assert changed == [victim]
    assert sum("cached" in line for line in logs) == len(folders) - 1


def test_analysis_in_threads_is_complete_and_deterministic(smoke_study):
    """The analyses run their scikit-learn fits in a thread pool: a rebuilt analysis holds every
    PAD and t-SNE, in seed order, with the same values as the first one."""
    import shutil

    study, results, _, _ = smoke_study
    first = results["analysis"]
    shutil.rmtree(study.analysis_dir)
    study.analysis_dir.mkdir(parents=True)
    again = study.analyse()
    assert set(again["pad"]) == {"pixels", "source-only", "dann_ganin-g10_lam1", "no-grl_ganin-g10_lam1"}
    assert again["pad"] == first["pad"] and all(len(v) == 2 for v in again["pad"].values())
    assert set(again["tsne"]) == set(first["tsne"]) and len(again["tsne"]) == 3
    for rel in again["tsne"].values():
        with np.load(study.out / rel) as z:
            assert z["emb"].shape == (len(z["domain"]), 2) and np.isfinite(z["emb"]).all()


def test_cli_study_errors_are_one_line(tmp_path):
    from dalab.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["study", "--preset", "nope", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert main(["study", "--out", str(tmp_path / "x"), "--report-only"]) == 2


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(smoke_study, tmp_path):
    study = smoke_study[0]
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", (study.out / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape[:2] == (2400, 1200)
    assert img.std() > 10  # not a blank page
