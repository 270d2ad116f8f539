"""``dalab benchmark``: every method with its default hyper-parameters, several seeds, one table.

A *suite* names a source -> target pair (or, with ``pairs``, several) and, per method, the
training settings that are part of that method's recipe (optimiser, input normalisation,
warm start). Each (method, seed) run lives in ``OUT/<method>/seed<k>/`` (a multi-pair suite:
``OUT/<source>-to-<target>/<method>/seed<k>/``) and is **reused** when it has finished with the
recipe the suite asks for, so an interrupted benchmark continues where it stopped.
A diverged or failed run is recorded (status + reason) and the others go on.

A finished run's recipe is (:func:`inspect_run`):

- its settings (``summary.json``'s ``config`` against the asked ``TrainConfig``, :func:`stale_settings`);
  a difference the user asked for by a flag is refused with the reason ("move it away or use
  another --out"), except more epochs, for which the run is continued from its checkpoint;
- its method: the method's ``version`` (a class attribute a method raises when a change of its
  behaviour makes older runs wrong; a summary without ``method_version`` counts as version 1) and
  its hyper-parameters with their defaults resolved (``method_params``, from ``Method.describe()``,
  against those of a freshly built method of the asked config), :func:`method_stale`;
- the ``model.pt`` a warm-started run started from (:func:`warm_start_stale`).

A run whose method is stale (the code changed under it; no flag asks for the old behaviour) is
moved aside to ``<run>.stale-<n>/``, never deleted, and trained again; so is a warm-started run
whose parent was moved aside that way (its recorded sha256 is that of the parent's stale copy).
Tables mark the rows with reused runs and name the dalab version that trained them.

The model of every run is its last epoch ("selected-by: last epoch"): no target label is
used for training, tuning or checkpoint choice. Target test accuracy is measured only.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..data.cityscapes_labels import TRAIN_ID
from ..data.io import atomic_write_json, atomic_write_text, sha256_file
from ..errors import DalabError
from ..methods import METHODS, make_method, uses_target_labels
from ..tasks import headline
from ..training import TrainConfig, Trainer
from ..training.config import TASK_RECIPES
from ..training.checkpoint import CKPT_FORMAT, load_checked
from ..training.pool import Job, failure_record, run_parallel

PLAN = "benchmark-plan.json"  # what the last call asked for: read by --collect


@dataclass
class SuiteEntry:
    method: str
    overrides: dict = field(default_factory=dict)   # TrainConfig fields
    init_from_method: str | None = None             # warm start from this entry's run, same seed
    name: str = ""                                  # row/folder name when one method appears twice

    @property
    def key(self) -> str:
        return self.name or self.method


ADAM_IN = {"optimizer": "adam", "input_norm": "instance"}
# Shu et al. 2018's network and settings (their code: Adam(1e-3, beta1=0.5), constant rate, EMA 0.998)
SHU = {"arch": "conv9", "optimizer": "adam", "adam_beta1": 0.5, "lr_schedule": "constant",
       "input_norm": "instance", "ema_decay": 0.998}
SHU_DIRTT = {**SHU, "method_args": {"vat_eps": 1.5}}  # both conv9 DIRT-T rows, whatever they start from
GANIN_NET = {"batch_norm": False, "input_norm": "none", "ema_decay": 0.0}  # Ganin's exact setting
SEG_RECIPE = {**TASK_RECIPES["segmentation"], "arch": "segnet"}
# DAFormer's warm-up: 1,500 of 40,000 iterations from 1e-6 (lhoyer/DAFormer _base_/schedules/poly10warm.py)
WARMUP = {"warmup": 1500 / 40000}
RCS = {"rare_class_sampling": True}  # rcs_class_temp 0.01, min_pixels 3000, min_crop_ratio 0.5 (dalab.data.rcs)


def fast_batch(batch: int, epochs: int) -> dict:
    """Overrides for ``batch`` images per domain per step: lr and EMA decay scaled from the defaults at 64."""
    return {"batch_size": batch, "epochs": epochs, "lr": round(0.01 * batch / 64, 6),
            "ema_decay": round(0.999 ** (batch / 64), 6), "eval_every": max(1, epochs // 10)}


SUITES: dict[str, dict] = {
    "digits-mnistm": {
        "source": "mnist", "target": "mnistm",
        "description": "MNIST -> MNIST-M (rebuilt), Ganin's network",
        "entries": [
            SuiteEntry("source-only"),
            SuiteEntry("dann"),
            SuiteEntry("cdan"),
            SuiteEntry("cdan+e"),
            SuiteEntry("mcc"),
            SuiteEntry("vada", dict(ADAM_IN)),
            SuiteEntry("dirt-t", dict(ADAM_IN), init_from_method="vada"),
            SuiteEntry("mean-teacher", dict(ADAM_IN)),
            SuiteEntry("fixmatch", dict(ADAM_IN)),
            SuiteEntry("adamatch", dict(ADAM_IN)),
            SuiteEntry("dann-pl", {"epochs": 5}, init_from_method="dann"),
            # what any method could reach with this network and budget, trained on the target labels
            SuiteEntry("target-only", name="target-only (oracle)"),
        ],
    },
    # the foundation's acceptance table: dalab's defaults, Ganin's exact network, and the oracle
    "digits-mnistm-core": {
        "source": "mnist", "target": "mnistm",
        "description": ("MNIST -> MNIST-M (rebuilt); dalab defaults (batch norm with per-domain statistics, "
                        "instance input norm, weight EMA 0.999) and ablations of them"),
        "entries": [
            SuiteEntry("source-only"),
            SuiteEntry("dann"),
            SuiteEntry("target-only", name="target-only (oracle)"),
            SuiteEntry("dann", {"bn_stats": "shared"}, name="dann (shared BN statistics)"),
            SuiteEntry("source-only", {"ema_decay": 0.0}, name="source-only (no EMA)"),
            SuiteEntry("dann", {"ema_decay": 0.0}, name="dann (no EMA)"),
            SuiteEntry("dann", dict(GANIN_NET), name="dann (Ganin net)"),
        ],
    },
    # large batches for a GPU: the learning rate scales linearly with the batch (SGD 0.01 per 64
    # images per domain) and the weight-EMA horizon stays the same number of epochs (decay 0.999^(B/64));
    # chosen by these two rules before any run, not by a target score
    "digits-mnistm-fast": {
        "source": "mnist", "target": "mnistm",
        "description": ("MNIST -> MNIST-M (rebuilt); dalab defaults with large batches for a GPU: lr 0.01 x B/64, "
                        "EMA decay 0.999^(B/64)"),
        "entries": [
            SuiteEntry("dann", fast_batch(128, 10), name="dann b128 e10"),
            SuiteEntry("dann", fast_batch(256, 10), name="dann b256 e10"),
            SuiteEntry("dann", fast_batch(256, 20), name="dann b256 e20"),
            SuiteEntry("dann", fast_batch(512, 40), name="dann b512 e40"),
            SuiteEntry("cdan", fast_batch(256, 20), name="cdan b256 e20"),
        ],
    },
    # for a GPU: Shu et al.'s digit network (--arch conv9, the domain classifier on its
    # second block as in their code) with their published training settings, taken as they are (the one change
    # since: AdaMatch's length, below):
    # Adam 1e-3 with beta1 0.5 at a constant rate, instance-normalised inputs, weight EMA 0.998 for evaluation;
    # VAT radius 3.5 on their [-1, 1] 32x32 images is 1.5 on dalab's [0, 1] 28x28 images (same size per
    # pixel); VADA plays the domain game as their code does (non-saturating, flipped labels); CDAN's
    # multilinear map of 3136 x 10 is randomised to 1024 dimensions as in Long et al.
    # The oracle row says how far any method could go.
    "digits-mnistm-conv9": {
        "source": "mnist", "target": "mnistm",
        "description": "MNIST -> MNIST-M (rebuilt), Shu et al. 2018's 9-conv digit network and training settings",
        "entries": [
            SuiteEntry("source-only", dict(SHU)),
            SuiteEntry("dann", dict(SHU)),
            SuiteEntry("cdan", {**SHU, "method_args": {"random_dim": 1024}}),
            SuiteEntry("vada", {**SHU, "method_args": {"vat_eps": 1.5, "adversary": "non-saturating"}}),
            SuiteEntry("dirt-t", dict(SHU_DIRTT), init_from_method="vada"),
            SuiteEntry("fixmatch", dict(SHU)),
            # 20 epochs, not 10 (dalab 0.6.0): a candidate proposed after the 10-epoch chain's test result, chosen
            # without a target label by a rule fixed before its run, mean BNM over 3 seeds (info-max agrees); the
            # margin between the two DIRT-T refinements is within the seeds' spread (docs/benchmark-digits-mnistm.md)
            SuiteEntry("adamatch", {**SHU, "epochs": 20}),
            # DIRT-T refines any adapted model (Shu et al. sec. 4); here also the strongest one, AdaMatch's
            SuiteEntry("dirt-t", dict(SHU_DIRTT), init_from_method="adamatch", name="dirt-t (from adamatch)"),
            SuiteEntry("target-only", dict(SHU), name="target-only (oracle)"),
        ],
    },
    # the domain-pair table of docs/domains.md: source-only, DANN and CDAN on six digit pairs
    "digits-pairs": {
        "pairs": [("mnist", "mnistm"), ("mnistm", "mnist"), ("mnist", "syndigits"), ("syndigits", "mnistm"),
                  ("mnist", "uci-digits"), ("uci-digits", "mnist")],
        "description": "six digit domain pairs; dalab defaults",
        "entries": [
            SuiteEntry("source-only"),
            SuiteEntry("dann"),
            SuiteEntry("cdan"),  # the best adversarial method of the digits-mnistm suite (3 seeds, CPU)
        ],
    },
    # segmentation (docs/segmentation.md): procedural street scenes, a code-built stand-in for GTA5 -> Cityscapes (not those
    # datasets), SegNet, the segmentation recipe (TASK_RECIPES: Adam 1e-3, 16 + 16 scenes per step, 3 epochs),
    # every method with its published default hyper-parameters; the oracle row trains on the target labels
    "scenes": {
        "source": "scenes-game", "target": "scenes-photo",
        "description": ("procedural street scenes, flat 'game' rendering -> photo-textured rendering (a code-built "
                        "stand-in for GTA5 -> Cityscapes, not those datasets), SegNet, mIoU over the classes present"),
        "entries": [
            SuiteEntry("source-only", dict(SEG_RECIPE)),
            SuiteEntry("dann", dict(SEG_RECIPE)),
            SuiteEntry("advent", dict(SEG_RECIPE)),
            SuiteEntry("adaptseg", dict(SEG_RECIPE)),
            SuiteEntry("minent", dict(SEG_RECIPE)),
            SuiteEntry("fda", dict(SEG_RECIPE)),
            SuiteEntry("cbst", dict(SEG_RECIPE)),
            SuiteEntry("dacs", dict(SEG_RECIPE)),
            # the ablation of DACS's colour jitter and blur of the mixed images (dalab < 0.8 left them out)
            SuiteEntry("dacs", {**SEG_RECIPE, "method_args": {"augment": False}}, name="dacs (no jitter or blur)"),
            SuiteEntry("mic", dict(SEG_RECIPE)),
            SuiteEntry("mic", {**SEG_RECIPE, "method_args": {"augment": False}}, name="mic (no jitter or blur)"),
            SuiteEntry("target-only", dict(SEG_RECIPE), name="target-only (oracle)"),
        ],
    },
    # the recipe experiments planned in docs/segmentation.md before any of their runs: methods with their pixel
    # sizes scaled to the image, DAFormer's strategy and its parts, the oracle with and without warm-up
    "scenes-recipe": {
        "source": "scenes-game", "target": "scenes-photo",
        "description": ("procedural street scenes (a code-built stand-in for GTA5 -> Cityscapes, not those datasets), "
                        "SegNet; methods with pixel sizes scaled to the image, DAFormer's recipe and its parts, "
                        "the oracle with and without warm-up"),
        "entries": [
            SuiteEntry("source-only", dict(SEG_RECIPE)),
            SuiteEntry("dacs", dict(SEG_RECIPE)),
            SuiteEntry("dacs", {**SEG_RECIPE, "method_args": {"augment": False}}, name="dacs (no jitter or blur)"),
            SuiteEntry("mic", dict(SEG_RECIPE)),
            SuiteEntry("fda", dict(SEG_RECIPE)),
            SuiteEntry("dacs", {**SEG_RECIPE, **RCS}, name="dacs (RCS)"),
            SuiteEntry("dacs", {**SEG_RECIPE, **WARMUP}, name="dacs (warm-up)"),
            SuiteEntry("daformer", {**SEG_RECIPE, **RCS, **WARMUP}),
            SuiteEntry("daformer", {**SEG_RECIPE, **RCS, **WARMUP, "method_args": {"ignore_top": 0, "ignore_bottom": 0}},
                       name="daformer (no pseudo-label crop)"),
            SuiteEntry("target-only", dict(SEG_RECIPE), name="target-only (oracle)"),
            SuiteEntry("target-only", {**SEG_RECIPE, **WARMUP}, name="target-only (oracle, warm-up)"),
        ],
    },
}

SELECTED_BY = "last epoch"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "+-_" else "-" for c in name).strip("-").replace("--", "-")


def suite_pairs(suite: dict) -> list[tuple[str, str]]:
    return [tuple(p) for p in suite["pairs"]] if "pairs" in suite else [(suite["source"], suite["target"])]


def _pair_out(out: Path, suite: dict, pair: tuple[str, str]) -> Path:
    return out / _slug(f"{pair[0]}-to-{pair[1]}") if "pairs" in suite else out


def _run_dir(out: Path, key: str, seed: int) -> Path:
    return out / _slug(key) / f"seed{seed}"


def _run_config(entry: SuiteEntry, pair: tuple[str, str], seed: int, out: Path, common: dict) -> tuple[dict | None, str]:
    """TrainConfig keyword arguments of one run, or ``(None, reason)`` when its warm-start parent is missing."""
    cfg = dict(method=entry.method, source=pair[0], target=pair[1], seed=seed)
    cfg.update(entry.overrides)
    cfg.update({k: v for k, v in common.items() if v is not None})
    if entry.init_from_method:
        parent = _run_dir(out, entry.init_from_method, seed)
        if not (parent / "model.pt").is_file():
            return None, f"needs a finished {entry.init_from_method} run for seed {seed} ({parent}/model.pt)"
        cfg["init_from"] = str(parent / "model.pt")
    return cfg, ""


# What a dalab 0.1 run did for settings its summary does not record.
LEGACY_SETTINGS = {"bn_stats": "shared"}
# workers: how files are read; channels_last: a memory format (measured by --precision auto since it can be
# null); neither is part of the recipe
NOT_COMPARED = ("device", "data_dir", "init_from", "workers", "channels_last")


def stale_settings(summary: dict, cfg: dict) -> list[str]:
    """Settings in which a finished run's ``summary.json`` differs from the run the suite asks for."""
    want = TrainConfig(**cfg).to_dict()
    have = summary.get("config") or {}
    return [f"{k}: {have.get(k, LEGACY_SETTINGS.get(k, v))!r} != {v!r}" for k, v in want.items()
            if k not in NOT_COMPARED and have.get(k, LEGACY_SETTINGS.get(k, v)) != v]


