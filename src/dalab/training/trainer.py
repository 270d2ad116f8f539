"""The one trainer: whole datasets as tensors on the device, a method's loss per step.

Per step it slices a random batch of source (and target) images out of device-resident
uint8 tensors with one index op, so there is no DataLoader and no per-sample Python.
Ganin's schedules drive the learning rate, ``mu_p = mu_0 / (1 + 10 p)^0.75``, and the
GRL strength (inside the method). Every ``eval_every`` epochs it evaluates, appends a
metrics row, and writes an atomic resume checkpoint. Metrics stay on the device and are
read once per log interval, so the GPU is never forced to wait each step.

Protocol: target labels reach the loss only for the oracle ``target-only``; the target
*test* accuracy recorded per epoch is for plots, and the model kept is always the last
epoch's, never one chosen by a target score.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from .. import __version__
from ..data import data_dir, load_domain
from ..data.folder import check_pair
from ..data.io import atomic_write_json, atomic_write_text, sha256_file
from ..errors import DalabError, TrainingFailure
from ..methods import Batch, Method, check_method_args, make_method
from ..models.batchnorm import calibrate_bn, domain_bns, has_batch_norm
from ..models.inference import accuracy_of, autocast_ctx
from ..models.nets import CHECKPOINT_ARCH, DANNNet
from ..tasks import TASKS, evaluate_batches, evaluate_model, metric_of
from . import autotune
from .checkpoint import CKPT_FORMAT, load_checked, save_atomic, save_model
from .config import TrainConfig
from .distributed import (all_finite, all_mean, all_sum, barrier, broadcast_choice, env_dist_info,
                          init_distributed, wrap_step)
from .fastpath import optimizer_kwargs, take_rows

RUN_FILES = ("summary.json", "metrics.jsonl", "model.pt", "ckpt.pt")
STREAM_CALIBRATION = 100  # AdaBN images per domain when the domains are read from files


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> torch.device:
    # Apple's "mps" is chosen after CUDA; dalab's tests only mock it (untested on a real Mac).
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    if name == "mps":
        if not _mps_available():
            raise DalabError("--device mps: Apple's MPS backend is not available on this machine (use cpu or auto)")
        return torch.device("mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DalabError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise DalabError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)")


def ganin_lr(lr0: float, p: float) -> float:
    """Ganin's annealing: ``lr0 / (1 + 10 p) ** 0.75``."""
    return lr0 / (1.0 + 10.0 * p) ** 0.75


