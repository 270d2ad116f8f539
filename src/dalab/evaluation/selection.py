"""Rank trained runs without target labels (``dalab select``), and judge the validators.

A *candidate* is a ``model.pt`` under a runs folder (one per run folder written by
``dalab train`` / ``dalab benchmark``). For each candidate we compute, on the domains
recorded in its model config:

- source validation logits, labels and features (labelled source data is allowed),
- source *training* features (DEV's domain classifier),
- target logits and features on the target ``train`` or ``val`` images, **never** labels,

then every requested validator (:mod:`dalab.evaluation.validators`). The target *test*
accuracy that the trainer recorded in the run's ``summary.json`` is read only to judge the
validators afterwards (the "oracle" column and the rank correlation); it never enters a
score or a choice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..data import load_domain
from ..errors import DalabError
from ..methods import uses_target_labels
from ..tasks import get_task, headline
from ..training import load_model
from .validators import VALIDATORS, compute_validators


def find_candidates(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise DalabError(f"{root}: no such folder")
    if root.is_file():
        return [root]
    # a benchmark's stale runs are kept aside as <run>.stale-<n>/: never candidates
    found = sorted(p for p in root.rglob("model.pt") if not any(".stale-" in q for q in p.relative_to(root).parts))
    if not found:
        raise DalabError(f"{root}: no model.pt found (train runs with `dalab train --out` first)")
    return found


STREAMED_LIMIT = 100  # images per split read from files (each is large), unless --limit asks for fewer


def _batches(cache: dict, name: str, split: str, data_dir, limit: int | None, device, opts: dict,
             labels: bool = True) -> list:
    """The (images, labels) batches of a split, read once per selection (cached): a resident split in
    batches of its task's evaluation size; a split read from files at the run's evaluation size, at most
    :data:`STREAMED_LIMIT` images (``labels`` False: their label files are not read)."""
    key = (name, split, repr(sorted(opts.items())), labels)
    if key not in cache:
        dom = load_domain(name, data_dir)
        if split not in dom.splits:  # e.g. the photo benchmarks have no val split: validators that need it give nan
            cache[key] = []
            return cache[key]
        s = dom[split]
        if getattr(s, "streamed", False):
            n = min(limit or STREAMED_LIMIT, STREAMED_LIMIT)
            opts = {**opts, **({"labels": labels and s.labelled} if "labels" in opts else {})}
            cache[key] = list(s.loader(4, False, workers=0, limit=n, **opts))
        else:
            x, y = s.tensors(device, limit)
            bs = get_task(dom.task).eval_batch
            cache[key] = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]
    return cache[key]


def _raw_weights(path: Path, device):
    """The network of ``path`` (a model.pt) with the raw weights of its run's last checkpoint, when the run
    kept a weight average (``--ema-decay``, the default); None otherwise (teacher-agreement is then nan)."""
    from ..training.checkpoint import CKPT_FORMAT, load_checked

    ckpt = path.parent / "ckpt.pt"
    if not ckpt.is_file():
        return None
    ck = load_checked(ckpt, CKPT_FORMAT)
    if "ema" not in ck:
        return None
    model, _ = load_model(path, device)
    model.load_state_dict(ck["model"])
    return model.eval()


def _summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None  # no summary (or an unreadable one): nothing recorded about the run


def _used_target_labels(method: str | None, summary: dict | None, depth: int = 8) -> bool:
    """Whether a run of ``method`` (with its ``summary``), or a run it was warm-started from (its
    ``init_from``, followed through the parents' summaries), trained on target labels."""
    if uses_target_labels(method):
        return True
    init = ((summary or {}).get("config") or {}).get("init_from")
    if not init or depth == 0:
        return False
    parent = _summary(Path(init).parent)
    return parent is not None and _used_target_labels(parent.get("method"), parent, depth - 1)


def score_candidate(path: Path, validators, *, data_dir=None, target_split: str = "val",
                    limit: int | None = 2000, device="cpu", cache: dict | None = None,
                    seed: int = 0) -> dict | None:
    """The validators' scores of one ``model.pt``; None for a model trained on target labels (the oracle) or
    started from one, which is never a candidate of a label-free choice."""
    cache = {} if cache is None else cache
    model, config = load_model(path, device)
    summary = _summary(path.parent)
    if _used_target_labels(config.get("method"), summary):
        return None
    source, target = config.get("source", "mnist"), config.get("target", "mnistm")
    task = get_task(config.get("task"))
    bad = [v for v in validators if v not in task.validators]
    if bad:
        raise DalabError(f"validator {bad[0]} is not defined for {task.name} "
                         f"({task.name}: {', '.join(task.validators)})")
    # fed as the run evaluated them (model.pt records the input size or the crops)
    opts = task.eval_options(config.get("eval_size") or ((summary or {}).get("config") or {}).get("eval_size"),
                             config.get("image_size"), transform=config.get("photo_transform", "standard"))
    get = (lambda name, split, labels=True: _batches(cache, name, split, data_dir, limit, device, opts, labels))
    extra = {}
    if "teacher-agreement" in validators:  # the run's raw weights (ckpt.pt) beside its weight average (model.pt)
        extra["raw_model"] = _raw_weights(path, device)
    inputs = task.validator_inputs(
        model, source_val=get(source, "val"), source_train=get(source, "train") if "dev" in validators else [],
        target=[(x, None) for x, _ in get(target, target_split, labels=False)],  # never a target label
        needed=list(validators), num_classes=int(config.get("num_classes", 10)), seed=seed, **extra)
    scores = compute_validators(validators, seed=seed, **inputs)
    row = {"run": str(path.parent), "checkpoint": str(path), "method": config.get("method"),
           "source": source, "target": target, "scores": scores}
    if summary is not None:
        row["target_test_acc"] = headline(summary, "target_test")  # oracle (accuracy or mIoU): for judging only
        row["metric"] = summary.get("metric", "acc")
        row["seed"] = summary.get("seed")
    return row


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho between two score lists (nan when undefined)."""
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None
             and math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return float("nan")
    xs, ys = zip(*pairs)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return float("nan")
    return float(spearmanr(xs, ys).statistic)


def judge(rows: list[dict], validators) -> dict:
    """Per validator: its choice, the choice's target accuracy, the oracle best, and Spearman's
    rho between score and target accuracy over all candidates."""
    accs = [r.get("target_test_acc") for r in rows]
    known = [a for a in accs if a is not None]
    oracle = max(known) if known else None
    oracle_run = rows[accs.index(oracle)]["run"] if oracle is not None else None
    out = {}
    for v in validators:
        scores = [r["scores"][v] for r in rows]
        finite = [i for i, s in enumerate(scores) if s is not None and math.isfinite(s)]
        best = max(finite, key=lambda i: scores[i]) if finite else None
        out[v] = {"choice": rows[best]["run"] if best is not None else None,
                  "choice_target_acc": rows[best].get("target_test_acc") if best is not None else None,
                  "oracle_target_acc": oracle, "oracle_run": oracle_run,
                  "spearman": rank_correlation(scores, accs)}
    return out


def config_of(run: str) -> str:
    """The configuration a run belongs to: ``X/<entry>`` for a seed folder ``X/<entry>/seed<k>``
    (the layout of ``dalab benchmark``), else the run itself."""
    p = Path(run)
    name = p.name
    return str(p.parent) if name.startswith("seed") and name[4:].isdigit() and name[4:].isascii() else str(p)


def _finite_mean(xs: list) -> float | None:
    """The mean, or None when any value is missing or not finite (a broken seed never hides)."""
    return sum(xs) / len(xs) if xs and all(x is not None and math.isfinite(x) for x in xs) else None


def group_by_config(rows: list[dict], validators) -> list[dict]:
    """One entry per configuration: its runs' seeds, the mean of each validator's score over them
    (a score that is not finite makes the mean nan, so a broken seed cannot hide), and the
    runs' mean target test accuracy (oracle, for judging only)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(config_of(r["run"]), []).append(r)
    out = []
    for cfg, rs in groups.items():
        scores = {}
        for v in validators:
            m = _finite_mean([r["scores"][v] for r in rs])
            scores[v] = float("nan") if m is None else m
        out.append({"config": cfg, "runs": len(rs), "seeds": sorted(r.get("seed") for r in rs
                                                                    if r.get("seed") is not None),
                    "pairs": sorted({f"{r.get('source')}->{r.get('target')}" for r in rs}),
                    "scores": scores,
                    "target_test_acc": _finite_mean([r.get("target_test_acc") for r in rs])})
    return out


def config_warnings(groups: list[dict]) -> list[str]:
    """What makes configurations incomparable: other domain pairs, or other seeds."""
    out = []
    pairs = sorted({p for g in groups for p in g["pairs"]})
    if len(pairs) > 1:
        out.append(f"the configurations span {len(pairs)} domain pairs ({', '.join(pairs)}): their scores are "
                   "not comparable; point RUNS_DIR at one pair's folder")
    seed_sets = {tuple(g["seeds"]) for g in groups}
    if len(seed_sets) > 1:
        out.append("the configurations were run with different seeds ("
                   + "; ".join(f"{Path(g['config']).name}: {g['runs']} runs" for g in groups)
                   + "): a configuration with fewer seeds can win by luck")
    return out


def judge_configs(groups: list[dict], validators) -> dict:
    """:func:`judge` over configurations: the choice is the configuration with the best mean score;
    its mean target accuracy is what a user of that choice gets (a mean over seeds, not one lucky seed)."""
    rows = [{"run": g["config"], "scores": g["scores"], "target_test_acc": g["target_test_acc"]} for g in groups]
    return judge(rows, validators)


def select_runs(root, validators=VALIDATORS, by_config: bool = False, **kwargs) -> dict:
    """Score every candidate under ``root``; returns ``{"rows": [...], "report": judge(...)}``,
    rows sorted by the first validator (best first). ``by_config`` adds ``"configs"`` (one entry per
    benchmark entry folder, scores averaged over its seeds, best first) and ``"config_report"``."""
    bad = [v for v in validators if v not in VALIDATORS]
    if bad:
        raise DalabError(f"unknown validator {bad[0]!r} (known: {', '.join(VALIDATORS)})")
    candidates = find_candidates(root)
    if list(validators) == list(VALIDATORS):  # "all": those defined for the runs' task (e.g. pixels)
        tasks = {get_task((_summary(p.parent) or {}).get("task")) for p in candidates}
        validators = [v for v in VALIDATORS if all(v in t.validators for t in tasks)]
    cache: dict = {}
    rows, skipped = [], []
    for p in candidates:
        row = score_candidate(p, validators, cache=cache, **kwargs)
        if row is None:
            skipped.append(str(p.parent))
        else:
            rows.append(row)
    if not rows:
        raise DalabError(f"{root}: every model.pt there was trained on target labels (an oracle), so there is "
                         "nothing to choose from without them")
    key = validators[0]
    rows.sort(key=lambda r: -r["scores"][key] if math.isfinite(r["scores"][key]) else math.inf)
    res = {"validators": list(validators), "ranked_by": key, "rows": rows, "report": judge(rows, validators),
           "skipped_target_label_runs": skipped}
    if by_config:
        groups = group_by_config(rows, validators)
        groups.sort(key=lambda g: -g["scores"][key] if math.isfinite(g["scores"][key]) else math.inf)
        res["configs"] = groups
        res["config_report"] = judge_configs(groups, validators)
        res["config_warnings"] = config_warnings(groups)
    return res
