"""The method interface: one small object per algorithm, one ``loss`` per training step.

A method never owns the optimiser or the data loop (that is :mod:`dalab.training`); it
maps a :class:`Batch` to a scalar loss plus a few detached metrics. This keeps each
algorithm to a page and lets a user call it from their own training loop::

    method = DANN()
    loss, logs = method.loss(model, Batch(xs, ys, xt, p=step / total_steps))
    loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass
class Batch:
    """One step's data. ``yt`` is only ever filled for methods with ``uses_target_labels``."""

    xs: torch.Tensor            # source images (B, 3, H, W), uint8 or float
    ys: torch.Tensor            # source labels (B,)
    xt: torch.Tensor | None     # target images, unlabelled for adaptation methods
    yt: torch.Tensor | None = None
    p: float = 0.0              # training progress in [0, 1] (drives schedules)


class Method:
    """Base class. Subclasses set ``name`` and implement :meth:`loss`."""

    name: ClassVar[str] = "base"
    uses_target: ClassVar[bool] = True          # needs unlabelled target images
    uses_target_labels: ClassVar[bool] = False  # oracle only: never true for UDA methods
    needs_domain_head: ClassVar[bool] = False

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def describe(self) -> dict:
        """Hyper-parameters worth recording in summaries."""
        return {k: v for k, v in vars(self).items() if isinstance(v, (int, float, str, bool))}


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == y).float().mean()
