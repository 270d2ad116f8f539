r"""ADVENT: entropy minimisation for semantic segmentation, directly (MinEnt) and adversarially
(AdvEnt) (Vu, Jain, Bucher, Cord & Pérez, CVPR 2019).

With softmax maps :math:`P_x = \mathrm{softmax}(G(x))` (B, K, H, W), the *weighted
self-information* map is

.. math::

    I_x^{(h,w,k)} = -\frac{P_x^{(h,w,k)} \log P_x^{(h,w,k)}}{\log K} \qquad \text{(B, K, H, W)},

so that :math:`\sum_k I_x^{(h,w,k)}` is the pixel's entropy normalised to [0, 1] (1 for a uniform
prediction). **MinEnt** (``minent``) minimises the mean normalised entropy of target pixels,

.. math::

    \mathcal{L} = \mathrm{CE}(G(x_s), y_s) + \lambda_{ent}\,
      \frac{1}{BHW}\sum_{b,h,w}\sum_k I_{x_t}^{(h,w,k)} .

**AdvEnt** (``advent``) instead aligns the *distributions* of the maps :math:`I`: a fully
convolutional discriminator :math:`D` (:func:`~dalab.methods.adaptseg.fc_discriminator`) tells
source maps (label 1) from target maps (label 0), and the segmenter learns to fool it on target:

.. math::

    \mathcal{L}_D = \tfrac12\,\mathrm{BCE}(D(I_{x_s}), 1) + \tfrac12\,\mathrm{BCE}(D(I_{x_t}), 0),
    \qquad
    \mathcal{L}_G = \mathrm{CE}(G(x_s), y_s) + \lambda_{adv}\,\mathrm{BCE}(D(I_{x_t}), 1)
      + \lambda_{ent}\,\frac{1}{BHW}\sum_{b,h,w,k} I_{x_t}^{(h,w,k)},

optimised as in :mod:`dalab.methods.adaptseg` (one step on :math:`\mathcal{L}_G + \mathcal{L}_D`,
:math:`D` on detached maps, the adversarial term through a frozen copy of :math:`D`). The maps
are computed at the input resolution, as the paper's code upsamples its predictions before
:math:`D`.

Defaults and their sources (valeoai/ADVENT, ``advent/domain_adaptation/config.py``):
``lambda_adv = 0.001`` (``LAMBDA_ADV_MAIN``) and ``lambda_ent = 0.001`` (``LAMBDA_ENT_MAIN``,
MinEnt's weight). ``ndf = 32`` instead of 64 and the discriminator's last layer: see
:mod:`dalab.methods.adaptseg`. The paper's "AdvEnt + MinEnt" row averages the predictions of two
separately trained models; ``advent`` here adds the MinEnt term to the AdvEnt loss of one model
(set ``lambda_ent=0`` for the paper's AdvEnt alone). Single level only (no auxiliary head).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..tasks import accuracy, task_loss
from .adaptseg import AdaptSeg
from .base import Batch, Method
from .dann import logits_per_domain


def self_information(logits: torch.Tensor) -> torch.Tensor:
    """Weighted self-information ``-p log p / log K`` of ``softmax(logits)`` over dim 1; same shape."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp) / math.log(logits.shape[1])


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over pixels (and images) of the entropy normalised to [0, 1]; a 0-dim tensor."""
    return self_information(logits).sum(1).mean()


class MinEnt(Method):
    r"""Direct entropy minimisation on target pixels (see the module docstring)."""

    name = "minent"
    version = 1
    tasks = ("segmentation",)

    def __init__(self, lambda_ent: float = 0.001):
        super().__init__()
        self.lambda_ent = float(lambda_ent)

    def loss(self, model, batch: Batch):
        ls, lt = logits_per_domain(model, batch.xs, batch.xt)
        task = task_loss(ls, batch.ys)
        ent = entropy_loss(lt)
        return task + self.lambda_ent * ent, {"task_loss": task.detach(), "ent_loss": ent.detach(),
                                              "train_acc": accuracy(ls.detach(), batch.ys)}


class AdvEnt(AdaptSeg):
    r"""Adversarial entropy minimisation, plus MinEnt's term (see the module docstring): AdaptSegNet's
    game played on self-information maps instead of softmax maps."""

    name = "advent"
    version = 1

    def __init__(self, lambda_adv: float = 0.001, lambda_ent: float = 0.001, ndf: int = 32):
        super().__init__(lambda_adv, ndf)
        self.lambda_ent = float(lambda_ent)

    def maps(self, logits: torch.Tensor) -> torch.Tensor:
        return self_information(logits)

    def target_terms(self, maps_t: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        return {"ent_loss": (self.lambda_ent, maps_t.sum(1).mean())}
