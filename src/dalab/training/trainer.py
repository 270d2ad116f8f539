"""The one trainer: a method's loss per step, on data from a :class:`~dalab.training.sources.DataSource`.

A run is :meth:`Trainer.setup` (data, network, optimiser, precision, run folder, resume), then one
:meth:`Trainer.run_epoch` per epoch: :meth:`Trainer.train_step` on each batch the data source
gives, then every ``eval_every`` epochs :meth:`Trainer.evaluate` and a checkpoint; then
:meth:`Trainer.finish` writes the model and the summary. Each of these is a method a subclass
may override (the hooks), in the manner of Dassl's trainers. What depends on the kind of label
(loss, scores, summary fields, default network) is the task's (:mod:`dalab.tasks`); where the
images live is the data source's; what a method does in a step is the method's.

Schedules follow the training progress :math:`p \\in [0, 1]`: Ganin's learning rate
``mu_p = mu_0 / (1 + 10 p)^0.75`` (or constant), after an optional linear warm-up, and the GRL
strength (inside the method). Metrics stay on the device and are read once per log interval, so a
GPU is never forced to wait each step.

Protocol: target labels reach the loss only for the oracle ``target-only``; the target *test*
score recorded per epoch is for plots, and the model kept is always the last epoch's, never one
chosen by a target score.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from .. import __version__
from ..data.io import sha256_file
from ..errors import DalabError
from ..methods import Batch, Method, check_method_args, make_method
from ..models.batchnorm import calibrate_bn, domain_bns, has_batch_norm
from ..models.ema import EMA
from ..models.inference import autocast_ctx
from ..models.registry import CHECKPOINT_ARCH
from ..tasks import SPLITS, TASKS, Task, get_task
from . import autotune
from .config import TrainConfig
from .data import open_data
from .device import device_name, resolve_device
from .distributed import (all_finite, all_mean, barrier, broadcast_choice, env_dist_info, init_distributed,
                          wrap_step)
from .fastpath import optimizer_kwargs
from .memory import check_first_step
from .rundir import RunDir, read_history
from .schedules import lr_at


def ganin_lr(lr0: float, p: float) -> float:
    """Ganin's annealing: ``lr0 / (1 + 10 p) ** 0.75``."""
    return lr0 / (1.0 + 10.0 * p) ** 0.75


