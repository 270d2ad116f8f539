r"""Train on the user's own tensors, with the user's own network, through the one :class:`Trainer`.

Unsupervised domain adaptation needs three things: labelled source images
:math:`\{(x^s_i, y^s_i)\}_{i=1}^{n_s}`, unlabelled target images :math:`\{x^t_j\}_{j=1}^{n_t}`,
and a network split as features :math:`F`, label head :math:`C` and (for DANN) domain head
:math:`D`. :class:`TensorData` holds the first two as tensors; :func:`fit` hands them,
a method and a model to :class:`~dalab.training.trainer.Trainer`, which runs the same loop
(Ganin's schedules, per-epoch metrics, optional run folder) as ``dalab train``. Nothing is read
from disk; dalab's own code is not touched::

    net = DANNNet(feature_extractor=my_backbone, feature_dim=256, num_classes=10)
    summary = fit(net, DANN(), xs, ys, xt, epochs=5, target_test=(xt_test, yt_test))

Images may be uint8 (the default network divides by 255) or float; labels are integer class
indices. Target labels ``yt`` are only ever passed to the loss of the oracle ``target-only``
method; the target test set is evaluated after each epoch for the record, never to pick a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.base import Domain
from ..errors import DalabError
from ..tasks import task_of_labels
from ..methods import Method, make_method
from .config import TrainConfig
from .trainer import Trainer

def _labels(name: str, y) -> torch.Tensor:
    """Class indices (N,) or label maps (N, H, W), checked by the task they belong to."""
    y = torch.as_tensor(y)
    return task_of_labels(y).check_labels(y, name)


def _pair(name: str, pair) -> tuple[torch.Tensor, torch.Tensor] | None:
    if pair is None:
        return None
    try:
        x, y = pair
    except (TypeError, ValueError):
        raise DalabError(f"{name}: expected a pair (x, y) of tensors") from None
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if len(x) != len(y):
        raise DalabError(f"{name}: {len(x)} images but {len(y)} labels")
    return x, _labels(name, y)


@dataclass
class TensorData:
    """Source / target tensors for one adaptation run, in memory.

    ``xs`` (N_s, ...) labelled by ``ys`` (N_s,); ``xt`` (N_t, ...) unlabelled target images
    (``yt`` only for the oracle ``target-only``). Optional evaluation pairs ``(x, y)``:
    ``source_val``, ``source_test``, ``target_test``; each one given adds the matching
    ``*_acc`` column to the per-epoch metrics. ``limit_train`` of the config is *not*
    applied: slice the tensors yourself.
    """

    xs: torch.Tensor
    ys: torch.Tensor
    xt: torch.Tensor | None = None
    yt: torch.Tensor | None = None
    source_val: tuple | None = None
    source_test: tuple | None = None
    target_test: tuple | None = None
    num_classes: int | None = None
    source_name: str = "source tensors"
    target_name: str = "target tensors"

    def __post_init__(self) -> None:
        self.xs = torch.as_tensor(self.xs)
        self.ys = _labels("ys", self.ys)
        if len(self.xs) != len(self.ys):
            raise DalabError(f"xs has {len(self.xs)} images but ys has {len(self.ys)} labels")
        if len(self.xs) == 0:
            raise DalabError("xs is empty: no source images to train on")
        if self.xt is not None:
            self.xt = torch.as_tensor(self.xt)
            if self.xt.shape[1:] != self.xs.shape[1:]:
                raise DalabError(f"xt images have shape {tuple(self.xt.shape[1:])}, xs images "
                                 f"{tuple(self.xs.shape[1:])}: both domains must share one input shape")
        if self.yt is not None:
            self.yt = _labels("yt", self.yt)
        self.source_val = _pair("source_val", self.source_val)
        self.source_test = _pair("source_test", self.source_test)
        self.target_test = _pair("target_test", self.target_test)
        if self.num_classes is None:  # the largest label + 1 (a label map's ignore value 255 is not a class)
            known = self.ys[self.ys != 255] if self.task.dense else self.ys
            self.num_classes = int(known.max()) + 1 if known.numel() else 1

    @property
    def task(self):
        """The task of the labels: classification for (N,) class indices, segmentation for (N, H, W) maps."""
        return task_of_labels(self.ys)

    def source(self, device: torch.device, method: Method, cfg, dist):
        """The :class:`~dalab.training.sources.ResidentSource` the trainer trains from."""
        from .sources import ResidentSource

        if method.uses_target and (self.xt is None or len(self.xt) == 0):
            raise DalabError(f"method {method.name!r} needs unlabelled target images: pass xt")
        if method.uses_target_labels and self.yt is None:
            raise DalabError(f"method {method.name!r} is the oracle: it needs target labels yt")
        if self.yt is not None and self.xt is not None and len(self.yt) != len(self.xt):
            raise DalabError(f"xt has {len(self.xt)} images but yt has {len(self.yt)} labels")
        task = self.task
        if task.name not in method.tasks:
            raise DalabError(f"method {method.name!r} does not handle {task.name} (the labels are "
                             f"{'maps' if task.dense else 'class indices'})")
        nk = self.num_classes
        src = Domain(self.source_name, f"{self.source_name}: {len(self.xs)} in-memory images", {}, nk, task=task.name)
        n_t = 0 if self.xt is None else len(self.xt)
        tgt = Domain(self.target_name, f"{self.target_name}: {n_t} in-memory images", {}, nk, task=task.name)
        to = (lambda p: None if p is None else (p[0].to(device), p[1].to(device)))
        xt = yt = None
        if method.uses_target:
            xt = self.xt.to(device)
            # read only by methods with uses_target_labels (the oracle)
            yt = (self.yt.to(device) if self.yt is not None
                  else torch.full((len(self.xt),), -1, dtype=torch.long, device=device))
        return ResidentSource(src, tgt, {"target_scored_split": "test"}, xs=self.xs.to(device), ys=self.ys.to(device),
                              xt=xt, yt_train=yt, evals={"source_val": to(self.source_val),
                                                         "source_test": to(self.source_test),
                                                         "target_test": to(self.target_test)},
                              batch=cfg.batch_size, rank=dist.rank, world_size=dist.world_size, seed=cfg.seed,
                              uses_target_labels=method.uses_target_labels, eval_batch=task.eval_batch)


def fit(model: nn.Module | None, method: Method | str, xs, ys, xt=None, *, yt=None,
        source_val=None, source_test=None, target_test=None, num_classes: int | None = None,
        epochs: int = 10, batch_size: int = 64, optimizer: str = "sgd", lr: float | None = None,
        lr_schedule: str = "ganin", seed: int = 0, device: str = "auto", precision: str = "auto",
        out: str | os.PathLike | None = None, progress: bool = True, logger=None,
        overwrite: bool = False, resume: bool = False, **config) -> "FitResult":
    r"""Train ``model`` with ``method`` on in-memory tensors; returns a :class:`FitResult`.

    One step draws ``batch_size`` source and ``batch_size`` target images, computes
    ``method.loss(model, Batch(xs, ys, xt, p))`` and takes an optimiser step; the learning
    rate follows Ganin's :math:`\mu_p = \mu_0 / (1 + 10p)^{0.75}` (``lr_schedule="ganin"``)
    and DANN's GRL strength :math:`\lambda_p` follows the method's own schedule, with
    :math:`p \in [0, 1]` the training progress. An epoch is ``len(xs) // batch_size`` steps.

    - ``model``: any ``nn.Module`` exposing what the method calls: ``forward`` (logits) for
      source-only; ``features``, ``classify`` and ``domain_logits`` for DANN, e.g.
      ``DANNNet(feature_extractor=my_backbone, feature_dim=D)``. ``None`` builds Ganin's
      MNIST network (28x28x3 inputs). The model is trained in place (and moved to ``device``).
    - ``method``: a :class:`~dalab.methods.Method` instance (e.g. ``DANN(lambda_max=0.3)``)
      or a registered name (``"dann"``).
    - ``xs, ys, xt`` and the optional ``yt``, evaluation pairs and ``num_classes``: see
      :class:`TensorData`.
    - ``out``: a run folder (``summary.json``, ``metrics.jsonl``, checkpoints) or ``None``.
    - ``logger``: ``callable(row)`` called with each epoch's metrics row (e.g.
      :class:`~dalab.training.tensorboard.TensorBoardLogger`).
    - further keyword arguments are :class:`TrainConfig` fields (``momentum``,
      ``weight_decay``, ``eval_every``, ``lambda_max``, ``method_args``, ...).

    The result's ``model`` is the trained network (``model`` itself when one was passed),
    ``history`` the per-epoch metrics rows and ``summary`` the run summary, with the last
    epoch's accuracies (None where no evaluation pair was passed).
    """
    if isinstance(method, str):
        lam = {k: config[k] for k in ("lambda_max", "gamma") if k in config}
        if "lambda_schedule" in config:
            lam["schedule"] = config["lambda_schedule"]
        method = make_method(method, **lam, **(config.get("method_args") or {}))
    if not isinstance(method, Method):
        raise DalabError(f"method must be a dalab Method or a method name, got {type(method).__name__}")
    data = TensorData(xs, ys, xt, yt, source_val, source_test, target_test, num_classes)
    cfg = TrainConfig(method=method.name, source=data.source_name, target=data.target_name,
                      epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                      lr_schedule=lr_schedule, seed=seed, device=device, precision=precision, **config)
    history: list[dict] = []

    def log(row: dict) -> None:
        history.append(dict(row))
        if logger is not None:
            logger(row)

    t = Trainer(cfg, out, method=method, progress=progress, overwrite=overwrite, resume=resume,
                logger=log, data=data, model=model)
    summary = t.fit()
    return FitResult(t.model, method, summary, history)


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained ``model``, the ``method`` (with any state it
    learned, e.g. pseudo-labels), the run ``summary`` and the per-epoch metrics ``history``."""

    model: nn.Module
    method: Method
    summary: dict
    history: list = field(default_factory=list)

    def __getitem__(self, key: str):
        """``result["target_test_acc"]`` reads the summary."""
        return self.summary[key]
