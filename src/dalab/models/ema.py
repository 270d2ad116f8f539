r"""The one exponential moving average of weights, for evaluation copies and mean teachers.

After each optimiser step, for every parameter,

.. math::

    \bar\theta \leftarrow d_t\,\bar\theta + (1 - d_t)\,\theta,

and the buffers (batch-norm statistics) are copied from the network. The decay :math:`d_t`
may follow a warm-up over the first updates so that the average does not stay near the random
initialisation (``t`` counts updates from 0):

- ``"constant"``: :math:`d_t = d` (French et al.'s mean teacher);
- ``"mean"``: :math:`d_t = \min(1 - 1/(t + 1), d)`, i.e. a plain mean of the weights seen so far
  until it reaches :math:`d` (DACS's and DAFormer's teacher);
- ``"tf"``: :math:`d_t = \min(d, (1 + t') / (10 + t'))` with :math:`t' = t + 1`, TensorFlow's
  ``ExponentialMovingAverage(num_updates=...)`` warm-up (dalab's ``--ema-decay`` copy).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

WARMUPS = ("constant", "mean", "tf")


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (no parameter requires grad), to hold an average of its weights."""
    teacher = copy.deepcopy(model)
    for q in teacher.parameters():
        q.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * model`` for parameters; buffers (batch-norm
    statistics) are copied from ``model``."""
    for tp, sp in zip(average.parameters(), model.parameters()):
        tp.mul_(decay).add_(sp.detach(), alpha=1.0 - decay)
    for tb, sb in zip(average.buffers(), model.buffers()):
        tb.copy_(sb)


def decay_at(decay: float, updates: int, warmup: str) -> float:
    """:math:`d_t` of the module docstring after ``updates`` earlier updates."""
    if warmup == "constant":
        return decay
    if warmup == "mean":
        return min(1.0 - 1.0 / (updates + 1), decay)
    if warmup == "tf":
        return min(decay, (2 + updates) / (11 + updates))
    raise ValueError(f"unknown EMA warm-up {warmup!r} ({', '.join(WARMUPS)})")


class EMA:
    """A frozen copy of ``model`` (``.model``) that follows it by :func:`ema_update` with the decay
    schedule ``warmup``; ``.updates`` counts the updates (saved in checkpoints to resume)."""

    def __init__(self, model: nn.Module, decay: float, warmup: str = "tf"):
        if warmup not in WARMUPS:
            raise ValueError(f"unknown EMA warm-up {warmup!r} ({', '.join(WARMUPS)})")
        self.decay, self.warmup, self.updates = float(decay), warmup, 0
        self.model = make_teacher(model).eval()

    def update(self, model: nn.Module) -> None:
        ema_update(self.model, model, decay_at(self.decay, self.updates, self.warmup))
        self.updates += 1