def _stale_failure(entry: SuiteEntry, seed: int, run_dir: Path, diff: list[str]) -> dict:
    return _failed(entry.method, seed, f"{run_dir} holds a run made with other settings ({'; '.join(diff)}): "
                                       "move it away or use another --out")


def warm_start_stale(run_dir: Path, cfg: dict | None) -> str:
    """Why the run in ``run_dir`` (finished, or cut with a ``ckpt.pt``) no longer follows from the
    ``model.pt`` its config starts from; '' when it does, or when there is nothing to check.

    A warm-started run records the sha256 of the file it started from (dalab >= 0.6.0). A parent trained
    for longer since, e.g. by ``--epochs-for PARENT=N`` or a suite's new default, has other weights: the
    child's numbers would be reported, or its training continued, under a parent it never saw. A run
    without the record (dalab < 0.6.0) is refused only when its parent was trained for longer at some
    point (``epochs_changed_from``), since then it cannot show which version it started from.
    """
    init = (cfg or {}).get("init_from")
    if not init or not Path(init).is_file():
        return ""  # no warm start, or the parent is missing (reported by _run_config)
    summ, ckpt = run_dir / "summary.json", run_dir / "ckpt.pt"
    if summ.is_file():
        recorded = json.loads(summ.read_text()).get("init_from_sha256")
    elif ckpt.is_file():
        try:
            recorded = load_checked(ckpt, CKPT_FORMAT).get("init_from_sha256")
        except DalabError:
            return ""  # a damaged checkpoint: the resume reports it, for this run only
    else:
        return ""  # nothing trained yet
    if recorded:
        if sha256_file(init) == recorded:
            return ""
        return f"started from an earlier version of {init} (that run has changed since)"
    parent = Path(init).parent / "summary.json"
    if parent.is_file() and json.loads(parent.read_text()).get("epochs_changed_from"):
        return (f"cannot show that it started from the current {init}, which was trained for longer at some "
                "point (the run predates dalab 0.6.0, which records the sha256 of its start)")
    return ""


