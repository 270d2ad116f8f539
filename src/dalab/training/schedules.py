r"""The learning-rate schedules, as functions of the training progress :math:`p \in [0, 1]`.

- ``ganin`` (Ganin & Lempitsky 2015): :math:`\mu_p = \mu_0 / (1 + 10 p)^{0.75}`;
- ``inv`` (the inverse decay of Caffe's ``"inv"`` policy, the default of TLlib's image-classification
  scripts and of Long et al.'s DAN/CDAN code): :math:`\mu_t = \mu_0 (1 + \gamma t)^{-0.75}` with
  :math:`t` the step and :math:`\gamma = 0.001` (TLlib ``--lr-gamma 0.001 --lr-decay 0.75``);
- ``constant``: :math:`\mu_0`.

A linear warm-up over the first ``warmup`` fraction of the run multiplies it by
:math:`r + (1 - r)\,p / w` for :math:`p < w`, with :math:`r = 10^{-6}` (DAFormer's ``poly10warm``:
``warmup_ratio=1e-6`` over 1,500 of 40,000 iterations, i.e. :math:`w = 0.0375`).
"""

from __future__ import annotations

WARMUP_RATIO = 1e-6
INV_GAMMA, INV_POWER = 0.001, 0.75
SCHEDULES = ("ganin", "inv", "constant")


def lr_at(cfg, p: float, total_steps: int | None = None) -> float:
    """The learning rate of the run configured by ``cfg`` (a TrainConfig) at progress ``p``;
    ``total_steps`` turns ``p`` into a step for ``inv``."""
    lr0 = cfg.resolved_lr()
    if cfg.lr_schedule == "ganin":
        lr = lr0 / (1.0 + 10.0 * p) ** 0.75
    elif cfg.lr_schedule == "inv":
        lr = lr0 * (1.0 + INV_GAMMA * p * (total_steps or 0)) ** (-INV_POWER)
    else:
        lr = lr0
    w = getattr(cfg, "warmup", 0.0) or 0.0
    if w > 0 and p < w:
        lr *= WARMUP_RATIO + (1.0 - WARMUP_RATIO) * p / w
    return lr
