r"""Tasks: what a label is, the supervised loss on it, how a model is scored, and everything else
that depends on the kind of label (see :class:`~dalab.tasks.base.Task`).

dalab trains two tasks with the same trainer and the same methods interface:

- **classification** (:mod:`dalab.tasks.classification`): labels (B,) int64, logits (B, K),
  cross-entropy, accuracy;
- **segmentation** (:mod:`dalab.tasks.segmentation`): label maps (B, H, W) uint8 with
  :data:`IGNORE` (255), logits (B, K, h, w) upsampled to the labels, cross-entropy over scored
  pixels, mIoU of one confusion matrix over the set.

:func:`get_task` returns a task by name (a domain's ``task``, a summary's ``task``), and
:func:`task_of_labels` reads it off a label tensor's shape, so a method written with
:func:`task_loss` serves both tasks. A third task is one module with a :class:`Task` subclass,
added to :data:`TASKS`.
"""

from __future__ import annotations

import torch

from ..errors import DalabError
from .base import SPLITS, Task, finite_or_none
from .classification import Classification
from .segmentation import (IGNORE, Segmentation, confusion_matrix, miou_over, scores_from_confusion,
                           upsample_to)

TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Segmentation())}


def get_task(name: str | None) -> Task:
    """The task called ``name`` (None: classification, what summaries of dalab < 0.7 describe)."""
    task = TASKS.get(name or "classification")
    if task is None:
        raise DalabError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return task


def task_of_labels(y) -> Task:
    """The task whose labels look like ``y``: a map per image (B, H, W) is segmentation."""
    return TASKS["segmentation" if y.dim() >= 3 else "classification"]


def is_dense(y: torch.Tensor) -> bool:
    """True for per-pixel labels (B, H, W), False for one label per image (B,)."""
    return task_of_labels(y).dense


def dense_labels(y: torch.Tensor) -> torch.Tensor:
    """uint8 train-id maps -> int64, with :data:`IGNORE` kept as the ignore value."""
    return y.long()


def task_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The supervised loss of the task the labels ``y`` belong to (see each task's module)."""
    return task_of_labels(y).loss(logits, y, reduction)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy (a 0-dim tensor): per image, or per scored pixel for label maps."""
    return task_of_labels(y).accuracy(logits, y)


def metric_of(task: str) -> str:
    """The headline score of a task, as it appears in summaries: ``source_test_<metric>``."""
    return get_task(task).metric


def headline(summary: dict, split: str = "target_test"):
    """A run summary's headline score for ``split`` (accuracy or mIoU); None when it has none."""
    return finite_or_none(summary.get(f"{split}_{summary.get('metric', 'acc')}"))


def evaluate_batches(model, batches, task: str, num_classes: int, precision: str = "fp32",
                     domain: str | None = None, class_names=None, reduce=None) -> dict:
    """``get_task(task).evaluate(...)``: the task's scores over any iterable of (images, labels) batches."""
    return get_task(task).evaluate(model, batches, num_classes, precision, domain, class_names, reduce)


def evaluate_model(model, x: torch.Tensor, y: torch.Tensor, task: str, num_classes: int,
                   batch_size: int = 256, precision: str = "fp32", domain: str | None = None,
                   class_names=None) -> dict:
    """Score ``model`` on images ``x`` and labels ``y`` held as tensors (batches move to the model)."""
    batches = ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    return evaluate_batches(model, batches, task, num_classes, precision, domain, class_names)


__all__ = ["Task", "TASKS", "SPLITS", "Classification", "Segmentation", "get_task", "task_of_labels", "IGNORE",
           "is_dense", "upsample_to", "dense_labels", "task_loss", "accuracy", "confusion_matrix",
           "scores_from_confusion", "miou_over", "metric_of", "headline", "evaluate_batches", "evaluate_model",
           "finite_or_none"]