# nn.Module's train/eval flag: in describe() but not a hyper-parameter
NOT_METHOD_PARAMS = ("training",)


def fresh_method_params(cfg: dict) -> dict:
    """The hyper-parameters, defaults resolved, of the method that ``cfg`` (TrainConfig keyword arguments)
    builds: as the trainer builds it (the schedule settings plus ``method_args``)."""
    c = TrainConfig(**cfg)
    m = make_method(c.method, lambda_max=c.lambda_max, schedule=c.lambda_schedule, gamma=c.gamma,
                    **(c.method_args or {}))
    return {k: v for k, v in m.describe().items() if k not in NOT_METHOD_PARAMS}


def method_stale(recorded: dict, cfg: dict) -> list[str]:
    """How the method of a finished run (its ``summary.json``, or a checkpoint that records the same keys)
    differs from the one ``cfg`` asks for: its ``version`` (missing: 1) and its hyper-parameters.

    A hyper-parameter the run does not record is a difference (the method gained it since, e.g. DACS's
    ``augment`` in dalab 0.8.0); one it records that the method no longer has is not compared.
    """
    cls = METHODS[cfg["method"]]
    out = []
    have_v = recorded.get("method_version", 1)
    if have_v != cls.version:
        out.append(f"{cfg['method']} version {have_v} != {cls.version}")
    have = recorded.get("method_params")
    if not isinstance(have, dict):
        return out + ["no method parameters recorded"]
    for k, v in fresh_method_params(cfg).items():
        if k not in have:
            out.append(f"{k}: not recorded != {v!r}")
        elif have[k] != v:
            out.append(f"{k}: {have[k]!r} != {v!r}")
    return out