class Trainer:
    """Train one method on one source -> target pair. See the module docstring and :meth:`fit`.

    ``data`` (a :class:`~dalab.training.in_memory.TensorData`) replaces the domains named in the
    config, ``model`` (any ``nn.Module`` with the parts the method calls) the task's default network.
    """

    def __init__(self, config: TrainConfig, out: str | os.PathLike | None = None,
                 method: Method | None = None, progress: bool = True, overwrite: bool = False,
                 resume: bool = False, logger=None, data=None, model: torch.nn.Module | None = None):
        self.cfg = config.validate()
        if method is None:
            check_method_args(config.method, config.method_args)
        self.method = method or make_method(config.method, lambda_max=config.lambda_max,
                                            schedule=config.lambda_schedule, gamma=config.gamma,
                                            **(config.method_args or {}))
        self.run_dir = RunDir(out, overwrite=overwrite, resume=resume)
        self.out = self.run_dir.path
        self.progress, self.resume, self.logger = progress, resume, logger  # logger: callable(metrics row)
        self.user_data, self.user_model = data, model
        self.device = resolve_device(config.device)
        self.dist = env_dist_info()  # world size 1 unless launched by torchrun
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.precision = config.precision  # "auto" until setup() measures (training/autotune.py)
        self.speed: autotune.SpeedChoice | None = None
        self.model: torch.nn.Module | None = None  # the trained network, set by setup()
        # sha256 of the --init-from file the run started from: recorded so that a benchmark can tell when that
        # parent run has since changed (e.g. was trained for longer) and this run no longer follows from it
        self._init_sha256: str | None = None

    # ================================================================== the run
    def fit(self) -> dict:
        """Train (or continue) the run; returns its summary (also written to ``OUT/summary.json``)."""
        self.wall0 = time.perf_counter()
        self.setup()
        for epoch in range(self.start_epoch, self.cfg.epochs):
            if not self.run_epoch(epoch):
                break
        return self.finish()

    def run_epoch(self, epoch: int) -> bool:
        """One pass: ``steps`` training steps, then (when due) an evaluation and a checkpoint.
        False when the run diverged."""
        cfg, t0 = self.cfg, time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        epoch_logs = self.method.on_epoch_start(self.model, epoch, self.data.target_images())
        bar = self._bar(epoch)
        check_every = 50 if self.device.type == "cuda" else 1
        for i, tb in enumerate(self.data.epoch_batches(epoch, self.steps)):
            p = (epoch * self.steps + i) / self.total_steps
            loss, logs = self.train_step(tb, p)
            for k, v in logs.items():
                sums[k] = sums[k] + v.float() if k in sums else v.float().clone()
            if (i + 1) % check_every == 0 and not all_finite(loss, self.dist):
                self._diverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1} "
                               f"(lr={self.lr:.4g}, lambda_max={cfg.lambda_max}): lambda or learning rate is "
                               "likely too large")
                break
            if bar is not None:
                if i % 50 == 0 or i == self.steps - 1:  # running means of the epoch's losses; lambda as it is now
                    bar.set_postfix({k: f"{(logs[k] if k == 'lambda' else v / (i + 1)).item():.3f}"
                                     for k, v in sums.items()
                                     if k in ("task_loss", "domain_loss", "domain_acc", "lambda")}, refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
        if self.status == "completed":
            means = {k: v.item() for k, v in all_mean({k: v / self.steps for k, v in sums.items()}, self.dist).items()}
            if not all(math.isfinite(v) for v in means.values()):
                self._diverged(f"non-finite training metrics in epoch {epoch + 1} (lambda or learning rate "
                               "likely too large)")
        self.train_seconds += time.perf_counter() - t0
        if self.status != "completed":
            return False
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            self.after_epoch(epoch, {**{k: round(v, 6) for k, v in means.items()}, **epoch_logs})
        return True

    def train_step(self, tb, p: float):
        """One optimiser step of the method's loss on a batch; returns (loss, logs)."""
        self.lr = lr_at(self.cfg, p, self.total_steps)
        for g in self.opt.param_groups:
            g["lr"] = self.lr * g.get("lr_mult", 1.0)
        batch = Batch(xs=tb.xs, ys=tb.ys, xt=tb.xt, yt=tb.yt if self.method.uses_target_labels else None, p=p,
                      idx_t=tb.idx_t)
        with autocast_ctx(self.device, self.precision):
            loss, logs = self.runner(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.method.after_step(self.model)
        if self.ema is not None:
            self.ema.update(self.model)
        return loss, logs

    def after_epoch(self, epoch: int, train_logs: dict) -> None:
        """An evaluation row (``metrics.jsonl``), the logger's call, and a resume checkpoint."""
        row = {"epoch": epoch + 1, "step": (epoch + 1) * self.steps, "lr": self.lr, **train_logs,
               **self.evaluate(self.kept_model()), "train_seconds": round(self.train_seconds, 3)}
        self.history.append(row)
        if self.logger is not None and self.dist.is_main:
            self.logger(row)
        if self.dist.is_main:
            self.run_dir.write_metrics(self.history)
            self.run_dir.write_checkpoint(self._checkpoint_state(epoch + 1))

    def evaluate(self, model) -> dict:
        """The task's scores of ``model`` on the scored splits (``{split}_{metric}`` and the task's other
        fields), after recomputing each domain's batch-norm statistics (AdaBN) where the model keeps them."""
        self.calibrate(model)
        ev = {}
        for split, es in self.data.eval_sets().items():
            domain = "source" if split.startswith("source") else "target"
            scores = self.task.evaluate(model, es.batches(), self.data.num_classes, precision=self.precision,
                                        domain=domain, class_names=self.data.classes, reduce=es.reduce)
            ev.update(self.task.score_fields(split, scores))
        return ev

    def calibrate(self, model) -> None:
        """AdaBN: recompute each domain's batch-norm statistics with the current weights (no labels)."""
        # crops read from files can be large: calibrate them a training batch at a time
        bs = max(1, self.cfg.batch_size // self.dist.world_size) if self.data.streamed else 1000
        for dom, x in self._calib.items():
            calibrate_bn(model, x, dom, batch_size=bs, autocast=lambda: autocast_ctx(self.device, self.precision))

    def finish(self) -> dict:
        summary = self._summary(time.perf_counter() - self.wall0)
        if self.dist.is_main:
            if self.status == "completed":
                self.run_dir.write_model(self.kept_model(), self.model_config())
            self.run_dir.write_summary(summary)
        return summary

    def kept_model(self) -> torch.nn.Module:
        """The network that is evaluated and saved: the weight average with ``--ema-decay``, else the weights."""
        return self.ema.model if self.ema is not None else self.model

    # ================================================================== set-up
    def setup(self) -> None:
        cfg = self.cfg
        init_distributed(self.dist, self.device)
        if cfg.batch_size % self.dist.world_size:
            raise DalabError(f"--batch-size {cfg.batch_size} (the global batch per domain) must be divisible "
                             f"by the number of processes ({self.dist.world_size})")
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":  # fixed batch shapes: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        self.data = open_data(cfg, self.method, self.device, self.dist, self.user_data)
        self.task: Task = get_task(getattr(self.data.source, "task", "classification"))
        self._check_network()
        self.model = self._build_model()
        self.method.to(self.device)
        self.method.setup(self.model, self.device)
        self.opt = self._optimizer(self.model)
        self._calib = (self.data.calibration_images(cfg.bn_calibration, cfg.seed + 1)
                       if domain_bns(self.model) else {})
        B = cfg.batch_size
        primary = "target" if self.method.name == "target-only" else "source"
        n_primary = self.data.n_train(primary)
        if B > n_primary:
            raise DalabError(f"--batch-size {B} is larger than the training set ({n_primary} images)")
        if self.data.streamed:  # large images: a step too big for the machine stops here, not in a kill
            self.memory_estimate = check_first_step(self.model, self.method, self._probe_batch,
                                                    self.data.input_shape(), B // self.dist.world_size, self.device)
        # only now, after every input check, touch --out: a bad flag never changes an earlier run
        # a checkpoint of dalab < 0.9 records no resize: it read files at their own size
        defaults = {**TrainConfig().to_dict(), "resize": "native"}
        resume_ck = self.run_dir.open(cfg.to_dict(), defaults) if self.dist.is_main else None
        barrier(self.dist)
        if not self.dist.is_main:
            resume_ck = self.run_dir.load_checkpoint()
        if self.dist.is_main and self.data.check_log:  # the files a data check skipped or repaired
            self.run_dir.write_text("data_check.log", self.data.check_log)
        self.steps = cfg.steps_per_epoch or n_primary // B
        self.total_steps = self.steps * cfg.epochs
        self.speed = self._choose_speed(resume_ck, B // self.dist.world_size)
        self.precision = self.speed.precision
        if self.speed.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.method.to(memory_format=torch.channels_last)  # e.g. a teacher copy of the network
        # DANN-like methods on dalab's network use every parameter: DDP need not look for unused ones
        self.runner = wrap_step(self.model, self.method, self.dist, self.device,
                                every_parameter_used=self.user_model is None and self.method.needs_domain_head)
        self.ema = EMA(self.model, cfg.ema_decay, warmup="tf") if cfg.ema_decay > 0 else None
        self.history: list[dict] = []
        self.start_epoch, self.train_seconds, self.lr = 0, 0.0, lr_at(cfg, 0.0, self.total_steps)
        self.status, self.failure = "completed", None
        self._epochs_changed_from: list[int] = []
        if resume_ck is not None:
            self._restore(resume_ck)
        self.model.train()

    def _probe_batch(self, n: int, hw) -> Batch:
        """A batch of ``n`` blank images of size ``hw`` per domain, with labels of the task's kind (for
        :func:`~dalab.training.memory.check_first_step`)."""
        x = torch.zeros(n, 3, *hw, dtype=torch.uint8, device=self.device)
        y = (torch.zeros(n, *hw, dtype=torch.uint8, device=self.device) if self.task.dense
             else torch.zeros(n, dtype=torch.long, device=self.device))
        return Batch(xs=x, ys=y, xt=x.clone(), yt=y.clone() if self.method.uses_target_labels else None, p=0.0,
                     idx_t=torch.arange(n, device=self.device))

    def _check_network(self) -> None:
        """A network of the task: dalab's default for it, or one it names (one clear error otherwise)."""
        if self.user_model is not None:
            return
        if self.cfg.backbone:
            if self.task.dense:
                raise DalabError(f"--backbone builds a classification network (a backbone, a bottleneck and a "
                                 f"classifier); {self.cfg.source} -> {self.cfg.target} is a {self.task.name} pair: "
                                 "pass your own network through the API (docs/segmentation.md)")
            return
        if self.cfg.arch not in self.task.archs:
            default = TrainConfig().arch
            if self.cfg.arch == default:  # the classification default, left as it was: take the task's
                self.cfg.arch = self.task.archs[0]
            else:
                owner = next((t.name for t in TASKS.values() if self.cfg.arch in t.archs), "another task's")
                raise DalabError(f"--arch {self.cfg.arch} is a {owner} network; {self.cfg.source} -> {self.cfg.target} "
                                 f"is a {self.task.name} pair ({self.task.name} networks: "
                                 f"{', '.join(self.task.archs)}, or your own through the API)")

    def _build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        if self.user_model is not None:
            model = self.user_model.to(self.device)
        elif cfg.backbone:  # a torchvision or timm backbone with the fine-tuning head (models/backbones.py)
            from ..models.backbones import PhotoNet

            model = PhotoNet(cfg.backbone, self.data.num_classes, pretrained=cfg.pretrained,
                             init=cfg.backbone_init).to(self.device)
        else:
            model = self.task.build_model(cfg.arch, self.data.num_classes, cfg.batch_norm, cfg.input_norm,
                                          cfg.bn_stats == "domain").to(self.device)
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
        return model

    def _optimizer(self, model, method=None) -> torch.optim.Optimizer:
        """SGD (momentum) or Adam over the network's and the method's parameters. A network that offers
        ``param_groups(lr)`` (e.g. a pretrained backbone at a tenth of the head's rate) sets its groups;
        each group's ``lr_mult`` scales the scheduled rate."""
        cfg, method = self.cfg, method if method is not None else self.method
        lr = cfg.resolved_lr()
        if hasattr(model, "param_groups"):
            params = [g for g in model.param_groups(lr) + [{"params": list(method.parameters())}] if g["params"]]
            for g in params:  # each group's rate as a multiple of the scheduled one
                g["lr_mult"] = g.pop("lr", lr) / lr
                g.pop("initial_lr", None)
        else:
            params = list(model.parameters()) + list(method.parameters())
        fused = optimizer_kwargs(cfg.optimizer, self.device)  # one kernel per parameter where available
        if cfg.optimizer == "sgd":
            # Nesterov's look-ahead needs momentum; without it (--momentum 0) the step is plain SGD either way
            return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   nesterov=bool(cfg.nesterov) and cfg.momentum > 0, **fused)
        return torch.optim.Adam(params, lr=lr, betas=(cfg.adam_beta1, 0.999), weight_decay=cfg.weight_decay,
                                **fused)

    def _choose_speed(self, resume_ck, batch: int) -> autotune.SpeedChoice:
        """Precision and memory format (training/autotune.py); every rank takes rank 0's."""
        cfg, model = self.cfg, self.model
        net = ({"arch": cfg.arch, "batch_norm": cfg.batch_norm, "bn_stats": cfg.bn_stats, "input_norm": cfg.input_norm,
                **({"backbone": cfg.backbone} if cfg.backbone else {})}
               if self.user_model is None else
               {"custom": type(model).__name__, "shapes": [list(p.shape) for p in model.parameters()]})
        choice = None
        if self.dist.is_main:
            from ..data import data_dir

            choice = autotune.resolve(
                cfg.precision, cfg.channels_last, self.device, resume_ck=resume_ck,
                cache_dir=data_dir(cfg.data_dir), total_steps=self.total_steps,
                key=autotune.cache_key(self.device, net, self.method.name, cfg.method_args, batch, cfg.channels_last,
                                       self.data.input_shape()),
                run=lambda cands: autotune.measure_run(
                    model, self.method, self._optimizer, self.data.sample((autotune.WARMUP + autotune.TIMED) * batch),
                    batch, self.device, cands, lambda p: lr_at(cfg, p, self.total_steps), self.total_steps, cfg.seed),
                batch=batch)
        return broadcast_choice(choice, self.dist)

    def _restore(self, ck: dict) -> None:
        """Continue from a resume checkpoint: weights, averages, optimiser, every generator, the history."""
        self.model.load_state_dict(ck["model"])
        if self.ema is not None:
            self.ema.model.load_state_dict(ck["ema"])
            self.ema.updates = int(ck.get("ema_updates", 0))
        self.method.load_state_dict(ck["method"])
        self.opt.load_state_dict(ck["optimizer"])
        rng = ck["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        # the data source's state; a checkpoint of dalab < 0.9 saved only the resident generator ("gen")
        self.data.load_state_dict(ck["data"] if "data" in ck else {"gen": rng["gen"]})
        if "method_rng" in ck:
            self.method.set_rng_state(ck["method_rng"])
        self.start_epoch = int(ck["epoch"])
        # the weights come from the checkpoint: the warm start is the one it recorded (none before 0.6.0)
        self._init_sha256 = ck.get("init_from_sha256")
        self.train_seconds = float(ck["train_seconds"])
        self.history = read_history(ck)
        if self.history:
            self.lr = self.history[-1].get("lr", self.lr)
        # a run resumed with another --epochs than it was planned for (usually more): say so (a schedule over the
        # training progress, e.g. Ganin's learning rate or lambda, is stretched from here on)
        self._epochs_changed_from = [int(e) for e in ck.get("epochs_changed_from", [])]
        planned = int(ck["config"].get("epochs", self.cfg.epochs))
        if planned != self.cfg.epochs and planned not in self._epochs_changed_from:
            self._epochs_changed_from.append(planned)

    # ================================================================== records
    def _checkpoint_state(self, epoch: int) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"config": self.cfg.to_dict(), "epoch": epoch, "model": self.model.state_dict(),
                "method_version": self.method.version, "method_params": self.method.describe(),
                "method": self.method.state_dict(), "method_rng": self.method.rng_state(),
                "optimizer": self.opt.state_dict(), "speed_choice": self.speed.to_dict(), "rng": rng,
                "data": self.data.state_dict(), "train_seconds": self.train_seconds,
                "history": [json.dumps(r) for r in self.history], "epochs_changed_from": self._epochs_changed_from,
                **({"init_from_sha256": self._init_sha256} if self._init_sha256 else {}),
                **({"ema": self.ema.model.state_dict(), "ema_updates": self.ema.updates} if self.ema else {})}

    def _diverged(self, why: str) -> None:
        self.status, self.failure = "diverged", why

    def model_config(self) -> dict:
        """What ``model.pt`` records to rebuild and describe the network."""
        custom = self.user_model is not None
        common = {"task": self.task.name, "classes": list(self.data.classes or []) or None,
                  "input": self.data.input_shape() or [3, 28, 28], "method": self.method.name,
                  "source": self.cfg.source, "target": self.cfg.target,
                  **{k: self.data.facts[k] for k in ("eval_size", "image_size", "photo_transform") if k in self.data.facts}}
        if hasattr(self.model, "config") and not custom:  # a network that describes itself (PhotoNet)
            return {**self.model.config(), **common}
        return {"arch": "custom" if custom else CHECKPOINT_ARCH[self.cfg.arch],
                "num_classes": self.data.num_classes, "batch_norm": self.cfg.batch_norm,
                "domain_bn": not custom and self.cfg.batch_norm and self.cfg.bn_stats == "domain",
                "input_norm": self.cfg.input_norm, **common}

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

    def _bar(self, epoch: int):
        if not self.progress or not self.dist.is_main:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.steps, desc=f"{self.method.name} epoch {epoch + 1}/{self.cfg.epochs}",
                    unit="step", leave=False, file=sys.stderr, mininterval=0.5)

    def _summary(self, wall: float) -> dict:
        cfg, task = self.cfg, self.task
        last = self.history[-1] if self.history else {}
        done = self.status == "completed"
        s = {
            "method": self.method.name, "method_version": self.method.version, "source": cfg.source,
            "target": cfg.target, "seed": cfg.seed, "epochs": cfg.epochs, "epochs_done": last.get("epoch", 0),
            "status": self.status, "task": task.name, "metric": task.metric,
            **{k: (last.get(k) if done else None) for k in task.score_keys()},
            "train_seconds": round(self.train_seconds, 3), "wall_seconds": round(wall, 3),
            "device": str(self.device), "device_name": device_name(self.device),
            "precision": self.precision, "memory_format": self.speed.memory_format,
            "precision_choice": self.speed.how, "dalab_version": __version__, "torch_version": torch.__version__,
            "steps_per_epoch": self.steps,
            "images_per_step": cfg.batch_size * (2 if self.method.uses_target and
                                                 self.method.name != "target-only" else 1),
            "uses_target_labels": self.method.uses_target_labels,
            "world_size": self.dist.world_size, "global_batch_per_domain": cfg.batch_size,
            "batch_per_domain_per_rank": cfg.batch_size // self.dist.world_size,
            "model_selection": "last epoch (no checkpoint is chosen with target labels)",
            "bn_statistics": self._bn_description(),
            "source_description": self.data.source.description, "target_description": self.data.target.description,
            "n_source_train": self.data.n_train("source"), "n_target_train": self.data.n_train("target"),
            **self.data.facts, "method_params": self.method.describe(), "config": cfg.to_dict(),
        }
        if getattr(self, "memory_estimate", None):
            s["memory_estimate"] = self.memory_estimate
        timing = getattr(self.data, "timing", lambda: {})()  # data read from files: how long the steps waited
        if timing:
            s.update(timing, data_wait_share=round(timing["data_wait_seconds"] / max(self.train_seconds, 1e-9), 4))
        failures = getattr(self.data, "read_failures", lambda: {})()
        if failures:  # files that decoded badly mid-run: each item replaced by the next readable one
            s["read_failures"] = failures
        if cfg.init_from or self._init_sha256:  # also a warm-started run resumed without --init-from
            s["init_from_sha256"] = self._init_sha256  # None: resumed from a checkpoint of dalab < 0.6.0
        if self._epochs_changed_from:
            s["epochs_changed_from"] = list(self._epochs_changed_from)
        if self.failure:
            s["failure"] = self.failure
        return s


assert SPLITS == ("source_val", "source_test", "target_test")  # the data sources' split names


def train(config: TrainConfig, out=None, **kwargs) -> dict:
    """Convenience wrapper: ``Trainer(config, out, **kwargs).fit()``."""
    return Trainer(config, out, **kwargs).fit()
