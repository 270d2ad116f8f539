"""Baselines: train on source labels only, or (oracle) on target labels only."""

from __future__ import annotations

import torch.nn.functional as F

from ..models.batchnorm import bn_domain
from .base import Batch, Method, accuracy


class SourceOnly(Method):
    r"""Lower bound: :math:`\min_\theta \; \mathrm{CE}(C(F(x_s)), y_s)`; target images unused."""

    name = "source-only"
    uses_target = False

    def loss(self, model, batch: Batch):
        logits = model(batch.xs)
        task = F.cross_entropy(logits, batch.ys)
        return task, {"task_loss": task.detach(), "train_acc": accuracy(logits.detach(), batch.ys)}


class TargetOnly(Method):
    r"""ORACLE upper bound: :math:`\mathrm{CE}(C(F(x_t)), y_t)`. Uses target labels, so it is
    not domain adaptation; it is reported only as the ceiling ("train on target")."""

    name = "target-only"
    uses_target_labels = True

    def loss(self, model, batch: Batch):
        with bn_domain(model, "target"):
            logits = model(batch.xt)
        task = F.cross_entropy(logits, batch.yt)
        return task, {"task_loss": task.detach(), "train_acc": accuracy(logits.detach(), batch.yt)}
