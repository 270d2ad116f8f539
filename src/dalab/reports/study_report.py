"""The study report: figures, a results table and the four answers, as Markdown and HTML.

Everything here is computed from a study's ``results.json`` (see
:mod:`dalab.experiments.study`): :func:`summarize` reduces it to mean +- std per
configuration, :func:`write_answers` turns those numbers into sentences (no number is
written by hand), :func:`build_report` draws the figures and writes ``report.md`` and a
self-contained ``report.html`` (the Jinja2 template ``templates/report.html.j2``, images
embedded as data URIs). All files are atomic.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np

from ..data.io import atomic_write_text
from .figures import image_grid, plt, save_figure

DANN = "dann_ganin-g10_lam1"
NOGRL = "no-grl_ganin-g10_lam1"
SRC = "source-only"
Q1_KEYS = (SRC, DANN, NOGRL)
Q1_NAMES = {SRC: "source-only", DANN: "DANN", NOGRL: "no GRL"}
COLORS = {SRC: "#7f7f7f", DANN: "#1f77b4", NOGRL: "#d62728"}


# ---------------------------------------------------------------------- numbers
def mean_std(values) -> tuple[float, float, int] | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def pct(ms, digits: int = 1) -> str:
    if ms is None:
        return "n/a"
    m, s, n = ms
    return f"{100 * m:.{digits}f} ± {100 * s:.{digits}f}%" if n > 1 else f"{100 * m:.{digits}f}%"


def num(ms, digits: int = 2) -> str:
    if ms is None:
        return "n/a"
    m, s, n = ms
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def lam_str(v: float) -> str:
    return f"{v:g}"


def summarize(results: dict) -> dict:
    """Per configuration: accuracies over the seeds that did not break down, status counts,
    final domain accuracy, proxy A-distance, curves; plus pseudo-label analyses."""
    out: dict = {"configs": {}}
    runs = results.get("runs", {})
    order = [k for k in results.get("order", []) if k in runs] + [k for k in runs if k not in results.get("order", [])]
    for key in order:
        r = runs[key]
        seeds = r["seeds"]
        ok = [s for s in seeds if s["status"] == "completed"]
        finished = [s for s in seeds if s["status"] in ("completed", "collapsed")]
        counts = {st: sum(1 for s in seeds if s["status"] == st) for st in ("completed", "collapsed", "diverged",
                                                                             "missing")}
        last_dom = [s["history"][-1].get("domain_acc") for s in finished if s["history"]]
        c = {"key": key, "label": r["label"], "method": r["method"], "lambda_max": r["lambda_max"],
             "lambda_schedule": r["lambda_schedule"], "gamma": r["gamma"], "teacher": r.get("teacher"),
             "method_args": r.get("method_args"), "n": len(seeds), "counts": counts,
             "target": mean_std(s["summary"]["target_test_acc"] for s in ok),
             "source": mean_std(s["summary"]["source_test_acc"] for s in ok),
             # including collapsed seeds: what a user would actually get
             "target_all": mean_std(s["summary"]["target_test_acc"] for s in finished),
             "source_all": mean_std(s["summary"]["source_test_acc"] for s in finished),
             "domain_acc": mean_std(last_dom),
             "histories": [s["history"] for s in seeds if s["history"]],
             "failures": [s["summary"].get("failure") for s in seeds
                          if s["summary"] and s["summary"].get("failure")]}
        out["configs"][key] = c
    an = results.get("analysis", {})
    out["pad"] = {k: mean_std(p["pad"] for p in v if p) for k, v in an.get("pad", {}).items()}
    out["pl_curve"] = {}
    for teacher, per_seed in an.get("pl_curve", {}).items():
        per_seed = [p for p in per_seed if p]
        if not per_seed:
            continue
        ths = [c["threshold"] for c in per_seed[0]["curve"]]
        out["pl_curve"][teacher] = {
            "thresholds": ths,
            "coverage": [mean_std(p["curve"][i]["coverage"] for p in per_seed) for i in range(len(ths))],
            "accuracy": [mean_std(p["curve"][i]["accuracy"] for p in per_seed) for i in range(len(ths))],
            "cb_coverage": mean_std(p["class_balanced"]["coverage"] for p in per_seed),
            "cb_accuracy": mean_std(p["class_balanced"]["accuracy"] for p in per_seed),
            "cb_fraction": per_seed[0]["class_balanced"]["fraction"],
            "teacher_acc": mean_std(p["teacher_target_train_acc"] for p in per_seed)}
    out["pl_final"] = {k: {"accuracy": mean_std(p["accuracy"] for p in v if p),
                           "coverage": mean_std(p["coverage"] for p in v if p)}
                       for k, v in an.get("pl_final", {}).items()}
    out["tsne"] = an.get("tsne", {})
    return out


def differs(a, b) -> bool:
    """True when two (mean, std, n) differ by more than their combined seed spread (and 0.5 pp)."""
    if a is None or b is None:
        return False
    d = abs(a[0] - b[0])
    return d > max(0.005, math.hypot(a[1], b[1]))


def compare_word(a, b, higher="higher than", lower="lower than", same="about the same as") -> str:
    if a is None or b is None:
        return "not comparable with"
    if not differs(a, b):
        return same
    return higher if a[0] > b[0] else lower


def pp(a, b) -> str:
    """Signed difference in percentage points."""
    return f"{100 * (a[0] - b[0]):+.1f} pp"


def lambda_sweep(S: dict) -> list[dict]:
    rows = [c for c in S["configs"].values() if c["method"] == "dann" and c["lambda_schedule"] == "constant"]
    return sorted(rows, key=lambda c: c["lambda_max"])


def schedule_rows(S: dict) -> list[dict]:
    rows = [c for c in S["configs"].values() if c["method"] == "dann" and c["lambda_max"] == 1.0]
    return sorted(rows, key=lambda c: (c["lambda_schedule"] != "ganin", -c["gamma"]))


def pl_rows(S: dict) -> list[dict]:
    return [c for c in S["configs"].values() if c["teacher"]]


def broken(c: dict) -> bool:
    return c["counts"]["collapsed"] + c["counts"]["diverged"] > 0


# ---------------------------------------------------------------------- answers
def write_answers(S: dict) -> dict[str, list[str]]:
    """The four answers as lists of Markdown paragraphs, every number taken from ``S``."""
    C = S["configs"]
    get = lambda k, f: C[k][f] if k in C else None  # noqa: E731
    ans: dict[str, list[str]] = {}

    # Q1 --------------------------------------------------------------------
    src_t, dann_t, ng_t = get(SRC, "target"), get(DANN, "target"), get(NOGRL, "target")
    dann_d, ng_d = get(DANN, "domain_acc"), get(NOGRL, "domain_acc")
    pad = S.get("pad", {})
    q1 = []
    if dann_t and ng_t and src_t:
        q1.append(
            f"**{_q1_headline(ng_t, dann_t, src_t)}** On the target domain the no-GRL network reaches "
            f"{pct(ng_t)}, {compare_word(ng_t, dann_t)} DANN ({pct(dann_t)}, {pp(ng_t, dann_t)}) and "
            f"{compare_word(ng_t, src_t)} source-only ({pct(src_t)}, {pp(ng_t, src_t)}).")
    if dann_d and ng_d:
        q1.append(
            f"The domain classifier tells the two domains apart with {pct(ng_d)} accuracy at the end of training "
            f"without the GRL, against {pct(dann_d)} with it (50% is chance). Without reversal, the feature "
            f"extractor receives the domain head's gradient un-reversed, so it *helps* the domain head: both "
            f"minimise the same domain loss, and the features become "
            + ("more" if ng_d[0] > dann_d[0] else "not less") + " domain-specific instead of domain-invariant.")
    trend = []
    for k in (DANN, NOGRL):
        hs = [h for h in (C[k]["histories"] if k in C else []) if h and "domain_acc" in h[0]]
        if hs:
            e = min(len(h) for h in hs)
            a0 = np.mean([h[0]["domain_acc"] for h in hs])
            a1 = np.mean([h[e - 1]["domain_acc"] for h in hs])
            trend.append(f"{Q1_NAMES[k]} {100 * a0:.1f}% in epoch 1 and {100 * a1:.1f}% in epoch {e}")
    if trend:
        q1.append("Domain-classifier accuracy over training (mean over seeds, training batches): "
                  + "; ".join(trend) + ".")
    if pad.get(NOGRL) and pad.get(DANN):
        parts = [f"{Q1_NAMES[k]} {num(pad[k])}" for k in Q1_KEYS if pad.get(k)]
        raw = f" (raw pixels: {num(pad['pixels'])})" if pad.get("pixels") else ""
        q1.append(
            f"Proxy A-distance of the learned features on held-out test images (2 = linearly separable domains, "
            f"0 = indistinguishable): {', '.join(parts)}{raw}. The no-GRL features are "
            f"{compare_word(pad[NOGRL], pad[DANN], 'further apart than', 'closer than', 'about as far apart as')} "
            f"DANN's. The t-SNE panels below show the same features in 2-D (seed 0): by this measure, source and "
            f"target points should "
            + ("form separate clusters without the GRL and overlap more with it." if pad[NOGRL][0] > pad[DANN][0]
               else "be no better mixed with the GRL than without it."))
    ans["q1"] = q1 or ["Not enough finished runs to answer (source-only, DANN and no-GRL are needed)."]

    # Q2 --------------------------------------------------------------------
    q2 = []
    src_s, dann_s, ng_s = get(SRC, "source"), get(DANN, "source"), get(NOGRL, "source")
    if src_s and dann_s:
        drop = dann_s[0] < src_s[0]
        q2.append(
            f"Source test accuracy: source-only {pct(src_s, 2)}, DANN {pct(dann_s, 2)} ({pp(dann_s, src_s)})"
            + (f", no GRL {pct(ng_s, 2)} ({pp(ng_s, src_s)})" if ng_s else "") + ". "
            + ("DANN's source accuracy is " + compare_word(dann_s, src_s) + " source-only's"
               + (": the difference is within seed noise in this run." if not differs(dann_s, src_s) else
                  (" by a margin larger than the seed spread." if drop else "."))))
        hs = [h for h in C[SRC]["histories"]] if SRC in C else []
        hd = [h for h in C[DANN]["histories"]] if DANN in C else []
        if hs and hd:
            e = min(min(len(h) for h in hs), min(len(h) for h in hd))
            below = sum(1 for i in range(e)
                        if np.mean([h[i]["source_test_acc"] for h in hd]) < np.mean([h[i]["source_test_acc"] for h in hs]))
            q2.append(f"Over training (curves in the Results section), DANN's mean source accuracy was below source-only's "
                      f"at {below} of {e} evaluated epochs.")
    allv = [c for c in C.values() if c["source"] and not broken(c)]
    if len(allv) >= 3:
        lo_c, hi_c = min(allv, key=lambda c: c["source"][0]), max(allv, key=lambda c: c["source"][0])
        q2.append(f"Across all {len(allv)} configurations in which no seed broke down, source accuracy ranges from "
                  f"{pct(lo_c['source'], 2)} ({lo_c['label']}) to {pct(hi_c['source'], 2)} ({hi_c['label']})"
                  + ("; pseudo-label runs continue from a trained teacher, so they have had more training steps."
                     if hi_c["teacher"] else "."))
    sweep = [c for c in lambda_sweep(S) if c["source"]]
    if len(sweep) >= 2:
        lo, hi = sweep[0], max((c for c in sweep if not broken(c)), key=lambda c: c["lambda_max"], default=sweep[-1])
        trend = {"lower than": "falls as the GRL factor grows", "higher than": "rises with the GRL factor",
                 "about the same as": "hardly changes with the GRL factor"}[compare_word(hi["source"], lo["source"])]
        q2.append(
            f"With a constant lambda, source accuracy {trend}: {pct(lo['source'], 2)} at "
            f"lambda={lam_str(lo['lambda_max'])} and {pct(hi['source'], 2)} at lambda={lam_str(hi['lambda_max'])}, "
            f"the largest lambda at which no seed broke down.")
    q2.append(
        "Why it can degrade: the feature extractor now serves two objectives. The adversarial term removes from the features "
        "whatever tells the domains apart, and some of it (stroke thickness, contrast against a plain background) "
        "is also useful for classifying MNIST; the features must also spend capacity on MNIST-M-like inputs, and "
        "the adversarial gradient adds noise to the classifier's optimisation."
        + _price_sentence(src_s, dann_s, src_t, dann_t))
    ans["q2"] = q2

    # Q3 --------------------------------------------------------------------
    q3 = []
    sweep = lambda_sweep(S)
    fin = [c for c in sweep if c["target"]]
    if fin:
        best = max(fin, key=lambda c: c["target"][0])
        zero = next((c for c in fin if c["lambda_max"] == 0), None)
        q3.append(
            "With a constant lambda, target accuracy goes from "
            + (f"{pct(zero['target'])} at lambda=0 (the domain head trains but the features never feel it, "
               f"i.e. source-only: {pct(src_t)}) " if zero else "")
            + f"to its highest value in this sweep, {pct(best['target'])}, at lambda={lam_str(best['lambda_max'])} "
            f"(a description of the sweep; no model is selected with target labels).")
        small = [c for c in fin if 0 < c["lambda_max"] < best["lambda_max"]]
        if small and zero:
            q3.append("Smaller non-zero values give: "
                      + ", ".join(f"lambda={lam_str(c['lambda_max'])}: {pct(c['target'])}" for c in small) + ".")
    br = [c for c in sweep if broken(c)]
    if br:
        first = br[0]
        desc = []
        for c in br:
            k = c["counts"]
            bits = []
            if k["diverged"]:
                bits.append(f"{k['diverged']} diverged (non-finite loss)")
            if k["collapsed"]:
                bits.append(f"{k['collapsed']} collapsed (source validation accuracy < 50%)")
            desc.append(f"lambda={lam_str(c['lambda_max'])}: {' and '.join(bits)} of {c['n']} seeds")
        upward = all(broken(c) for c in sweep if c["lambda_max"] >= first["lambda_max"])
        where = (f"From lambda={lam_str(first['lambda_max'])} on, runs break down" if upward
                 else "Runs broke down at some values")
        q3.append(f"**Too large a lambda breaks training.** {where}: {'; '.join(desc)}. The reversed domain gradient then dominates the "
                  f"classification gradient: the features are pushed to fool a domain head that keeps adapting, "
                  f"the min-max game oscillates, and the class information is destroyed.")
    elif sweep:
        q3.append(f"No run broke down up to lambda={lam_str(sweep[-1]['lambda_max'])} in this sweep; larger values "
                  f"would be needed to show the instability.")
    if sweep:
        big = [c for c in sweep if c["target_all"] and c["lambda_max"] >= (fin and best["lambda_max"] or 0)]
        if len(big) >= 2:
            q3.append("From that value up, over all finished seeds (collapsed ones included): "
                      + ", ".join(f"lambda={lam_str(c['lambda_max'])}: {pct(c['target_all'])}" for c in big) + ".")
    sch = [c for c in schedule_rows(S) if c["target"]]
    if len(sch) >= 2:
        q3.append("Schedules at lambda_max=1: " + ", ".join(f"{sched_name(c)}: {pct(c['target'])}" for c in sch)
                  + ". " + _schedule_sentence(sch))
    ans["q3"] = q3 or ["Not enough finished runs for the lambda sweep."]

    # Q4 --------------------------------------------------------------------
    q4 = [
        "**What it is.** Pseudo-labelling (self-training) uses the model's own predictions on the unlabelled "
        "target images as if they were labels. A teacher (here a source-only or DANN model) labels every target "
        "training image; only the predictions it is confident about are kept; the model is retrained on the "
        "source labels plus these target pseudo-labels, and the labelling is repeated for a few rounds with the "
        "improved model. A confidence threshold trades coverage (how much of the target set is used) against "
        "label noise; the class-balanced variant (CBST) instead keeps the most confident fraction of *each* "
        "predicted class, so classes the teacher is unsure about are not left out. Wrong pseudo-labels are "
        "reinforced, which is why the teacher's quality matters."]
    curves = S.get("pl_curve", {})
    for teacher, name in ((SRC, "source-only"), (DANN, "DANN")):
        cv = curves.get(teacher)
        if not cv:
            continue
        pts = [(t, c, a) for t, c, a in zip(cv["thresholds"], cv["coverage"], cv["accuracy"]) if c]
        if not pts:
            continue
        lo, hi = pts[0], pts[-1]
        acc = lambda a: f"pseudo-label accuracy {pct(a)}" if a else "no label kept"  # noqa: E731
        q4.append(
            f"With the {name} teacher (accuracy {pct(cv['teacher_acc'])} on the target training set), a "
            f"threshold of {lo[0]:g} keeps {pct(lo[1])} of the target images ({acc(lo[2])}); a threshold of "
            f"{hi[0]:g} keeps {pct(hi[1])} ({acc(hi[2])}). "
            f"Class-balanced selection of the top {100 * cv['cb_fraction']:.0f}% per class keeps {pct(cv['cb_coverage'])} "
            f"with accuracy {pct(cv['cb_accuracy'])}. Higher thresholds keep fewer but "
            + ("more accurate labels here." if (hi[2] and lo[2] and hi[2][0] > lo[2][0]) else
               "not more accurate labels here."))
    for c in pl_rows(S):
        teacher = C.get(c["teacher"])
        if not (c["target"] and teacher and teacher["target"]):
            continue
        fin = S.get("pl_final", {}).get(c["key"])
        extra = (f"; in the last round it kept {pct(fin['coverage'])} of the target set with pseudo-label accuracy "
                 f"{pct(fin['accuracy'])}" if fin and fin["accuracy"] else "")
        q4.append(f"{c['label'][:1].upper() + c['label'][1:]}: target accuracy {pct(c['target'])}, "
                  f"{compare_word(c['target'], teacher['target'])} its teacher ({pct(teacher['target'])}, "
                  f"{pp(c['target'], teacher['target'])}){extra}.")
    if any(c["target"] for c in pl_rows(S)):
        q4.append("Caveat: each pseudo-label run continues from its teacher for a few more epochs; the study "
                  "does not run a control that continues the teacher for those epochs without pseudo-labels, so "
                  "part of a gain may come from the extra training.")
    ans["q4"] = q4
    return ans


def _price_sentence(src_s, dann_s, src_t, dann_t) -> str:
    if not (src_s and dann_s and src_t and dann_t):
        return ""
    if differs(dann_s, src_s):
        cost = (f"lost {100 * (src_s[0] - dann_s[0]):.1f} pp of source accuracy" if dann_s[0] < src_s[0]
                else f"gained {100 * (dann_s[0] - src_s[0]):.1f} pp of source accuracy")
    else:
        cost = "lost no measurable source accuracy"
    if differs(dann_t, src_t) and dann_t[0] > src_t[0]:
        return f" In this run DANN {cost} and gained {pp(dann_t, src_t)} on the target."
    return (f" In this run DANN {cost} and did not measurably beat source-only on the target "
            f"({pp(dann_t, src_t)}).")


def sched_name(c: dict) -> str:
    return f"ganin ramp (gamma={c['gamma']:g})" if c["lambda_schedule"] == "ganin" else "constant"


def _q1_headline(ng, dann, src) -> str:
    if differs(ng, dann) and ng[0] < dann[0]:
        if compare_word(ng, src) == "higher than":
            return "Without the GRL the network keeps only part of DANN's gain on the target domain."
        return "Without the GRL the network loses DANN's gain on the target domain."
    if not differs(ng, dann):
        return "In this run, target accuracy without the GRL is within seed noise of DANN's."
    return "In this run, the network without GRL did better on the target domain than DANN."


def _schedule_sentence(sch: list[dict]) -> str:
    best = max(sch, key=lambda c: c["target"][0])
    worst = min(sch, key=lambda c: c["target"][0])
    if not differs(best["target"], worst["target"]):
        return "The schedules are within seed noise of each other here."
    steady = min(sch, key=lambda c: c["target"][1])
    return (f"The {sched_name(best)} schedule gives the highest target accuracy and the {sched_name(worst)} the "
            f"lowest; the smallest seed spread comes from the {sched_name(steady)} schedule. A ramp starts with lambda near 0, "
            f"so the label classifier learns before the adversarial signal, which is still noisy, reaches the features.")


def key_findings(S: dict, ans: dict) -> list[str]:
    """One line per question for the top of the report (first sentence of each answer)."""
    out = []
    for q in ("q1", "q2", "q3", "q4"):
        if ans.get(q):
            paras = ans[q]
            if q == "q4" and len(paras) > 1:  # the first paragraph defines the method: show a result instead
                paras = [p for p in paras if p.startswith("DANN + pseudo")] or paras[-1:]
            first = re.sub(r"\*\*(.+?)\*\*", r"\1", paras[0])
            out.append(first if len(first) < 400 else first[:397] + "...")
    return out


# ---------------------------------------------------------------------- figures
def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _band(ax, hists, field, color, label):
    hists = [h for h in hists if h and all(field in r for r in h)]
    if not hists:
        return
    e = min(len(h) for h in hists)
    x = [r["epoch"] for r in hists[0][:e]]
    y = np.array([[r[field] for r in h[:e]] for h in hists]) * 100
    m = y.mean(0)
    ax.plot(x, m, "-o", color=color, label=label, ms=3)
    if len(hists) > 1:
        s = y.std(0, ddof=1)
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.2)


def fig_samples(src_split, tgt_split, path, n=32):
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.6))
    for ax, split, title in ((axes[0], src_split, "source: MNIST"), (axes[1], tgt_split, "target: MNIST-M (rebuilt)")):
        idx = np.sort(rng.choice(len(split), size=min(n, len(split)), replace=False))
        ax.imshow(image_grid(split.x[idx], cols=8), interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    save_figure(fig, path)


def fig_curves(S, path):
    C = S["configs"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for k in Q1_KEYS:
        if k in C:
            _band(axes[0], C[k]["histories"], "target_test_acc", COLORS[k], Q1_NAMES[k])
            _band(axes[1], C[k]["histories"], "source_test_acc", COLORS[k], Q1_NAMES[k])
            _band(axes[2], C[k]["histories"], "domain_acc", COLORS[k], Q1_NAMES[k])
    from matplotlib.ticker import MaxNLocator

    for ax, t in zip(axes, ("target test accuracy (%)", "source test accuracy (%)",
                            "domain classifier accuracy (%)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[2].axhline(50, color="k", ls=":", lw=1)
    axes[2].text(0.02, 0.04, "50% = chance", transform=axes[2].transAxes, fontsize=8)
    _legend(axes[0], fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def fig_lambda(S, path):
    sweep = lambda_sweep(S)
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [c["lambda_max"] for c in sweep]
    for field, color, label in (("target", "#1f77b4", "target (MNIST-M rebuilt)"), ("source", "#2ca02c", "source (MNIST)")):
        pts = [(c["lambda_max"], c[field]) for c in sweep if c[field]]
        if pts:
            ax.errorbar([p[0] for p in pts], [100 * p[1][0] for p in pts], yerr=[100 * p[1][1] for p in pts],
                        fmt="-o", color=color, capsize=4, label=f"{label} test accuracy")
    ref = S["configs"].get(SRC, {}).get("target")
    if ref:
        ax.axhline(100 * ref[0], color=COLORS[SRC], ls="--", lw=1, label="source-only on target")
    first_bad = True
    for c in sweep:
        k = c["counts"]
        nb = k["collapsed"] + k["diverged"]
        if nb:
            ax.axvspan(c["lambda_max"] / 1.6, c["lambda_max"] * 1.6, color="#d62728", alpha=0.12,
                       label="broke down (diverged / collapsed)" if first_bad else None)
            first_bad = False
            ax.text(c["lambda_max"], 2, f"{nb}/{c['n']}\nbroke", ha="center", va="bottom", fontsize=7,
                    color="#d62728")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xticks(xs)
    ax.set_xticklabels([lam_str(x) for x in xs], fontsize=8)
    ax.set_ylim(0, 102)
    ax.set_xlabel("constant GRL factor lambda (symlog axis)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_title("DANN vs lambda (mean ± std over the seeds that did not break down)", fontsize=10)
    save_figure(fig, path)


def fig_schedules(S, path):
    from ..models.grl import LambdaSchedule

    rows = schedule_rows(S)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.3), gridspec_kw={"width_ratios": [1, 1.2]})
    p = np.linspace(0, 1, 200)
    for c in rows:
        sch = LambdaSchedule(c["lambda_max"], c["lambda_schedule"], c["gamma"])
        axes[0].plot(p, [sch(v) for v in p], label=sched_name(c))
    axes[0].set_xlabel("training progress p")
    axes[0].set_ylabel("lambda")
    _legend(axes[0], fontsize=8)
    axes[0].grid(alpha=0.3)
    axes[0].set_title("schedules (lambda_max = 1)", fontsize=10)
    ok = [c for c in rows if c["target"]]
    axes[1].barh(range(len(ok)), [100 * c["target"][0] for c in ok], xerr=[100 * c["target"][1] for c in ok],
                 color="#1f77b4", capsize=4)
    axes[1].set_yticks(range(len(ok)))
    axes[1].set_yticklabels([sched_name(c) for c in ok], fontsize=8)
    axes[1].set_xlabel("target test accuracy (%)")
    axes[1].set_xlim(0, 100)
    axes[1].grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, path)


def fig_tsne(S, study_dir: Path, path):
    keys = [k for k in Q1_KEYS if k in S.get("tsne", {}) and (study_dir / S["tsne"][k]).is_file()]
    if not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 4))
    axes = np.atleast_1d(axes)
    pad = S.get("pad", {})
    for ax, k in zip(axes, keys):
        d = np.load(study_dir / S["tsne"][k])
        emb, dom = d["emb"], d["domain"]
        for v, color, name in ((0, "#1f77b4", "source (MNIST)"), (1, "#ff7f0e", "target (MNIST-M rebuilt)")):
            ax.scatter(emb[dom == v, 0], emb[dom == v, 1], s=3, alpha=0.5, color=color, label=name)
        t = Q1_NAMES[k] + (f"  (PAD {num(pad[k])})" if pad.get(k) else "")
        ax.set_title(t, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    _legend(axes[0], fontsize=8, markerscale=4, loc="best")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def fig_q1_bars(S, path):
    C, pad = S["configs"], S.get("pad", {})
    keys = [k for k in Q1_KEYS if k in C]
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
    specs = ((axes[0], lambda k: C[k]["target"], 100, "target test accuracy (%)"),
             (axes[1], lambda k: C[k]["domain_acc"], 100, "final domain classifier acc. (%)"),
             (axes[2], lambda k: pad.get(k), 1, "proxy A-distance (0 = same, 2 = separable)"))
    for ax, f, scale, title in specs:
        ks = [k for k in keys if f(k)]
        ax.bar(range(len(ks)), [scale * f(k)[0] for k in ks], yerr=[scale * f(k)[1] for k in ks],
               color=[COLORS[k] for k in ks], capsize=4)
        ax.set_xticks(range(len(ks)))
        ax.set_xticklabels([Q1_NAMES[k] for k in ks], fontsize=9)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    if pad.get("pixels"):
        axes[2].axhline(pad["pixels"][0], color="k", ls=":", lw=1)
        axes[2].text(0.02, 0.92, f"raw pixels {pad['pixels'][0]:.2f}", transform=axes[2].transAxes, fontsize=8)
    axes[1].axhline(50, color="k", ls=":", lw=1)
    fig.tight_layout()
    save_figure(fig, path)


def fig_pl(S, path):
    curves = S.get("pl_curve", {})
    C = S["configs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.15]})
    ax = axes[0]
    for teacher, color, name, dx in ((SRC, "#555555", "source-only teacher", -0.003),
                                     (DANN, COLORS[DANN], "DANN teacher", 0.003)):
        cv = curves.get(teacher)
        if not cv:
            continue
        t = [x + dx for x in cv["thresholds"]]
        acc = [(x, a) for x, a in zip(t, cv["accuracy"]) if a]
        cov = [(x, c) for x, c in zip(t, cv["coverage"]) if c]
        ax.errorbar([a[0] for a in acc], [100 * a[1][0] for a in acc], yerr=[100 * a[1][1] for a in acc],
                    fmt="-o", color=color, capsize=3, label=f"{name}: accuracy of kept labels")
        ax.errorbar([c[0] for c in cov], [100 * c[1][0] for c in cov], yerr=[100 * c[1][1] for c in cov],
                    fmt="--s", color=color, capsize=3, alpha=0.8, label=f"{name}: coverage (kept)")
    ax.set_xlabel("confidence threshold")
    ax.set_ylabel("%")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.set_title("teacher's pseudo-labels (target training set)", fontsize=10)
    ax = axes[1]
    rows = [c for c in pl_rows(S) if c["target"] and C.get(c["teacher"], {}).get("target")]
    labels, before, after = [], [], []
    for c in rows:
        labels.append(c["label"].replace(" (", "\n("))
        before.append(C[c["teacher"]]["target"])
        after.append(c["target"])
    y = np.arange(len(rows))
    if rows:
        ax.barh(y + 0.2, [100 * b[0] for b in before], 0.4, xerr=[100 * b[1] for b in before], color="#bbbbbb",
                capsize=3, label="teacher")
        ax.barh(y - 0.2, [100 * a[0] for a in after], 0.4, xerr=[100 * a[1] for a in after], color="#9467bd",
                capsize=3, label="after pseudo-labelling")
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("target test accuracy (%)")
    if rows:
        _legend(ax, fontsize=8, loc="lower right")
    else:
        ax.text(50, 0.5, "no finished pseudo-label run", ha="center", va="center", color="#888")
        ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="x")
    ax.set_title("resulting target accuracy", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------- document
def results_table(S: dict) -> tuple[list[str], list[list[str]]]:
    head = ["configuration", "seeds ok / run", "target test acc", "source test acc", "final domain acc",
            "proxy A-dist.", "status"]
    order = ([SRC, DANN, NOGRL] + [c["key"] for c in lambda_sweep(S)] + [c["key"] for c in schedule_rows(S)]
             + [c["key"] for c in pl_rows(S)])
    seen, rows = set(), []
    for k in order:
        if k in seen or k not in S["configs"]:
            continue
        seen.add(k)
        c = S["configs"][k]
        cnt = c["counts"]
        st = ", ".join(f"{v} {n}" for n, v in cnt.items() if v and n != "completed") or "ok"
        rows.append([c["label"], f"{cnt['completed']}/{c['n']}", pct(c["target"]), pct(c["source"]),
                     pct(c["domain_acc"]) if c["method"] not in ("source-only", "pseudo-label") else "—",
                     num(S["pad"][k]) if S.get("pad", {}).get(k) else "—", st])
    return head, rows


def _md_table(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _inline_html(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"\*(.+?)\*", r"<em>\1</em>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return t


def render_html(blocks: list[tuple], figures: dict[str, tuple[Path, str]], title: str) -> str:
    """``report.html`` from ``templates/report.html.j2``: the same blocks as ``report.md``, with
    every figure embedded as a data URI so the page is self-contained."""
    import jinja2
    import markupsafe

    env = jinja2.Environment(loader=jinja2.PackageLoader("dalab.reports", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["inline"] = lambda text: markupsafe.Markup(_inline_html(text))
    embedded = {k: {"caption": cap, "b64": base64.b64encode(p.read_bytes()).decode("ascii")}
                for k, (p, cap) in figures.items()}
    return env.get_template("report.html.j2").render(blocks=blocks, figures=embedded, title=title)


def build_report(results: dict, study_dir, data=None) -> dict:
    """Write the PNGs, ``report.md`` and ``report.html`` into ``study_dir``; returns the paths.

    ``data``: optional (source Domain, target Domain) for the sample-image figure.
    """
    d = Path(study_dir)
    fig_dir = d / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    S = summarize(results)
    ans = write_answers(S)
    figs: dict[str, tuple[Path, str]] = {}
    if data is not None:
        fig_samples(data[0]["test"], data[1]["test"], fig_dir / "samples.png")
        figs["samples"] = (fig_dir / "samples.png", "32 random test images of each domain.")
    fig_curves(S, fig_dir / "curves.png")
    figs["curves"] = (fig_dir / "curves.png", "Training curves, mean ± std over seeds (bands). Source-only has no "
                      "domain head, so no domain accuracy.")
    fig_q1_bars(S, fig_dir / "q1.png")
    figs["q1"] = (fig_dir / "q1.png", "Source-only vs DANN vs the same network without GRL (mean ± std over seeds). "
                  "Proxy A-distance of the learned features on held-out test images.")
    if fig_tsne(S, d, fig_dir / "tsne.png"):
        figs["tsne"] = (fig_dir / "tsne.png", "t-SNE of the features of held-out source and target test images "
                        "(seed 0 models).")
    fig_lambda(S, fig_dir / "lambda.png")
    figs["lambda"] = (fig_dir / "lambda.png", "Constant GRL factor sweep. Red bands: at least one seed diverged or "
                      "collapsed; error bars over the seeds that did not.")
    fig_schedules(S, fig_dir / "schedules.png")
    figs["schedules"] = (fig_dir / "schedules.png", "Lambda schedules and the target accuracy they give.")
    fig_pl(S, fig_dir / "pseudo_labels.png")
    figs["pl"] = (fig_dir / "pseudo_labels.png", "Left: coverage and accuracy of the teacher's pseudo-labels vs the "
                  "confidence threshold (target labels used only for this measurement). Right: target accuracy "
                  "before (teacher) and after pseudo-labelling.")

    pre, proto = results["preset"], results["protocol"]
    seeds = results["seeds"]
    head, rows = results_table(S)
    blocks: list[tuple] = [
        ("h1", "Domain adaptation study: MNIST → MNIST-M (rebuilt)"),
        ("sub", f"dalab study, preset '{pre['name']}', {seeds} seeds per configuration, device "
                f"{results.get('device')} ({results.get('device_name')}), precision {results.get('precision')}."),
        ("findings", key_findings(S, ans)),
        ("h2", "Protocol"),
        ("list", [
            f"Source (labelled): {proto['source_description']}.",
            f"Target (unlabelled): {proto['target_description']}. This is **MNIST-M (rebuilt)**: the original "
            f"BSDS500 photos cannot be downloaded here, so the digits are blended with crops of colour photos "
            f"shipped in Python wheels; numbers are not directly comparable with published MNIST-M results.",
            f"Target labels are {proto['target_labels']}.",
            f"Budget: {pre['note'].rstrip('.')}. Training images per domain: {proto['n_train_per_domain']}; evaluation images "
            f"per test split: {proto['n_eval'] or 'all'}. Ganin's network (conv 32-48, 768 features) with "
            f"dalab's trainer defaults ({proto.get('net_options', 'see summary.json')}), "
            + ("SGD momentum 0.9, lr 0.01 annealed as 0.01 / (1 + 10 p)^0.75" if pre.get("optimizer", "sgd") == "sgd"
               else f"{pre.get('optimizer')} optimiser") +
            f", batches of {pre['batch_size']} source + {pre['batch_size']} target images; the model kept is "
            f"the last epoch's.",
            f"Every number is mean ± std (sample std) over the seeds. {proto['collapse_rule'].capitalize()}; "
            f"accuracies are averaged over the seeds that did not break down, and the table says how many did.",
        ]),
    ]
    if "samples" in figs:
        blocks += [("h3", "The two domains"), ("fig", "samples")]
    blocks += [("h2", "Results"), ("table", (head, rows)), ("fig", "curves")]
    blocks += [("h2", "Q1. What happens without the GRL?"), ("answer", ans["q1"]), ("fig", "q1")]
    if "tsne" in figs:
        blocks.append(("fig", "tsne"))
    blocks += [("h2", "Q2. Why may the source accuracy degrade?"), ("answer", ans["q2"])]
    blocks += [("h2", "Q3. The GRL factor lambda"), ("answer", ans["q3"]), ("fig", "lambda"), ("fig", "schedules")]
    blocks += [("h2", "Q4. Pseudo-labelling"), ("answer", ans["q4"]), ("fig", "pl")]

    md = []
    for kind, val in blocks:
        if kind in ("h1", "h2", "h3"):
            md.append("#" * int(kind[1]) + " " + val)
        elif kind == "sub":
            md.append(f"*{val}*")
        elif kind == "findings":
            md.append("**Key findings (this run):**\n\n" + "\n".join(f"- {f}" for f in val))
        elif kind == "list":
            md.append("\n".join(f"- {x}" for x in val))
        elif kind == "answer":
            md.append("\n\n".join(val))
        elif kind == "table":
            md.append(_md_table(*val))
        elif kind == "fig":
            p, cap = figs[val]
            md.append(f"![{cap}]({p.relative_to(d).as_posix()})\n\n*{cap}*")
    md.append("*Raw numbers: `results.json`; runs under `runs/`. Generated by dalab from this run's measurements.*")
    page = render_html(blocks, figs, title="dalab study: MNIST → MNIST-M (rebuilt)")
    atomic_write_text(d / "report.md", "\n\n".join(md) + "\n")
    atomic_write_text(d / "report.html", page)
    return {"md": d / "report.md", "html": d / "report.html", "figures": [str(v[0]) for v in figs.values()],
            "answers": ans}