def _ckpt_method_stale(ckpt: Path, cfg: dict) -> list[str]:
    """:func:`method_stale` for a cut run, when its checkpoint records its method (else nothing to compare)."""
    try:
        ck = load_checked(ckpt, CKPT_FORMAT)
    except DalabError:
        return []  # a damaged checkpoint: the resume reports it, for this run only
    if "method_version" not in ck and "method_params" not in ck:
        return []
    return method_stale({"method_version": ck.get("method_version", 1),
                         "method_params": ck.get("method_params")}, cfg)


def _replaced_parent(run_dir: Path, cfg: dict) -> Path | None:
    """The stale copy (``<parent>.stale-<n>/``) of the ``model.pt`` that the warm-started run in ``run_dir``
    recorded starting from, if its parent was moved aside and trained again; else None."""
    init = Path(cfg.get("init_from") or "")
    summ, ckpt = run_dir / "summary.json", run_dir / "ckpt.pt"
    try:
        recorded = (json.loads(summ.read_text()) if summ.is_file()
                    else load_checked(ckpt, CKPT_FORMAT) if ckpt.is_file() else {}).get("init_from_sha256")
    except DalabError:
        return None
    if not recorded or not init.name:
        return None
    for old in sorted(init.parent.parent.glob(f"{init.parent.name}.stale-*")):
        if (old / init.name).is_file() and sha256_file(old / init.name) == recorded:
            return old
    return None


