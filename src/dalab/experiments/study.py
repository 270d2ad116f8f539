"""``dalab study``: the practical's four questions, answered by measured runs.

The study is a list of runs (:class:`RunSpec`), each trained by the one
:class:`~dalab.training.Trainer` into ``DIR/runs/<budget>/<key>-s<seed>/`` where the
folder name encodes the configuration. A run whose ``summary.json`` exists (completed *or*
diverged) is reused; a run killed mid-way resumes from its ``ckpt.pt``. Analyses (proxy
A-distance, t-SNE, pseudo-label quality) are cached as files under ``DIR/analysis/``.
So a killed study restarts where it stopped, and re-running a finished one only rebuilds
the report.

Protocol: target labels are never used for training or model selection (the model kept
is the last epoch's). They are read only to *measure* target test accuracy and, after the
fact, the accuracy of the pseudo-labels the methods picked.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data import load_domain
from ..data.io import atomic_save_npz, atomic_write_json
from ..errors import DalabError
from ..training import TrainConfig, Trainer, load_model, resolve_device

# a run whose source *validation* accuracy ends below this has broken down (source labels only)
COLLAPSE_SOURCE_VAL = 0.5


@dataclass
class Preset:
    name: str
    epochs: int
    limit_train: int | None
    limit_eval: int | None
    seeds: int = 3
    batch_size: int = 64
    lambdas: tuple[float, ...] = (0, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30)
    # (schedule, gamma) at lambda_max = 1
    schedules: tuple[tuple[str, float], ...] = (("ganin", 10.0), ("ganin", 2.0), ("constant", 10.0))
    pl_epochs: int = 3                      # = rounds (relabel every epoch)
    # (method, teacher key, method_args)
    pl_runs: tuple = ()
    pl_curve_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
    cb_fraction: float = 0.5
    tsne_per_domain: int = 1000
    pad_per_domain: int = 2000
    precision: str = "auto"
    optimizer: str = "sgd"
    note: str = ""

    def budget_tag(self) -> str:
        n = "all" if self.limit_train is None else str(self.limit_train)
        ev = "all" if self.limit_eval is None else str(self.limit_eval)
        opt = "" if self.optimizer == "sgd" else f"-{self.optimizer}"
        return f"e{self.epochs}-n{n}-ev{ev}-b{self.batch_size}{opt}"


PL_DEFAULT = (
    ("pseudo-label", "source-only", {"threshold": 0.9}),
    ("pseudo-label", "source-only", {"class_balanced": True, "fraction": 0.5}),
    ("dann-pl", "dann_ganin-g10_lam1", {"threshold": 0.9}),
)

PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "quick", epochs=5, limit_train=20000, limit_eval=5000, pl_epochs=3, pl_runs=PL_DEFAULT,
        note=("quick: the first 20,000 training images of each domain, 5 epochs per run, evaluation on the "
              "first 5,000 images of each test split, 9 constant-lambda points, 3 schedules, 3 pseudo-label "
              "runs of 3 rounds. About 30 min on 2 idle CPU cores.")),
    "full": Preset(
        "full", epochs=20, limit_train=None, limit_eval=None, pl_epochs=5,
        lambdas=(0, 0.01, 0.03, 0.1, 0.3, 0.5, 1, 2, 3, 5, 10, 30, 100),
        schedules=(("ganin", 10.0), ("ganin", 5.0), ("ganin", 2.0), ("constant", 10.0)),
        pl_runs=PL_DEFAULT + (
            ("pseudo-label", "source-only", {"threshold": 0.8}),
            ("pseudo-label", "source-only", {"threshold": 0.95}),
            ("pseudo-label", "dann_ganin-g10_lam1", {"threshold": 0.9}),
            ("dann-pl", "dann_ganin-g10_lam1", {"class_balanced": True, "fraction": 0.5}),
        ),
        note=("full: all 50,000 training images per domain, 20 epochs per run, full test splits, 13 constant-"
              "lambda points, 4 schedules, 7 pseudo-label runs of 5 rounds. Meant for a GPU.")),
    # test-only: the whole pipeline on a tiny cache in well under a minute
    "smoke": Preset(
        "smoke", epochs=3, limit_train=256, limit_eval=128, batch_size=32, lambdas=(0, 1e4),
        schedules=(("ganin", 10.0), ("ganin", 2.0)),
        pl_epochs=2, pl_runs=PL_DEFAULT, tsne_per_domain=60, pad_per_domain=100, optimizer="adam",
        precision="fp32", note="smoke: a test-only preset on a tiny synthetic cache (Adam, 3 epochs)."),
}


@dataclass
class RunSpec:
    key: str
    method: str
    seed: int
    epochs: int
    lambda_max: float = 1.0
    lambda_schedule: str = "ganin"
    gamma: float = 10.0
    method_args: dict | None = None
    teacher: str | None = None
    label: str = ""

    def folder(self, root: Path, preset: Preset) -> Path:
        return root / "runs" / preset.budget_tag() / f"{self.key}-s{self.seed}"


def _num(v: float) -> str:
    return f"{v:g}"


def dann_key(lam: float, schedule: str, gamma: float, method: str = "dann") -> str:
    sched = f"ganin-g{_num(gamma)}" if schedule == "ganin" else "const"
    return f"{method}_{sched}_lam{_num(lam)}"


def pl_key(method: str, teacher: str, args: dict) -> str:
    sel = f"cb{_num(args.get('fraction', 0.5))}" if args.get("class_balanced") else f"thr{_num(args.get('threshold', 0.9))}"
    return f"{method}_from-{teacher}_{sel}"


def plan(preset: Preset, seeds: int) -> list[RunSpec]:
    """Every run of the study, seed-major (seed 0's runs first), duplicates removed."""
    specs: list[RunSpec] = []
    for seed in range(seeds):
        one: list[RunSpec] = [
            RunSpec("source-only", "source-only", seed, preset.epochs, label="source-only"),
            RunSpec(dann_key(1, "ganin", 10), "dann", seed, preset.epochs, label="DANN"),
            RunSpec(dann_key(1, "ganin", 10, "no-grl"), "no-grl", seed, preset.epochs, label="no GRL"),
        ]
        for lam in preset.lambdas:
            one.append(RunSpec(dann_key(lam, "constant", 10), "dann", seed, preset.epochs, lambda_max=float(lam),
                               lambda_schedule="constant", label=f"DANN, constant lambda={_num(lam)}"))
        for sched, gamma in preset.schedules:
            one.append(RunSpec(dann_key(1, sched, gamma), "dann", seed, preset.epochs, lambda_schedule=sched,
                               gamma=gamma, label=schedule_label(sched, gamma)))
        for method, teacher, args in preset.pl_runs:
            one.append(RunSpec(pl_key(method, teacher, args), method, seed, preset.pl_epochs,
                               method_args=dict(args), teacher=teacher,
                               label=pl_label(method, teacher, args)))
        seen = {s.key for s in specs if s.seed == seed}
        for s in one:
            if s.key not in seen:
                seen.add(s.key)
                specs.append(s)
    return specs


def schedule_label(schedule: str, gamma: float) -> str:
    return f"ganin ramp, gamma={_num(gamma)}" if schedule == "ganin" else "constant lambda"


def pl_label(method: str, teacher: str, args: dict) -> str:
    t = "source-only" if teacher == "source-only" else "DANN"
    sel = (f"class-balanced top {100 * args.get('fraction', 0.5):.0f}%/class" if args.get("class_balanced")
           else f"confidence >= {_num(args.get('threshold', 0.9))}")
    name = "DANN + pseudo-labels" if method == "dann-pl" else "pseudo-labels"
    return f"{name} ({sel}; teacher {t})"


def train_config(spec: RunSpec, preset: Preset, device: str, data_dir, init_from: str | None) -> TrainConfig:
    return TrainConfig(method=spec.method, epochs=spec.epochs, seed=spec.seed, batch_size=preset.batch_size,
                       optimizer=preset.optimizer,
                       lambda_max=spec.lambda_max, lambda_schedule=spec.lambda_schedule, gamma=spec.gamma,
                       limit_train=preset.limit_train, limit_eval=preset.limit_eval, device=device,
                       precision=preset.precision, data_dir=None if data_dir is None else str(data_dir),
                       init_from=init_from, method_args=spec.method_args)


def _net_options() -> str:
    """The trainer defaults every study run uses on top of Ganin's network (stated in the report)."""
    d = TrainConfig()
    parts = ["batch norm (per-domain batch statistics)" if d.batch_norm else "no batch norm",
             f"{d.input_norm} input normalisation",
             f"weight EMA {d.ema_decay:g} for the evaluated model" if d.ema_decay > 0 else "no weight EMA"]
    return ", ".join(parts)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def run_status(summary: dict | None) -> str:
    """completed | collapsed | diverged | missing (collapse judged on *source* validation accuracy)."""
    if summary is None:
        return "missing"
    if summary.get("status") != "completed":
        return "diverged"
    v = summary.get("source_val_acc")
    if v is None or not math.isfinite(v) or v < COLLAPSE_SOURCE_VAL:
        return "collapsed"
    return "completed"


class Study:
    def __init__(self, preset: str | Preset, out, device: str = "auto", seeds: int | None = None,
                 data_dir=None, log=print, jobs: int = 1, threads: int | None = None, launcher=None):
        self.jobs, self.threads = int(jobs), threads
        self.launcher = launcher  # a SubmititLauncher (dalab.training.launcher): runs go to Slurm
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise DalabError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
            preset = PRESETS[preset]
        self.preset = preset
        self.seeds = int(seeds or preset.seeds)
        if self.seeds <= 0:
            raise DalabError(f"--seeds must be a positive integer, got {seeds}")
        self.out = Path(out).resolve()
        self.device = device
        if launcher is None:
            resolve_device(device)  # fail early, one line
        elif not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):  # resolved on the nodes; the name checked here
            raise DalabError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N, mps)")
        self.data_dir = data_dir
        self.log = log
        self.specs = plan(preset, self.seeds)
        self.analysis_dir = self.out / "analysis" / preset.budget_tag()

    # ------------------------------------------------------------------ runs
    def _init_from(self, spec: RunSpec) -> str | None:
        if spec.teacher is None:
            return None
        return str(self.out / "runs" / self.preset.budget_tag() / f"{spec.teacher}-s{spec.seed}" / "model.pt")

    def run_one(self, spec: RunSpec) -> dict | None:
        folder = spec.folder(self.out, self.preset)
        summary = _read_json(folder / "summary.json")
        if summary is not None:
            return summary
        init = self._init_from(spec)
        if init is not None and not Path(init).is_file():
            return None  # teacher missing (diverged): recorded as not run
        cfg = train_config(spec, self.preset, self.device, self.data_dir, init)
        return Trainer(cfg, folder, progress=False, resume=True).fit()

    def run(self) -> dict:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DalabError(f"--out {self.out}: cannot create it ({e.strerror})") from None
        t0 = time.perf_counter()
        n = len(self.specs)
        self.log(f"study '{self.preset.name}': {n} runs ({len(self.specs) // self.seeds} configurations x "
                 f"{self.seeds} seeds) into {self.out}")
        trained, spent = 0, 0.0
        parallel = self.jobs > 1 or self.launcher is not None
        if parallel:
            self._run_parallel()
        for i, spec in enumerate([] if parallel else self.specs, 1):
            folder = spec.folder(self.out, self.preset)
            cached = (folder / "summary.json").is_file()
            t = time.perf_counter()
            s = self.run_one(spec)
            if s is None:
                self.log(f"[{i}/{n}] {spec.key} seed {spec.seed}: skipped (teacher {spec.teacher} has no model)")
                continue
            st = run_status(s)
            acc = s.get("target_test_acc")
            if cached:
                what = "cached"
            else:
                dt = time.perf_counter() - t
                trained, spent = trained + 1, spent + dt
                what = f"{dt:.1f} s, about {spent / trained * (n - i) / 60:.0f} min left"
            self.log(f"[{i}/{n}] {spec.key} seed {spec.seed}: {st}"
                     + (f", target {100 * acc:.1f}%" if acc is not None else "") + f" ({what})")
        self.log("analysis: proxy A-distance, t-SNE, pseudo-label quality")
        analysis = self.analyse()
        results = self.collect(analysis)
        results["study_seconds_this_invocation"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(self.out / "results.json", results)
        return results

    def _run_parallel(self) -> None:
        """``--jobs N`` (independent runs in N processes) or a launcher (Slurm jobs); pseudo-label runs
        after their teachers, in a second wave."""
        from ..training.pool import Job, run_parallel

        for phase in (False, True):  # teachers first, then the runs that start from them
            todo = []
            for spec in self.specs:
                if (spec.teacher is not None) != phase:
                    continue
                init = self._init_from(spec)
                if init is not None and not Path(init).is_file():
                    self.log(f"{spec.key} seed {spec.seed}: skipped (teacher {spec.teacher} has no model)")
                    continue
                cfg = train_config(spec, self.preset, self.device, self.data_dir, init)
                todo.append(Job(f"{spec.key} seed {spec.seed}", cfg, spec.folder(self.out, self.preset)))
            if self.launcher is not None:
                self.launcher.run(todo)
            else:
                run_parallel(todo, self.jobs, self.threads, log=self.log)

    # ------------------------------------------------------------------ analysis
    def _data(self):
        if not hasattr(self, "_cache"):
            self._cache = (load_domain("mnist", self.data_dir), load_domain("mnistm", self.data_dir))
        return self._cache

    def _model(self, key: str, seed: int):
        p = self.out / "runs" / self.preset.budget_tag() / f"{key}-s{seed}" / "model.pt"
        if not p.is_file():
            return None
        model, _ = load_model(p, resolve_device(self.device))
        return model

    def analyse(self) -> dict:
        from ..evaluation.domain_shift import proxy_a_distance, tsne_2d
        from ..evaluation.pseudo_labels import (class_balanced_quality, model_probs, pseudo_label_curve,
                                                pseudo_label_quality)
        from ..models.inference import extract_features

        pre = self.preset
        src, tgt = self._data()
        dev = resolve_device(self.device)
        xs, _ = src["test"].tensors("cpu", pre.pad_per_domain)
        xt, _ = tgt["test"].tensors("cpu", pre.pad_per_domain)
        ad = self.analysis_dir
        out: dict = {"pad": {}, "tsne": {}, "pl_curve": {}, "pl_final": {}}
        q1 = ["source-only", dann_key(1, "ganin", 10), dann_key(1, "ganin", 10, "no-grl")]

        # proxy A-distance (raw pixels, then learned features of each Q1 model and seed) and t-SNE
        # (seed 0 models): features are computed here one model at a time; the scikit-learn fits,
        # which take most of the analysis time and are independent, then run in a thread pool
        todo: list[tuple] = []  # (file, function, args, extra arrays saved with a t-SNE)
        for seed in range(self.seeds):
            f = ad / f"pad_pixels-s{seed}.json"
            if not f.is_file():
                todo.append((f, proxy_a_distance, (xs.float().flatten(1).numpy() / 255.0,
                                                   xt.float().flatten(1).numpy() / 255.0, seed), None))
        n = pre.tsne_per_domain
        for key in q1:
            for seed in range(self.seeds):
                f = ad / f"pad_{key}-s{seed}.json"
                t = ad / f"tsne_{key}-s0.npz"
                if f.is_file() and (seed or t.is_file()):
                    continue
                m = self._model(key, seed)
                if m is None:
                    continue
                fs = extract_features(m, xs.to(dev), domain="source").cpu().numpy()
                ft = extract_features(m, xt.to(dev), domain="target").cpu().numpy()
                if not f.is_file():
                    todo.append((f, proxy_a_distance, (fs, ft, seed), None))
                if seed == 0 and not t.is_file():
                    dom = np.r_[np.zeros(min(n, len(fs))), np.ones(min(n, len(ft)))].astype(np.int8)
                    todo.append((t, tsne_2d, (np.concatenate([fs[:n], ft[:n]]), 0), dom))
        if todo:
            with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1)) as pool:
                futures = [(f, extra, pool.submit(fn, *args)) for f, fn, args, extra in todo]
                for f, extra, fut in futures:
                    if extra is None:
                        atomic_write_json(f, fut.result())
                    else:
                        atomic_save_npz(f, emb=fut.result(), domain=extra)
        for key in ["pixels"] + q1:
            for seed in range(self.seeds):
                f = ad / f"pad_{key}-s{seed}.json"
                if f.is_file():
                    out["pad"].setdefault(key, []).append(_read_json(f))
        for key in q1:
            f = ad / f"tsne_{key}-s0.npz"
            if f.is_file():
                out["tsne"][key] = str(f.relative_to(self.out))

        # pseudo-label quality of each teacher against the threshold (target labels: measurement only)
        xtr, ytr = tgt["train"].tensors("cpu", pre.limit_train)
        for teacher in ("source-only", dann_key(1, "ganin", 10)):
            for seed in range(self.seeds):
                f = ad / f"plcurve_{teacher}-s{seed}.json"
                if not f.is_file():
                    m = self._model(teacher, seed)
                    if m is None:
                        continue
                    probs = model_probs(m, xtr.to(dev))
                    y = ytr.numpy()
                    atomic_write_json(f, {"curve": pseudo_label_curve(probs, y, pre.pl_curve_thresholds),
                                          "class_balanced": class_balanced_quality(probs, y, pre.cb_fraction),
                                          "teacher_target_train_acc": float((probs.argmax(1) == y).mean())})
                out["pl_curve"].setdefault(teacher, []).append(_read_json(f))

        # final-round pseudo-labels of each pseudo-label run (saved in its ckpt.pt as method buffers)
        import torch

        for spec in self.specs:
            if spec.teacher is None:
                continue
            f = ad / f"plfinal_{spec.key}-s{spec.seed}.json"
            ck = spec.folder(self.out, pre) / "ckpt.pt"
            if not f.is_file() and ck.is_file() and (spec.folder(self.out, pre) / "summary.json").is_file():
                state = torch.load(ck, map_location="cpu", weights_only=True)["method"]
                if "pl_labels" in state and len(state["pl_labels"]) == len(ytr):
                    atomic_write_json(f, pseudo_label_quality(state["pl_labels"].numpy(),
                                                              state["pl_mask"].numpy(), ytr.numpy()))
            if f.is_file():
                out["pl_final"].setdefault(spec.key, []).append(_read_json(f))
        return out

    # ------------------------------------------------------------------ results
    def collect(self, analysis: dict) -> dict:
        pre = self.preset
        src, tgt = self._data()
        runs: dict[str, dict] = {}
        for spec in self.specs:
            folder = spec.folder(self.out, pre)
            summary = _read_json(folder / "summary.json")
            r = runs.setdefault(spec.key, {"key": spec.key, "label": spec.label, "method": spec.method,
                                           "lambda_max": spec.lambda_max, "lambda_schedule": spec.lambda_schedule,
                                           "gamma": spec.gamma, "method_args": spec.method_args,
                                           "teacher": spec.teacher, "seeds": []})
            r["seeds"].append({"seed": spec.seed, "status": run_status(summary), "summary": summary,
                               "history": _read_metrics(folder / "metrics.jsonl"),
                               "folder": str(folder.relative_to(self.out))})
        first = next((s["summary"] for r in runs.values() for s in r["seeds"] if s["summary"]), {}) or {}
        return {
            "format": "dalab-study-v1",
            "preset": asdict(pre), "seeds": self.seeds, "device_requested": self.device,
            "device": first.get("device"), "device_name": first.get("device_name"),
            "precision": first.get("precision"),
            "protocol": {
                "source": "mnist", "target": "mnistm",
                "source_description": src.description, "target_description": tgt.description,
                "n_train_per_domain": pre.limit_train or len(src["train"]),
                "n_eval": pre.limit_eval, "net_options": _net_options(), "target_labels": (
                    "never used for training or model selection (the model kept is the last epoch's); read "
                    "only to measure target test accuracy and, after the fact, pseudo-label accuracy"),
                "collapse_rule": f"a run has broken down if it diverged (non-finite loss) or its source "
                                 f"validation accuracy ended below {COLLAPSE_SOURCE_VAL:.0%}",
            },
            "runs": runs, "analysis": analysis,
            "order": list(dict.fromkeys(spec.key for spec in self.specs)),
        }
