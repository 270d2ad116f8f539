r"""Gradient Reversal Layer (Ganin & Lempitsky, ICML 2015, Sec. 3.3).

Forward: identity, :math:`R_\lambda(x) = x`. Backward: :math:`\partial R_\lambda/\partial x = -\lambda I`,
so the layer below receives :math:`-\lambda \cdot g` for an upstream gradient :math:`g`.
Placed between the feature extractor and the domain head, it makes one backward pass
minimise the domain loss for the head while *maximising* it for the features.

Three pieces, from low to high level:

- :class:`GradReverseFn` / :func:`grad_reverse`: the autograd function.
- :class:`GradientReversal`: a module holding :math:`\lambda` (settable between steps).
- :func:`ganin_lambda` and :class:`LambdaSchedule`: :math:`\lambda_p = \lambda_{max}
  (2 / (1 + e^{-\gamma p}) - 1)` with training progress :math:`p \in [0, 1]`, or a constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class GradReverseFn(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-lambd``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:  # noqa: D401
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Functional GRL: ``y = x`` and ``dL/dx = -lambd * dL/dy``."""
    return GradReverseFn.apply(x, lambd)


class GradientReversal(nn.Module):
    """GRL as a module. ``lambd`` is a plain attribute: set it each step from a schedule.

    With ``lambd = 0`` no gradient flows back (the domain head trains, the features do
    not feel it). A negative ``lambd`` turns the reversal off and *adds* the domain
    gradient (the "no GRL" ablation of the practical's first question).
    """

    def __init__(self, lambd: float = 1.0):
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"


def ganin_lambda(p: float, lambda_max: float = 1.0, gamma: float = 10.0) -> float:
    """Ganin's ramp: 0 at p=0, rising to ``lambda_max`` (0.987 of it at p=0.5 for gamma=10)."""
    p = min(max(float(p), 0.0), 1.0)
    return lambda_max * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


@dataclass(frozen=True)
class LambdaSchedule:
    """``kind='ganin'``: the sigmoid ramp with ``gamma``; ``kind='constant'``: always ``lambda_max``."""

    lambda_max: float = 1.0
    kind: str = "ganin"
    gamma: float = 10.0

    def __call__(self, p: float) -> float:
        if self.kind == "constant":
            return float(self.lambda_max)
        if self.kind == "ganin":
            return ganin_lambda(p, self.lambda_max, self.gamma)
        raise ValueError(f"unknown lambda schedule {self.kind!r}")