def inspect_run(entry: SuiteEntry, pair: tuple[str, str], seed: int, out: Path, common: dict) -> tuple:
    """What to do with one run, without touching anything:

    - ``("reuse", summary)``: finished with the asked recipe;
    - ``("train", cfg)``: nothing there, a cut run to resume, or a finished run to continue to more epochs;
    - ``("stale", cfg, reasons)``: made by an older method (or started from a parent that was replaced):
      to move aside and train again;
    - ``("fail", record)``: cannot run (a missing parent) or refused (other settings, a changed parent).
    """
    run_dir = _run_dir(out, entry.key, seed)
    summ = run_dir / "summary.json"
    cfg, missing = _run_config(entry, pair, seed, out, common)
    if cfg is None:  # its warm-start parent is missing: nothing to train from, nor to check a finished run against
        return "fail", _failed(entry.method, seed, missing)
    why = warm_start_stale(run_dir, cfg)
    if why:
        old = _replaced_parent(run_dir, cfg)
        if old is not None:
            return "stale", cfg, [f"started from {old}/model.pt, a run moved aside as stale"]
        # neither reused nor resumed, and left as it is
        return "fail", _failed(entry.method, seed, f"{run_dir} holds a run that {why}: move it away or use another --out")
    if summ.is_file():
        s = json.loads(summ.read_text())
        mdiff = method_stale(s, cfg)
        if mdiff:
            return "stale", cfg, mdiff
        diff = stale_settings(s, cfg)
        if diff and not _extendable(s, cfg, run_dir):
            return "fail", _stale_failure(entry, seed, run_dir, diff)  # e.g. an older dalab's run with other defaults
        if not diff:
            return "reuse", s
        return "train", cfg  # the same run asked for more epochs: continued from its last checkpoint
    if (run_dir / "ckpt.pt").is_file():
        mdiff = _ckpt_method_stale(run_dir / "ckpt.pt", cfg)
        if mdiff:
            return "stale", cfg, mdiff
    return "train", cfg


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to the first free ``<run_dir>.stale-<n>`` (n = 1, 2, ...); nothing is deleted."""
    n = 1
    while True:
        dest = run_dir.with_name(f"{run_dir.name}.stale-{n}")
        if not dest.exists():
            try:
                os.rename(run_dir, dest)
                return dest
            except OSError as e:
                if not dest.exists():
                    raise DalabError(f"cannot move the stale run {run_dir} aside ({e.strerror})") from None
        n += 1


def _live_job(run_dir: Path) -> str:
    """Why ``run_dir`` must not be trained here: a cluster job recorded in it is still pending or running."""
    if not (run_dir / "job.json").is_file():
        return ""
    try:
        from ..training.launcher import read_record, record_live, record_state
    except ImportError:
        return ""
    rec = read_record(run_dir)
    try:
        if not record_live(rec):
            return ""
    except DalabError:  # submitit missing: that job cannot be asked about
        return ""
    return (f"{run_dir} is being trained by job {rec['job_id']} ({record_state(rec)}; log {rec.get('stdout')}): "
            "wait for it (dalab benchmark --collect OUT --wait) or cancel it")


def decide(entry: SuiteEntry, pair: tuple[str, str], seed: int, out: Path, common: dict, log=print,
           check_jobs: bool = True) -> tuple[str, dict]:
    """:func:`inspect_run`, acted on: a stale run is moved aside (and said so in ``log``), then trained.
    Returns ``("reuse", summary)``, ``("train", cfg)`` or ``("fail", record)``. With ``check_jobs``, a run
    that a recorded cluster job is still training is not trained again here."""
    kind, *rest = inspect_run(entry, pair, seed, out, common)
    run_dir = _run_dir(out, entry.key, seed)
    if kind == "stale" or (kind == "train" and check_jobs):  # never move a folder that a job writes into
        busy = _live_job(run_dir)
        if busy:
            return "fail", _failed(entry.method, seed, busy)
    if kind == "stale":
        cfg, reasons = rest
        dest = move_aside(run_dir)
        log(f"{run_dir}: stale ({'; '.join(reasons)}); moved to {dest} and trained again")
        return "train", cfg
    if kind == "reuse":
        return "reuse", {**rest[0], "reused": True}
    return kind, rest[0]


def run_one(entry: SuiteEntry, pair: tuple[str, str], seed: int, out: Path, common: dict, progress: bool,
            log=print) -> dict:
    kind, val = decide(entry, pair, seed, out, common, log)
    if kind != "train":
        return val
    run_dir = _run_dir(out, entry.key, seed)
    try:
        return Trainer(TrainConfig(**val), run_dir, progress=progress, resume=True).fit()  # a killed run resumes
    except DalabError as e:
        return _failed(entry.method, seed, str(e))
    except Exception as e:  # noqa: BLE001 - one broken method must not stop the benchmark
        return _failed(entry.method, seed, f"{type(e).__name__}: {e}", traceback.format_exc(limit=3))


def _extendable(summary: dict, cfg: dict, run_dir: Path) -> bool:
    """A finished run that differs from the one asked for only by having fewer epochs (and has its checkpoint)."""
    have = (summary.get("config") or {}).get("epochs")
    return (summary.get("status") == "completed" and isinstance(have, int)
            and have < cfg.get("epochs", TrainConfig().epochs) and (run_dir / "ckpt.pt").is_file()
            and not stale_settings(summary, {**cfg, "epochs": have}))


def _failed(method: str, seed: int, reason: str, tb: str | None = None) -> dict:
    # not written to summary.json: a failed run is retried next time
    s = failure_record(method, seed, reason)
    if tb:
        s["traceback"] = tb
    return s


def _mean_std(vals):
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def aggregate(results: dict[str, list[dict]], seeds: int) -> list[dict]:
    rows = []
    for method, runs in results.items():
        ok = [r for r in runs if r.get("status") == "completed"]
        sm, ss = _mean_std([headline(r, "source_test") for r in ok])
        tm, ts = _mean_std([headline(r, "target_test") for r in ok])
        trm, _ = _mean_std([r.get("train_seconds") for r in ok])
        epochs = sorted({r.get("epochs_done") for r in ok if r.get("epochs_done") is not None})
        rows.append({"method": method, "metric": next((r.get("metric") for r in ok if r.get("metric")), "acc"),
                     "source_acc_mean": sm, "source_acc_std": ss,
                     "target_acc_mean": tm, "target_acc_std": ts, "runs_ok": len(ok), "runs": len(runs),
                     "selected_by": SELECTED_BY, "train_seconds_mean": trm, "epochs": epochs,
                     "device": (f"{ok[0].get('device')}: {ok[0].get('device_name')}, {ok[0].get('precision')}"
                                if ok else None),
                     "failures": [f"seed {r.get('seed')}: {r.get('status')}: {r.get('failure')}"
                                  for r in runs if r.get("status") != "completed"]})
        reused = [r for r in ok if r.get("reused")]
        if reused:  # finished before this call and reused: which dalab trained them
            rows[-1]["reused"] = len(reused)
            rows[-1]["reused_dalab_versions"] = sorted({str(r.get("dalab_version") or "unknown") for r in reused})
        per_class = _per_class_means([r.get("target_test_per_class_iou") for r in ok])
        if per_class:  # segmentation: target test IoU per class, mean over seeds
            rows[-1]["target_per_class_mean"] = per_class
        if any(uses_target_labels(r.get("method")) for r in runs):
            rows[-1]["uses_target_labels"] = True  # the oracle: a reference, not a domain-adaptation result
        notes = [f"seed {r.get('seed')}: trained to {r.get('epochs_done')} epochs after a plan of "
                 f"{' then '.join(map(str, r['epochs_changed_from']))}; a schedule that follows the training progress (Ganin's "
                 "learning rate or lambda, AdaMatch's warm-up) was stretched, and then the run differs from one "
                 "planned for that length from the start" for r in ok if r.get("epochs_changed_from")]
        if notes:
            rows[-1]["notes"] = notes
    return rows


def _per_class_means(tables: list[dict | None]) -> dict[str, float]:
    """Per class, the mean over runs of the IoUs that are numbers (a class absent from a split is None)."""
    names = dict.fromkeys(k for t in tables if t for k in t)
    out = {}
    for k in names:
        vals = [t[k] for t in tables if t and isinstance(t.get(k), (int, float))]
        if vals:
            out[k] = statistics.fmean(vals)
    return out


def gap_closed(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per oracle row (a row trained on target labels), per row, the share of the source-only -> oracle gap
    in mean target score that the row closes: (t - t_source_only) / (t_oracle - t_source_only). Empty
    without a source-only row and an oracle row."""
    base = next((r["target_acc_mean"] for r in rows if r["method"] == "source-only"), None)
    out = {}
    for o in rows:
        top = o["target_acc_mean"]
        if not o.get("uses_target_labels") or base is None or top is None or top == base:
            continue
        out[o["method"]] = {r["method"]: (r["target_acc_mean"] - base) / (top - base)
                            for r in rows if r["target_acc_mean"] is not None}
    return out


def _pm(m, s) -> str:
    return "n/a" if m is None else f"{100 * m:.2f} ± {100 * s:.2f}"