def _index_stream(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` indices in [0, n): concatenated random permutations (each image once per pass)."""
    reps = math.ceil(count / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:count]


def _rng_state(gen: torch.Generator) -> dict:
    st = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["gen"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class Trainer:
    """Train one method on one source -> target pair. See :meth:`fit`."""

    def __init__(self, config: TrainConfig, out: str | os.PathLike | None = None,
                 method: Method | None = None, progress: bool = True, overwrite: bool = False,
                 resume: bool = False, logger=None, data=None, model: torch.nn.Module | None = None):
        self.cfg = config.validate()
        self.out = Path(out) if out is not None else None
        if method is None:
            check_method_args(config.method, config.method_args)
        self.method = method or make_method(config.method, lambda_max=config.lambda_max,
                                            schedule=config.lambda_schedule, gamma=config.gamma,
                                            **(config.method_args or {}))
        self.progress = progress
        self.overwrite = overwrite
        self.resume = resume
        self.logger = logger  # optional callable(epoch_metrics: dict), e.g. TensorBoard
        # In-memory data (a ``TensorData``, see training/in_memory.py) replaces the domains on
        # disk, and a user's own network replaces the default DANNNet; same loop either way.
        self.data = data
        self.user_model = model
        # sha256 of the --init-from file the run started from: recorded so that a benchmark can tell when
        # that parent run has since changed (e.g. was trained for longer) and this run no longer follows from it
        self._init_sha256: str | None = None
        self.model: torch.nn.Module | None = None  # the trained network, set by fit()
        self.device = resolve_device(config.device)
        self.dist = env_dist_info()  # world size 1 unless launched by torchrun
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        # "auto" until fit() measures (training/autotune.py); then what the run trains with
        self.precision = config.precision
        self.speed: autotune.SpeedChoice | None = None

    # ------------------------------------------------------------------ set-up
    def _prepare_out(self) -> dict | None:
        """Check the output folder; return a resume checkpoint if one should be used."""
        if self.out is None:
            return None
        if self.out.exists() and not self.out.is_dir():
            raise DalabError(f"--out {self.out}: exists and is not a folder")
        existing = [f for f in RUN_FILES if (self.out / f).exists()]
        if self.resume and (self.out / "ckpt.pt").exists():
            ck = load_checked(self.out / "ckpt.pt", CKPT_FORMAT)
            mine = self.cfg.to_dict()
            # a setting added after the checkpoint was written (arch in 0.3, adam_beta1 in 0.4) had its
            # default's behaviour then: Ganin's network, Adam's beta1 0.9
            theirs = {**TrainConfig().to_dict(), **{k: v for k, v in ck["config"].items() if k in mine}}
            # init_from is not compared: a resumed run's weights come from the checkpoint
            # channels_last None ("auto"): the memory format the checkpoint's run trained with
            diff = [k for k in mine if k not in ("device", "data_dir", "epochs", "init_from", "workers")
                    and theirs.get(k) != mine[k] and not (k == "channels_last" and mine[k] is None)]
            if diff:
                raise DalabError(f"--resume: {self.out}/ckpt.pt was made with other settings ({', '.join(diff)})")
            if int(ck["epoch"]) > self.cfg.epochs:
                raise DalabError(f"--resume: {self.out}/ckpt.pt already has {ck['epoch']} epochs; "
                                 f"--epochs {self.cfg.epochs} cannot shorten it (pass --epochs {ck['epoch']} or more)")
            if int(ck["epoch"]) < self.cfg.epochs:
                # training goes on: the summary and model of the run as it was (e.g. a finished 3-epoch
                # run continued to 6) no longer describe it; the continued run writes new ones at its end
                for f in ("summary.json", "model.pt"):
                    (self.out / f).unlink(missing_ok=True)
            self._remove_stale_tmp()
            return ck
        if existing and not (self.overwrite or self.resume):
            raise DalabError(f"--out {self.out} already holds a run ({', '.join(existing)}); "
                             "pass --overwrite to replace it or --resume to continue it")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise DalabError(f"--out {self.out}: cannot write there ({e.strerror})") from None
        if self.overwrite:
            for f in RUN_FILES:
                (self.out / f).unlink(missing_ok=True)
        self._remove_stale_tmp()
        return None

    def _remove_stale_tmp(self) -> None:
        """Delete temporary files of a run killed mid-write (see ``atomic_write``); the real files are intact."""
        for f in RUN_FILES:
            for tmp in self.out.glob(f".{f}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def _load_data(self):
        if self.data is not None:
            return self.data.trainer_data(self.device, self.method)
        cfg = self.cfg
        src = load_domain(cfg.source, cfg.data_dir)
        tgt = load_domain(cfg.target, cfg.data_dir)
        self.task = self._check_task(src, tgt)  # one task for both domains, a method that handles it
        check_pair(src, tgt, self.method.uses_target_labels)  # unlabelled source, class-name mismatch
        if any(getattr(s, "streamed", False) for d in (src, tgt) for s in d.splits.values()):
            return self._stream_data(src, tgt)
        dev = self.device
        d = {"src": src, "tgt": tgt}
        d["xs"], d["ys"] = src["train"].tensors(dev, cfg.limit_train)
        if self.method.uses_target:
            d["xt"], d["yt_train"] = tgt["train"].tensors(dev, cfg.limit_train)
        for key, dom, split in (("src_val", src, "val"), ("src_test", src, "test"), ("tgt_test", tgt, "test")):
            d[key] = dom[split].tensors(dev, cfg.limit_eval)
        return d

    def _stream_data(self, src, tgt) -> dict:
        """Domains read from files: one training DataLoader per domain (this rank's share of each global
        batch, random scale / crop / flip) and evaluation loaders at ``eval_size``. The target's scored
        split is its ``test`` split, or ``val`` where it has no test labels (Cityscapes)."""
        cfg, W, r = self.cfg, self.dist.world_size, self.dist.rank
        if cfg.crop_size is None:  # images of many sizes, randomly rescaled: batches need one size
            raise DalabError("--crop HxW is required for domains read from files (e.g. --crop 512x1024)")
        if getattr(self.method, "needs_target_set", False):
            raise DalabError(f"method {self.method.name!r} relabels the whole target training set every epoch, "
                             "which a dataset read from files does not hold in memory")
        b = cfg.batch_size // W
        common = dict(workers=cfg.workers, rank=r, world_size=W, pin_memory=self.device.type == "cuda")
        d = {"src": src, "tgt": tgt, "streamed": True}
        self._streamed, self._stream_its = True, None
        train = dict(crop=cfg.crop_size, size=None, limit=cfg.limit_train, **common)
        d["xs_loader"] = src["train"].loader(b, True, seed=cfg.seed, **train)
        if self.method.uses_target:
            d["xt_loader"] = tgt["train"].loader(b, True, seed=cfg.seed + 1, **train)
        tgt_split = "test" if "test" in tgt.splits else "val"
        self.target_eval_split = tgt_split
        for key, dom, split in (("src_val", src, "val"), ("src_test", src, "test"), ("tgt_test", tgt, tgt_split)):
            if split in dom.splits:
                d[key] = dom[split].loader(max(1, b // 2), False, seed=cfg.seed, size=cfg.eval_size,
                                           limit=cfg.limit_eval, **common)
        return d

    def _check_task(self, src, tgt) -> str:
        """Both domains of one task, and a method that handles it (one clear error otherwise)."""
        ts, tt = getattr(src, "task", "classification"), getattr(tgt, "task", "classification")
        if ts != tt:
            raise DalabError(f"--source {self.cfg.source} is a {ts} domain and --target {self.cfg.target} a {tt} "
                             "domain: pair two domains of the same task")
        if ts not in TASKS:
            raise DalabError(f"domain {self.cfg.source}: unknown task {ts!r}")
        if ts not in self.method.tasks:
            from ..methods import METHODS

            fit = ", ".join(n for n, m in METHODS.items() if ts in m.tasks)
            raise DalabError(f"method {self.method.name!r} does not handle {ts} (methods for {ts}: {fit})")
        if ts == "segmentation" and self.user_model is None:
            if self.cfg.arch == "ganin":  # the default network of the classification task: take segmentation's
                self.cfg.arch = "segnet"
            if self.cfg.arch != "segnet":
                raise DalabError(f"--arch {self.cfg.arch} is a classification network; segmentation uses "
                                 "--arch segnet (the default) or your own network through the API")
        elif self.cfg.arch == "segnet" and self.user_model is None:
            raise DalabError(f"--arch segnet is a segmentation network; {self.cfg.source} -> {self.cfg.target} "
                             "is a classification pair")
        return ts

    def _build(self, data) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        cfg = self.cfg
        self.num_classes = int(getattr(data["src"], "num_classes", 10))
        self.classes = getattr(data["src"], "classes", None)
        if data.get("streamed"):  # a model trained on crops takes any size; the crop is what it saw
            self.input_shape = [3, *cfg.crop_size] if cfg.crop_size else None
        else:
            self.input_shape = [int(s) for s in data["xs"].shape[1:]] if "xs" in data else [3, 28, 28]
        if self.user_model is not None:
            model = self.user_model.to(self.device)
        elif cfg.arch == "segnet":
            from ..models.segnet import SegNet

            model = SegNet(num_classes=self.num_classes, batch_norm=cfg.batch_norm, input_norm=cfg.input_norm,
                           domain_bn=cfg.bn_stats == "domain").to(self.device)
        else:
            model = DANNNet(num_classes=data["src"].num_classes, batch_norm=cfg.batch_norm, arch=cfg.arch,
                            input_norm=cfg.input_norm, domain_bn=cfg.bn_stats == "domain").to(self.device)
        if cfg.init_from:
            from .checkpoint import load_model

            before = sha256_file(cfg.init_from) if Path(cfg.init_from).is_file() else None
            init, _ = load_model(cfg.init_from, self.device)  # a missing or bad file: one clear error
            self._init_sha256 = sha256_file(cfg.init_from)
            if self._init_sha256 != before:  # replaced while it was read: which weights came in is unknown
                raise DalabError(f"--init-from {cfg.init_from}: the file changed while it was read; try again")
            try:
                model.load_state_dict(init.state_dict())
            except RuntimeError:
                raise DalabError(f"--init-from {cfg.init_from}: weights do not fit this network "
                                 "(batch norm setting differs?)") from None
        self.method.to(self.device)
        self.method.setup(model, self.device)
        return model, self._optimizer(list(model.parameters()) + list(self.method.parameters()))

    def _optimizer(self, params) -> torch.optim.Optimizer:
        cfg = self.cfg
        lr = cfg.resolved_lr()
        fused = optimizer_kwargs(cfg.optimizer, self.device)  # one kernel per parameter where available
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
        return torch.optim.Adam(params, lr=lr, betas=(cfg.adam_beta1, 0.999), weight_decay=cfg.weight_decay,
                                **fused)

    def _choose_speed(self, model, data, resume_ck, batch: int, total: int) -> "autotune.SpeedChoice":
        """Precision and memory format (training/autotune.py); every rank takes rank 0's."""
        cfg = self.cfg
        net = ({"arch": cfg.arch, "batch_norm": cfg.batch_norm, "bn_stats": cfg.bn_stats, "input_norm": cfg.input_norm}
               if self.user_model is None else
               {"custom": type(model).__name__, "shapes": [list(p.shape) for p in model.parameters()]})
        lr0 = cfg.resolved_lr()
        choice = None
        if data.get("streamed") and self.dist.is_main:  # measure on the first crops of each training loader
            data = self._stream_sample(data, (autotune.WARMUP + autotune.TIMED) * batch)
        if self.dist.is_main:
            choice = autotune.resolve(
                cfg.precision, cfg.channels_last, self.device, resume_ck=resume_ck,
                cache_dir=data_dir(cfg.data_dir),
                key=autotune.cache_key(self.device, net, self.method.name, cfg.method_args, batch, cfg.channels_last),
                run=lambda cands: autotune.measure_run(
                    model, self.method, self._optimizer, data, batch, self.device, cands,
                    lambda p: ganin_lr(lr0, p) if cfg.lr_schedule == "ganin" else lr0, total, cfg.seed),
                batch=batch)
        return broadcast_choice(choice, self.dist)

    def _stream_sample(self, data: dict, n: int) -> dict:
        """The first ``n`` training crops (and labels) of each domain read from files, as in-memory tensors
        under the keys of in-memory data, for measurements that index rows."""
        out = {}
        for key, ykey in (("xs", "ys"), ("xt", "yt_train")):
            loader = data.get(f"{key}_loader")
            if loader is None:
                continue
            xs, ys = [], []
            for x, y in loader:
                xs.append(x)
                ys.append(y)
                if sum(len(v) for v in xs) >= n:
                    break
            out[key], out[ykey] = torch.cat(xs).to(self.device), torch.cat(ys).to(self.device)
        return out

    def model_config(self) -> dict:
        return {"arch": CHECKPOINT_ARCH[self.cfg.arch] if self.user_model is None else "custom",
                "num_classes": getattr(self, "num_classes", 10), "batch_norm": self.cfg.batch_norm,
                "domain_bn": self.user_model is None and self.cfg.batch_norm and self.cfg.bn_stats == "domain",
                "input_norm": self.cfg.input_norm, "task": getattr(self, "task", "classification"),
                "classes": list(getattr(self, "classes", None) or []) or None,
                "input": getattr(self, "input_shape", [3, 28, 28]), "method": self.method.name,
                "source": self.cfg.source, "target": self.cfg.target}

    # ------------------------------------------------------------------ training
    def _calibration_sets(self, data) -> dict:
        """A fixed random subset of each domain's training images for :meth:`calibrate` (no labels)."""
        n = self.cfg.bn_calibration
        keys = [("source", "xs")] + ([("target", "xt")] if self.method.uses_target else [])
        out = {}
        if data.get("streamed"):  # read from files: at most STREAM_CALIBRATION training crops per domain, kept in memory
            for dom, key in keys:
                ds = data[f"{key}_loader"].dataset
                take = min(n, STREAM_CALIBRATION, len(ds))
                if take:
                    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(self.cfg.seed + 1))[:take]
                    out[dom] = torch.stack([ds[(int(i), 0)][0] for i in idx])
            return out
        for dom, key in keys:
            x = data.get(key)
            if n and x is not None and len(x):
                g = torch.Generator().manual_seed(self.cfg.seed + 1)
                idx = torch.randperm(len(x), generator=g)[:n].to(x.device)
                out[dom] = x[idx]
        return out

    def calibrate(self, model) -> None:
        """AdaBN: recompute each domain's batch-norm statistics with the current weights (no labels)."""
        # crops read from files can be large: calibrate them a training batch at a time
        bs = max(1, self.cfg.batch_size // self.dist.world_size) if getattr(self, "_streamed", False) else 1000
        for dom, x in getattr(self, "_calib", {}).items():
            calibrate_bn(model, x, dom, batch_size=bs, autocast=lambda: autocast_ctx(self.device, self.precision))

    def evaluate(self, model, data) -> dict:
        """The task's scores of ``model`` on source val/test and target test: ``{split}_{metric}``
        (accuracy, or mIoU with pixel accuracy and per-class IoU; see :mod:`dalab.tasks`)."""
        self.calibrate(model)
        task = getattr(self, "task", "classification")
        metric = metric_of(task)
        ev = {}
        for key, split, dom in (("src_val", "source_val", "source"), ("src_test", "source_test", "source"),
                                ("tgt_test", "target_test", "target")):
            if data.get(key) is None:  # in-memory data may come without some evaluation sets
                continue
            classes = getattr(data["src"], "classes", None)
            if data.get("streamed"):  # a DataLoader over files, each rank its share, counts summed
                scores = evaluate_batches(model, data[key], task, self.num_classes, precision=self.precision,
                                          domain=dom, class_names=classes, reduce=lambda t: all_sum(t, self.dist))
            else:
                x, y = data[key]
                if task == "classification":  # an unlabelled target (flat image folder) has no accuracy
                    ev[f"{split}_{metric}"] = (None if len(y) and bool((y < 0).any()) else
                                               accuracy_of(model, x, y, precision=self.precision, domain=dom))
                    continue
                scores = evaluate_model(model, x, y, task, self.num_classes, precision=self.precision, domain=dom,
                                        class_names=classes)
            ev[f"{split}_{metric}"] = scores[metric]
            if task == "segmentation":
                ev[f"{split}_pixel_acc"] = scores["pixel_acc"]
                if split == "target_test":
                    ev["target_test_per_class_iou"] = scores["per_class_iou"]
        return ev

    def fit(self) -> dict:
        cfg = self.cfg
        wall0 = time.perf_counter()
        init_distributed(self.dist, self.device)
        W = self.dist.world_size
        if cfg.batch_size % W:
            raise DalabError(f"--batch-size {cfg.batch_size} (the global batch per domain) must be divisible "
                             f"by the number of processes ({W})")
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":  # fixed batch shapes: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        gen = torch.Generator().manual_seed(cfg.seed)
        data = self._load_data()
        model, opt = self._build(data)
        self.model = model
        self._calib = self._calibration_sets(data) if domain_bns(model) else {}
        B = cfg.batch_size
        primary = "xt" if self.method.name == "target-only" else "xs"
        n_primary = _n_train(data, primary)
        if B > n_primary:
            raise DalabError(f"--batch-size {B} is larger than the training set ({n_primary} images)")
        # only now, after every input check, touch --out: a bad flag never changes an earlier run
        resume_ck = None
        if self.dist.is_main:
            resume_ck = self._prepare_out()
        barrier(self.dist)
        if not self.dist.is_main and self.resume and self.out is not None and (self.out / "ckpt.pt").exists():
            resume_ck = load_checked(self.out / "ckpt.pt", CKPT_FORMAT)
        steps = n_primary // B
        b, off = B // W, self.dist.rank * (B // W)  # this rank's slice of each global batch
        total = steps * cfg.epochs
        self.speed = self._choose_speed(model, data, resume_ck, b, total)
        self.precision = self.speed.precision
        if self.speed.channels_last:
            model.to(memory_format=torch.channels_last)
            self.method.to(memory_format=torch.channels_last)  # e.g. a teacher copy of the network
        # DANN-like methods on dalab's network use every parameter: DDP need not look for unused ones
        runner = wrap_step(model, self.method, self.dist, self.device,
                           every_parameter_used=self.user_model is None and self.method.needs_domain_head)
        lr0 = cfg.resolved_lr()
        history: list[dict] = []
        start_epoch, train_seconds = 0, 0.0
        self._epochs_changed_from: list[int] = []
        ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        if resume_ck is not None:
            model.load_state_dict(resume_ck["model"])
            if ema is not None:
                ema.model.load_state_dict(resume_ck["ema"])
                ema.updates = int(resume_ck.get("ema_updates", 0))
            self.method.load_state_dict(resume_ck["method"])
            opt.load_state_dict(resume_ck["optimizer"])
            _set_rng_state(resume_ck["rng"], gen)
            start_epoch = int(resume_ck["epoch"])
            # the weights come from the checkpoint: the warm start is the one it recorded (none before 0.6.0)
            self._init_sha256 = resume_ck.get("init_from_sha256")
            train_seconds = float(resume_ck["train_seconds"])
            history = [json.loads(s) for s in resume_ck["history"]]
            # a run resumed with another --epochs than it was planned for (usually more): say so (a schedule over the
            # training progress, e.g. Ganin's learning rate or lambda, is stretched from here on)
            self._epochs_changed_from = [int(e) for e in resume_ck.get("epochs_changed_from", [])]
            planned = int(resume_ck["config"].get("epochs", cfg.epochs))
            if planned != cfg.epochs and planned not in self._epochs_changed_from:
                self._epochs_changed_from.append(planned)
        status, failure = "completed", None
        cuda = self.device.type == "cuda"
        check_every = 50 if cuda else 1
        model.train()
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            batches = self._epoch_batches(data, epoch, steps, gen, b, off)
            sums: dict[str, torch.Tensor] = {}
            epoch_logs = self.method.on_epoch_start(model, epoch, data.get("xt"))
            bar = self._bar(steps, epoch) if self.dist.is_main else None
            for i in range(steps):
                p = (epoch * steps + i) / total
                lr = ganin_lr(lr0, p) if cfg.lr_schedule == "ganin" else lr0
                for g in opt.param_groups:
                    g["lr"] = lr
                xs, ys, xt, yt, idx_t = next(batches)
                batch = Batch(xs=xs, ys=ys, xt=xt, yt=yt if self.method.uses_target_labels else None, p=p,
                              idx_t=idx_t)
                with autocast_ctx(self.device, self.precision):
                    loss, logs = runner(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.method.after_step(model)
                if ema is not None:
                    ema.update(model)
                for k, v in logs.items():
                    sums[k] = sums[k] + v.float() if k in sums else v.float().clone()
                if (i + 1) % check_every == 0 and not all_finite(loss, self.dist):
                    status = "diverged"
                    failure = (f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1} "
                               f"(lr={lr:.4g}, lambda_max={cfg.lambda_max}): lambda or learning rate is "
                               "likely too large")
                    break
                if bar is not None and (i % 50 == 0 or i == steps - 1):
                    # running means of the epoch's losses / domain accuracy; lambda as it is now
                    bar.set_postfix({k: f"{(logs[k] if k == 'lambda' else v / (i + 1)).item():.3f}"
                                     for k, v in sums.items()
                                     if k in ("task_loss", "domain_loss", "domain_acc", "lambda")}, refresh=False)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            if status == "completed":
                means = {k: v.item() for k, v in all_mean({k: v / steps for k, v in sums.items()}, self.dist).items()}
                if not all(math.isfinite(v) for v in means.values()):
                    status = "diverged"
                    failure = (f"non-finite training metrics in epoch {epoch + 1} (lambda or learning rate "
                               "likely too large)")
            train_seconds += time.perf_counter() - t0
            if status != "completed":
                break
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                row = {"epoch": epoch + 1, "step": (epoch + 1) * steps, "lr": lr,
                       **{k: round(v, 6) for k, v in means.items()}, **epoch_logs,
                       **self.evaluate(ema.model if ema else model, data),
                       "train_seconds": round(train_seconds, 3)}
                history.append(row)
                if self.logger is not None and self.dist.is_main:
                    self.logger(row)
                self._checkpoint(model, opt, gen, epoch + 1, train_seconds, history, ema)
        summary = self._summary(model, data, history, status, failure, train_seconds,
                                time.perf_counter() - wall0, steps)
        if self.out is not None and self.dist.is_main:
            if status == "completed":
                save_model(self.out / "model.pt", ema.model if ema else model, self.model_config())
            atomic_write_json(self.out / "summary.json", summary)
        return summary

    def _score_keys(self) -> list[str]:
        """The summary's score fields: accuracy, or mIoU, pixel accuracy and the target's per-class IoU."""
        m = metric_of(getattr(self, "task", "classification"))
        keys = [f"source_test_{m}", f"target_test_{m}", f"source_val_{m}"]
        if m != "acc":
            keys += ["source_test_pixel_acc", "target_test_pixel_acc", "target_test_per_class_iou"]
        return keys

    def _epoch_batches(self, data, epoch: int, steps: int, gen: torch.Generator, b: int, off: int):
        """This rank's (xs, ys, xt, yt, idx_t) for each step of an epoch (None where a domain is unused).

        In memory: one permutation per domain drawn from ``gen`` now (every image once per pass), each
        batch sliced out of the device-resident tensors with one index op. Read from files: the next
        batch of each domain's training DataLoader (its epoch's shuffle follows the seed and epoch).
        """
        B, dev, labels_t = self.cfg.batch_size, self.device, self.method.uses_target_labels
        if data.get("streamed"):
            # one endless iterator per domain for the whole run (from the first epoch trained, e.g. after a
            # resume): a target pass that outlasts a source epoch carries on where it was, never repeats
            if getattr(self, "_stream_its", None) is None:
                self._stream_its = {k: data[f"{k}_loader"].forever(start_epoch=epoch) if f"{k}_loader" in data
                                    else None for k in ("xs", "xt")}
            its = self._stream_its

            def streamed():
                for _ in range(steps):
                    xs = ys = xt = yt = None
                    if its["xs"] is not None:
                        xs, ys = (v.to(dev, non_blocking=True) for v in next(its["xs"]))
                    if its["xt"] is not None:
                        xt, yt = (v.to(dev, non_blocking=True) for v in next(its["xt"]))
                    yield xs, ys, xt, yt, None
            return streamed()
        ps = _index_stream(len(data["xs"]), steps * B, gen).to(dev) if "xs" in data else None
        pt = _index_stream(len(data["xt"]), steps * B, gen).to(dev) if "xt" in data else None

        def resident():
            for i in range(steps):
                sl = slice(i * B + off, i * B + off + b)
                i_s, i_t = (ps[sl] if ps is not None else None), (pt[sl] if pt is not None else None)
                # take_rows: x[idx] without a multi-threaded element-wise gather (fastpath.py)
                yield (take_rows(data["xs"], i_s) if i_s is not None else None,
                       take_rows(data["ys"], i_s) if i_s is not None else None,
                       take_rows(data["xt"], i_t) if i_t is not None else None,
                       take_rows(data["yt_train"], i_t) if i_t is not None and labels_t else None,
                       i_t)
        return resident()

    def _bn_description(self) -> str | None:
        if self.model is None or not has_batch_norm(self.model):
            return None
        if not domain_bns(self.model):
            return "shared: one set of running statistics for every domain"
        if not self._calib:
            return "per domain, running statistics tracked during training"
        return ("per domain, recomputed before each evaluation from " +
                " and ".join(f"{len(x)} unlabelled {d} training images" for d, x in self._calib.items()) +
                " (AdaBN)")

    def _bar(self, steps: int, epoch: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=steps, desc=f"{self.method.name} epoch {epoch + 1}/{self.cfg.epochs}",
                    unit="step", leave=False, file=sys.stderr, mininterval=0.5)

    def _checkpoint(self, model, opt, gen, epoch, train_seconds, history, ema=None) -> None:
        if self.out is None or not self.dist.is_main:
            return
        atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        save_atomic({"format": CKPT_FORMAT, "config": self.cfg.to_dict(), "epoch": epoch,
                     "model": model.state_dict(), "method": self.method.state_dict(),
                     "optimizer": opt.state_dict(), "speed_choice": self.speed.to_dict(),
                     "rng": _rng_state(gen), "train_seconds": train_seconds,
                     "history": [json.dumps(r) for r in history], "epochs_changed_from": self._epochs_changed_from,
                     **({"init_from_sha256": self._init_sha256} if self._init_sha256 else {}),
                     **({"ema": ema.model.state_dict(), "ema_updates": ema.updates} if ema else {})},
                    self.out / "ckpt.pt")

    def _summary(self, model, data, history, status, failure, train_seconds, wall, steps) -> dict:
        cfg = self.cfg
        last = history[-1] if history else {}
        s = {
            "method": self.method.name, "source": cfg.source, "target": cfg.target, "seed": cfg.seed,
            "epochs": cfg.epochs, "epochs_done": last.get("epoch", 0), "status": status,
            "task": getattr(self, "task", "classification"), "metric": metric_of(getattr(self, "task", "classification")),
            **{k: (last.get(k, float("nan")) if status == "completed" else None)
               for k in self._score_keys()},
            "train_seconds": round(train_seconds, 3), "wall_seconds": round(wall, 3),
            "device": str(self.device), "device_name": _device_name(self.device),
            "precision": self.precision, "memory_format": self.speed.memory_format,
            "precision_choice": self.speed.how, "dalab_version": __version__, "torch_version": torch.__version__,
            "steps_per_epoch": steps, "images_per_step": cfg.batch_size * (2 if self.method.uses_target and
                                                                          self.method.name != "target-only" else 1),
            "uses_target_labels": self.method.uses_target_labels,
            "world_size": self.dist.world_size, "global_batch_per_domain": cfg.batch_size,
            "batch_per_domain_per_rank": cfg.batch_size // self.dist.world_size,
            "model_selection": "last epoch (no checkpoint is chosen with target labels)",
            "target_scored_split": getattr(self, "target_eval_split", "test"),
            "bn_statistics": self._bn_description(),
            "source_description": data["src"].description, "target_description": data["tgt"].description,
            "n_source_train": _n_train(data, "xs"), "n_target_train": _n_train(data, "xt"),
            "method_params": self.method.describe(), "config": cfg.to_dict(),
        }
        if cfg.init_from or self._init_sha256:  # also a warm-started run resumed without --init-from
            s["init_from_sha256"] = self._init_sha256  # None: resumed from a checkpoint of dalab < 0.6.0
        if self._epochs_changed_from:  # set by fit() before every summary
            s["epochs_changed_from"] = list(self._epochs_changed_from)
        if failure:
            s["failure"] = failure
        return s


class WeightEMA:
    r"""Polyak/EMA average of the weights, :math:`\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta`
    after every step, with the usual warm-up :math:`d_t = \min(d, (1 + t) / (10 + t))`; buffers
    (batch-norm statistics) are copied. With ``--ema-decay`` the averaged network is the one
    evaluated and saved: it damps the epoch-to-epoch swings of adversarial training without
    looking at any target label.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.decay, self.updates = float(decay), 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_p = [p for p in self.model.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for eb, b in zip(self.model.buffers(), model.buffers()):
            eb.copy_(b)


def _n_train(data: dict, key: str) -> int:
    """Training images of a domain (``xs`` or ``xt``), in memory or read from files."""
    if f"{key}_loader" in data:
        return len(data[f"{key}_loader"].dataset)
    return len(data[key]) if key in data else 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cpus, {torch.get_num_threads()} threads)"


def train(config: TrainConfig, out=None, **kwargs) -> dict:
    """Convenience wrapper: ``Trainer(config, out, **kwargs).fit()``."""
    return Trainer(config, out, **kwargs).fit()
