"""Baselines: train on source labels only, or (oracle) on target labels only; for either task
(:func:`dalab.tasks.task_loss` is cross-entropy per image or per scored pixel)."""

from __future__ import annotations

from ..models.batchnorm import bn_domain
from ..tasks import task_loss
from .base import Batch, Method, accuracy


class SourceOnly(Method):
    r"""Lower bound: :math:`\min_\theta \; \mathrm{CE}(C(F(x_s)), y_s)`; target images unused."""

    name = "source-only"
    version = 1
    uses_target = False
    tasks = ("classification", "segmentation")

    def loss(self, model, batch: Batch):
        logits = model(batch.xs)
        task = task_loss(logits, batch.ys)
        return task, {"task_loss": task.detach(), "train_acc": accuracy(logits.detach(), batch.ys)}


class TargetOnly(Method):
    r"""ORACLE upper bound: :math:`\mathrm{CE}(C(F(x_t)), y_t)`. Uses target labels, so it is
    not domain adaptation; it is reported only as the ceiling ("train on target")."""

    name = "target-only"
    version = 1
    uses_target_labels = True
    tasks = ("classification", "segmentation")

    def loss(self, model, batch: Batch):
        with bn_domain(model, "target"):
            logits = model(batch.xt)
        task = task_loss(logits, batch.yt)
        return task, {"task_loss": task.detach(), "train_acc": accuracy(logits.detach(), batch.yt)}