def format_table(rows: list[dict], suite_name: str) -> str:
    score = "mIoU" if any(r.get("metric") == "miou" for r in rows) else "acc"
    gaps = gap_closed(rows)  # one column per oracle row
    gap_heads = "".join(" gap closed |" if len(gaps) == 1 else f" gap closed vs {o} |" for o in gaps)
    reuse = any(r.get("reused") for r in rows)
    lines = [f"# Benchmark `{suite_name}` ({SUITES[suite_name]['description']})", "",
             f"| method | source {score} (%) | target {score} (%) |" + gap_heads
             + " runs ok | epochs | selected by | train s (mean) |" + (" reused |" if reuse else ""),
             "|---|---|---|" + "---|" * len(gaps) + "---|---|---|---|" + ("---|" if reuse else "")]
    for r in rows:
        t = "n/a" if r["train_seconds_mean"] is None else f"{r['train_seconds_mean']:.1f}"
        ep = "/".join(str(e) for e in r.get("epochs") or []) or "n/a"
        g = "".join(f" {100 * gap[r['method']]:.0f} % |" if r["method"] in gap else " n/a |" for gap in gaps.values())
        lines.append(f"| {r['method']} | {_pm(r['source_acc_mean'], r['source_acc_std'])} | "
                     f"{_pm(r['target_acc_mean'], r['target_acc_std'])} |{g} {r['runs_ok']}/{r['runs']} | {ep} | "
                     f"{r['selected_by']} | {t} |" + (f" {_reused_cell(r)} |" if reuse else ""))
    if reuse:
        lines += ["", "Reused: runs that finished before this call with the same recipe (settings, method "
                      "version and parameters), and the dalab version that trained them."]
    if gaps:
        lines += ["", "Gap closed: (target − source-only) / (oracle − source-only), on the mean target scores"
                  + (", against each oracle row." if len(gaps) > 1 else ".")]
    classes = sorted(dict.fromkeys(k for r in rows for k in r.get("target_per_class_mean") or {}),
                     key=lambda k: (TRAIN_ID.get(k, len(TRAIN_ID)), k))  # Cityscapes' train-id order
    if classes:
        lines += ["", "Target test IoU per class (%), mean over the completed seeds:", "",
                  "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for r in rows:
            pc = r.get("target_per_class_mean") or {}
            lines.append(f"| {r['method']} | " + " | ".join(f"{100 * pc[k]:.1f}" if k in pc else "n/a"
                                                            for k in classes) + " |")
    fails = [f"- {r['method']}, {f}" for r in rows for f in r["failures"]]
    return _with_footer(lines, rows, fails, "Mean ± sample std over seeds of the last-epoch model; no target "
                                            "label used for training, tuning or model choice.")


def _reused_cell(r: dict) -> str:
    if not r.get("reused"):
        return "no"
    return f"{r['reused']}/{r['runs_ok']} (dalab {', '.join(r['reused_dalab_versions'])})"


def _with_footer(lines: list[str], rows: list[dict], fails: list[str], note: str) -> str:
    """The table ``lines``, then the failed runs, the runs with a caveat (continued), the protocol ``note``
    and the hardware of the runs."""
    if fails:
        lines = lines + ["", "Failed or diverged runs:", *fails]
    caveats = [f"- {r['method']}" + (f" ({r['source']} -> {r['target']})" if "source" in r else "") + f", {n}"
               for r in rows for n in r.get("notes", [])]
    if caveats:
        lines = lines + ["", "Runs with a caveat:", *caveats]
    oracles = [r["method"] for r in rows if r.get("uses_target_labels")]
    if oracles:  # said in the footer, since the protocol sentence is about every other row
        note = (note.rstrip(".") + f", except {', '.join(dict.fromkeys(oracles))}, trained on the target "
                "labels as the reference for what the network can reach.")
    lines = lines + ["", note]
    devices = sorted({r["device"] for r in rows if r.get("device")})
    if devices:
        lines += ["", "Hardware: " + "; ".join(devices) + "."]
    return "\n".join(lines) + "\n"


def format_pair_table(rows: list[dict], suite_name: str, methods: list[str]) -> str:
    """One line per domain pair, one column per method: target acc (source acc) in %."""
    lines = [f"# Benchmark `{suite_name}` ({SUITES[suite_name]['description']})", "",
             "Target test accuracy, mean ± std over seeds (source test accuracy in brackets), in %.", "",
             "| source -> target | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    pairs = list(dict.fromkeys((r["source"], r["target"]) for r in rows))
    for pair in pairs:
        cells = []
        for m in methods:
            r = next((r for r in rows if (r["source"], r["target"]) == pair and r["method"] == m), None)
            if r is None or r["target_acc_mean"] is None:
                cells.append("n/a")
            else:
                src = "" if r["source_acc_mean"] is None else f" ({100 * r['source_acc_mean']:.1f})"
                cells.append(f"{_pm(r['target_acc_mean'], r['target_acc_std'])}{src}")
        lines.append(f"| {pair[0]} -> {pair[1]} | " + " | ".join(cells) + " |")
    reused = [f"- {r['source']} -> {r['target']}, {r['method']}: {_reused_cell(r)}" for r in rows if r.get("reused")]
    if reused:
        lines += ["", "Reused runs (finished before this call with the same recipe: settings, method version and "
                      "parameters), and the dalab version that trained them:", *reused]
    fails = [f"- {r['source']} -> {r['target']}, {r['method']}, {f}" for r in rows for f in r["failures"]]
    return _with_footer(lines, rows, fails, "Last-epoch models; no target label used for training, tuning or "
                                            "model choice.")


def _grid(suite: str, methods: list[str] | None, pairs, epochs_for: dict | None):
    """The suite's spec, the entries and pairs asked for, and checked ``epochs_for``."""
    if suite not in SUITES:
        raise DalabError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    spec = SUITES[suite]
    entries = spec["entries"]
    if methods:
        known = {e.key for e in entries}
        bad = [m for m in methods if m not in known]
        if bad:
            raise DalabError(f"method {bad[0]!r} is not in suite {suite} ({', '.join(sorted(known))})")
        entries = [e for e in entries if e.key in methods]
    epochs_for = dict(epochs_for or {})
    bad = [m for m in epochs_for if m not in {e.key for e in entries}]
    if bad:
        raise DalabError(f"--epochs-for: {bad[0]!r} is not among the methods run "
                         f"({', '.join(e.key for e in entries)})")
    if any(not isinstance(n, int) or n < 1 for n in epochs_for.values()):
        raise DalabError("--epochs-for: epochs must be positive integers")
    assert all(e.method in METHODS for e in entries)
    all_pairs = suite_pairs(spec)
    if pairs:
        bad = [p for p in pairs if tuple(p) not in all_pairs]
        if bad:
            raise DalabError(f"pair {bad[0][0]}:{bad[0][1]} is not in suite {suite} "
                             f"({', '.join(f'{a}:{b}' for a, b in all_pairs)})")
        all_pairs = [p for p in all_pairs if p in {tuple(q) for q in pairs}]
    return spec, entries, all_pairs, epochs_for


def run_benchmark(suite: str, seeds: int, out, *, methods: list[str] | None = None, epochs: int | None = None,
                  limit_train: int | None = None, limit_eval: int | None = None, device: str | None = None,
                  data_dir: str | None = None, precision: str | None = None, progress: bool = True,
                  log=print, jobs: int = 1, pairs: list[tuple[str, str]] | None = None,
                  epochs_for: dict[str, int] | None = None, launcher=None) -> dict:
    """Run (or reuse, or continue) every (method, seed) run of ``suite`` and write the table.

    ``epochs`` overrides every entry's epochs, ``epochs_for`` ({entry name: epochs}) single entries'.
    A finished run asked for more epochs than it has is continued from its checkpoint, not restarted.
    ``jobs > 1`` trains in a local pool of processes; ``launcher`` (a
    :class:`~dalab.training.launcher.SubmititLauncher`) hands the runs to Slurm (or submitit's local
    executor). Either way, warm-started runs go in a second wave, after the first has finished. A
    launcher that does not wait returns ``{"rows": None, "table": None, "runs": ...}`` once submitted.
    """
    spec, entries, all_pairs, epochs_for = _grid(suite, methods, pairs, epochs_for)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(epochs=epochs, limit_train=limit_train, limit_eval=limit_eval, device=device,
                  data_dir=data_dir, precision=precision)
    per_entry = {e.key: ({**common, "epochs": epochs_for[e.key]} if e.key in epochs_for else common)
                 for e in entries}
    how = (launcher.describe() if launcher is not None else f"local pool of {jobs} processes" if jobs > 1
           else "in this process")
    atomic_write_json(out / PLAN, {"suite": suite, "seeds": seeds, "methods": [e.key for e in entries],
                                   "pairs": [list(p) for p in all_pairs], "settings": common,
                                   "epochs_for": epochs_for, "launcher": how})
    done: dict[tuple, dict] = {}
    if jobs > 1 or launcher is not None:
        # independent runs in parallel processes or cluster jobs; warm-started entries after their parents
        unfinished: set[Path] = set()  # runs submitted but not finished (a launcher that does not wait)
        for phase in (False, True):
            todo, labels = [], {}
            for pair in all_pairs:
                pout = _pair_out(out, spec, pair)
                for e in entries:
                    if (e.init_from_method is not None) != phase:
                        continue
                    for seed in range(seeds):
                        key = (pair, e.key, seed)
                        if phase and _run_dir(pout, e.init_from_method, seed) in unfinished:
                            done[key] = {**_failed(e.method, seed, f"starts from the {e.init_from_method} run of "
                                                   f"seed {seed}, not finished yet: run this command again once "
                                                   "it has"), "status": "waiting"}
                            continue
                        kind, val = decide(e, pair, seed, pout, per_entry[e.key], log,
                                           check_jobs=launcher is None)
                        if kind != "train":
                            done[key] = val
                            continue
                        label = f"{pair[0]}->{pair[1]} {e.key} seed {seed}"
                        labels[label] = (key, _run_dir(pout, e.key, seed))
                        todo.append(Job(label, TrainConfig(**val), _run_dir(pout, e.key, seed)))
            ran = launcher.run(todo) if launcher is not None else run_parallel(todo, jobs, log=log)
            for label, res in ran.items():
                done[labels[label][0]] = res
                if res.get("status") == "submitted":
                    unfinished.add(labels[label][1])
    results: dict[tuple, list[dict]] = {}
    for pair in all_pairs:
        pout = _pair_out(out, spec, pair)
        for e in entries:
            for seed in range(seeds):
                s = done.get((pair, e.key, seed)) or run_one(e, pair, seed, pout, per_entry[e.key], progress, log)
                acc = headline(s, "target_test")
                where = f"{pair[0]}->{pair[1]} " if "pairs" in spec else ""
                log(f"{where}{e.key:13s} seed {seed}: {s.get('status')}"
                    + (" (reused)" if s.get("reused") else "")
                    + (f"  target {100 * acc:.2f}%" if acc is not None else f"  ({s.get('failure')})"))
                results.setdefault((pair, e.key), []).append(s)
    if any(s.get("status") in ("submitted", "waiting") for runs in results.values() for s in runs):
        n_sub = sum(s.get("status") == "submitted" for runs in results.values() for s in runs)
        n_wait = sum(s.get("status") == "waiting" for runs in results.values() for s in runs)
        log(f"submitted {n_sub} run{'s' * (n_sub != 1)}" + (f"; {n_wait} wait for their parents (run this command "
                                                             "again once those have finished)" if n_wait else "")
            + f". `dalab benchmark --collect {out}` builds the table from what has finished "
              "(--wait: waits for the jobs).")
        return {"rows": None, "table": None, "runs": {f"{k[0][0]}->{k[0][1]} {k[1]}": v for k, v in results.items()}}
    return _write_table(out, suite, spec, entries, all_pairs, results, seeds, common, epochs_for,
                        {"launcher": how})


def _write_table(out: Path, suite: str, spec: dict, entries, all_pairs, results: dict, seeds: int, common: dict,
                 epochs_for: dict, extra: dict) -> dict:
    """Aggregate ``results`` ({(pair, entry key): [summary or failure record]}) into OUT/benchmark.md/.json."""
    if "pairs" in spec:
        rows = []
        for pair in all_pairs:
            for r in aggregate({e.key: results[(pair, e.key)] for e in entries}, seeds):
                rows.append({"source": pair[0], "target": pair[1], **r})
        table = format_pair_table(rows, suite, [e.key for e in entries])
    else:
        rows = aggregate({e.key: results[(all_pairs[0], e.key)] for e in entries}, seeds)
        table = format_table(rows, suite)
    atomic_write_text(out / "benchmark.md", table)
    atomic_write_json(out / "benchmark.json", {"suite": suite, "seeds": seeds, "rows": rows,
                                               "settings": {k: v for k, v in common.items() if v is not None},
                                               **({"epochs_for": epochs_for} if epochs_for else {}),
                                               **({"gap_closed": gap_closed(rows)} if "pairs" not in spec else {}),
                                               **extra})
    return {"rows": rows, "table": table}


def _not_finished(run_dir: Path, method: str, seed: int) -> dict:
    """The record of a run with no finished summary: its recorded job's state or outcome (with the job's log),
    or that it was not run (or was cut: it has a checkpoint)."""
    from ..training.launcher import LIVE_STATES, read_record, record_outcome, record_state

    rec = read_record(run_dir)
    cut = " (cut: it resumes from its ckpt.pt when the benchmark runs again)" if (run_dir / "ckpt.pt").is_file() else ""
    if rec is None:
        return {**_failed(method, seed, "not run yet" + cut), "status": "missing"}
    where = f"job {rec['job_id']}, log {rec.get('stdout')}"
    try:
        state = record_state(rec)
    except DalabError:  # submitit is not installed here
        return {**_failed(method, seed, f"submitted as {where}; its state needs submitit"), "status": "missing"}
    if state in LIVE_STATES:
        return {**_failed(method, seed, f"{state.lower()} ({where})"), "status": state.lower()}
    res = record_outcome(rec, method, seed)
    if res.get("status") == "completed":  # its summary.json has gone since (e.g. the run is being continued)
        return {**_failed(method, seed, f"finished as {where} but its summary.json is missing" + cut),
                "status": "missing"}
    return res


def collect_benchmark(out, *, wait: bool = False, progress: bool = True, log=print) -> dict:
    """Build the table of the benchmark in ``out`` from the runs that have finished, without training
    anything; each run that has not finished is listed with why (its job's state or error, and log).

    ``wait``: first wait for the runs whose recorded jobs are pending or running (progress bar). Returns
    ``{"rows", "table", "counts"}``; ``counts`` maps a status (completed, diverged, failed, running, ...) to
    its number of runs.
    """
    from ..training.launcher import read_record, record_live, track, wait_for

    out = Path(out)
    plan_file = out / PLAN
    if not plan_file.is_file():
        raise DalabError(f"--collect {out}: no {PLAN} there (written by `dalab benchmark --out {out}`)")
    try:
        plan = json.loads(plan_file.read_text())
        suite, seeds, common = plan["suite"], int(plan["seeds"]), dict(plan["settings"])
    except (ValueError, KeyError, TypeError):
        raise DalabError(f"--collect {out}: {PLAN} is damaged") from None
    spec, entries, all_pairs, epochs_for = _grid(suite, plan.get("methods"), plan.get("pairs"), plan.get("epochs_for"))
    per_entry = {e.key: ({**common, "epochs": epochs_for[e.key]} if e.key in epochs_for else common)
                 for e in entries}

    def every_run():
        for pair in all_pairs:
            pout = _pair_out(out, spec, pair)
            for e in entries:
                for seed in range(seeds):
                    yield pair, pout, e, seed, _run_dir(pout, e.key, seed)

    if wait:
        live = []
        for pair, pout, e, seed, run_dir in every_run():
            rec = read_record(run_dir)
            if not (run_dir / "summary.json").is_file() and rec is not None and record_live(rec):
                cfg = _run_config(e, pair, seed, pout, per_entry[e.key])[0] or {
                    "method": e.method, "seed": seed, "source": pair[0], "target": pair[1]}
                live.append(track(Job(f"{pair[0]}->{pair[1]} {e.key} seed {seed}", TrainConfig(**cfg), run_dir), rec))
        if live:
            wait_for(live, progress=progress, log=log,
                     poll_s=0.5 if all(t.record.get("executor") == "local" for t in live) else 15.0)
        else:
            log("no pending or running job to wait for")
    results: dict[tuple, list[dict]] = {}
    counts: dict[str, int] = {}
    for pair, pout, e, seed, run_dir in every_run():
        kind, *rest = inspect_run(e, pair, seed, pout, per_entry[e.key])
        if kind in ("reuse", "fail"):
            s = rest[0]
        elif kind == "stale":
            s = _failed(e.method, seed, f"stale ({'; '.join(rest[1])}): the benchmark command moves it aside and "
                                        "trains it again")
            s["status"] = "stale"
        else:
            s = _not_finished(run_dir, e.method, seed)
        counts[s.get("status") or "unknown"] = counts.get(s.get("status") or "unknown", 0) + 1
        results.setdefault((pair, e.key), []).append(s)
    total = sum(counts.values())
    log(f"{out}: {counts.get('completed', 0)} of {total} runs completed"
        + "".join(f", {n} {k}" for k, n in sorted(counts.items()) if k != "completed"))
    res = _write_table(out, suite, spec, entries, all_pairs, results, seeds, common, epochs_for,
                       {"collected": True, "counts": counts, "launcher": plan.get("launcher")})
    return {**res, "counts": counts}
