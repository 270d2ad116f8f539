"""Batched inference over whole tensors (no DataLoader): logits, features, accuracy.

``domain`` ("source", "target" or None) picks the batch-norm statistics for models with
:class:`~dalab.models.batchnorm.DomainBatchNorm2d`; None leaves the model as it is. It has
no effect on networks without batch norm.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .batchnorm import bn_domain


def autocast_ctx(device: torch.device | str, precision: str):
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def evaluating(model: nn.Module, precision: str = "fp32", domain: str | None = None):
    """A pass over ``model`` for scores or outputs: eval mode, the precision's autocast and ``domain``'s
    batch-norm statistics, the model's mode restored afterwards (also on an error). Yields the model's
    device."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        with autocast_ctx(dev, precision), bn_domain(model, domain):
            yield dev
    finally:
        model.train(was_training)


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 2048,
                   precision: str = "fp32", domain: str | None = None) -> torch.Tensor:
    """Class logits (N, C) as float32; ``x`` stays where it is, batches move to the model."""
    with evaluating(model, precision, domain) as dev:
        outs = [model(x[i:i + batch_size].to(dev, non_blocking=True)).float() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, 0)


@torch.inference_mode()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 2048,
                     domain: str | None = None) -> torch.Tensor:
    """Features ``model.features(x)`` (N, D) as float32, in eval mode and batches (e.g. for a t-SNE)."""
    with evaluating(model, "fp32", domain) as dev:
        outs = [model.features(x[i:i + batch_size].to(dev)).float() for i in range(0, len(x), batch_size)]
    return torch.cat(outs)


def accuracy_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048,
                precision: str = "fp32", domain: str | None = None) -> float:
    """Top-1 accuracy of ``argmax model(x)`` against labels ``y`` (``nan`` for an empty set)."""
    if len(y) == 0:
        return float("nan")
    logits = predict_logits(model, x, batch_size, precision, domain)
    return (logits.argmax(1).to(y.device) == y).float().mean().item()
