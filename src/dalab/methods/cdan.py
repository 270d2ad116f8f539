r"""CDAN and CDAN+E: conditional domain adversarial networks (Long et al., NeurIPS 2018).

DANN aligns the feature marginals :math:`P(f)`; CDAN conditions the discriminator on the
classifier's prediction :math:`g = \mathrm{softmax}(C(f))` through the *multilinear map*

.. math::

    h = T_\otimes(f, g) = \mathrm{vec}(g \otimes f) \in \mathbb{R}^{C \cdot d}
    \quad\text{or, randomised,}\quad
    h = T_\odot(f, g) = \tfrac{1}{\sqrt{d_r}} (R_f f) \odot (R_g g) \in \mathbb{R}^{d_r},

so the joint :math:`P(f, g)` is aligned and multimodal class structure survives. With the
GRL :math:`R_\lambda` (Ganin ramp on :math:`\lambda`, as DANN), one step minimises

.. math::

    \mathcal{L} = \mathrm{CE}(C(f_s), y_s)
      + \frac{\sum_i w_i\, \mathrm{BCE}\big(D(R_\lambda(h_i)), d_i\big)}{\sum_i w_i},
    \qquad d_i = 1 \text{ (source)}, 0 \text{ (target)}.

CDAN: :math:`w_i = 1`. CDAN+E (entropy conditioning): :math:`w_i = 1 + e^{-H(g_i)}`,
normalised to sum to one within each domain, so confident (easy-to-transfer) examples
weigh more in the alignment. As in the paper's code, :math:`g` enters :math:`h` detached
and the weights carry no gradient.

Shapes: ``xs``, ``xt`` (B,3,28,28) -> ``f`` (2B, 768) -> ``g`` (2B, 10) -> ``h`` (2B, 7680)
(full map; ``random_dim`` > 0 switches to :math:`T_\odot` with fixed Gaussian :math:`R_f, R_g`)
-> discriminator :math:`D`: Linear(h, hidden) - ReLU - Linear(hidden, hidden) - ReLU -
Linear(hidden, 1), built in :meth:`CDAN.setup` and owned by the method. With batch norm,
each domain is passed through the extractor on its own (domain-specific batch statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.grl import LambdaSchedule, grad_reverse
from .base import Batch, Method, accuracy
from .dann import classify_per_domain, features_per_domain
from .losses import entropy


def multilinear_map(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``vec(g ⊗ f)``: (N, d), (N, C) -> (N, C*d), row i = [g_i1 f_i, ..., g_iC f_i]."""
    return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


def entropy_weights(g_logits: torch.Tensor, n_source: int) -> torch.Tensor:
    """CDAN+E weights ``1 + exp(-H)``, normalised to sum to 1 within source and within target,
    detached; shape (N,)."""
    w = 1.0 + torch.exp(-entropy(g_logits.detach()))
    ws, wt = w[:n_source], w[n_source:]
    return torch.cat([ws / ws.sum(), wt / wt.sum()])


def weighted_domain_loss(d_logits: torch.Tensor, n_source: int,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i w_i BCE(d_i, label_i) / sum_i w_i`` (plain mean when ``weights`` is None)."""
    labels = torch.zeros_like(d_logits)
    labels[:n_source] = 1.0
    bce = F.binary_cross_entropy_with_logits(d_logits, labels, reduction="none")
    if weights is None:
        return bce.mean()
    return (weights * bce).sum() / weights.sum()


class CDAN(Method):
    name = "cdan"
    version = 1
    entropy_conditioning = False

    def __init__(self, lambda_max: float = 1.0, schedule: str = "ganin", gamma: float = 10.0,
                 hidden: int = 500, random_dim: int = 0):
        super().__init__()
        self.lambda_max = float(lambda_max)
        self.schedule = schedule
        self.gamma = float(gamma)
        self.hidden = int(hidden)
        self.random_dim = int(random_dim)
        self._sched = LambdaSchedule(self.lambda_max, schedule, self.gamma)
        self.disc: nn.Module | None = None

    def setup(self, model, device) -> None:
        dim, classes = model.feature_dim, model.num_classes
        if self.random_dim > 0:
            gen = torch.Generator().manual_seed(0)
            self.register_buffer("r_f", torch.randn(dim, self.random_dim, generator=gen).to(device))
            self.register_buffer("r_g", torch.randn(classes, self.random_dim, generator=gen).to(device))
            in_dim = self.random_dim
        else:
            in_dim = dim * classes
        self.disc = nn.Sequential(nn.Linear(in_dim, self.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(self.hidden, self.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(self.hidden, 1)).to(device)

    def conditioning(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.random_dim > 0:
            return (f @ self.r_f) * (g @ self.r_g) / self.random_dim ** 0.5
        return multilinear_map(f, g)

    def loss(self, model, batch: Batch):
        ns = batch.xs.shape[0]
        f = features_per_domain(model, batch.xs, batch.xt)
        logits = classify_per_domain(model, f, ns)
        task = F.cross_entropy(logits[:ns], batch.ys)
        g = F.softmax(logits.float().detach(), dim=1).to(f.dtype)
        lam = self._sched(batch.p)
        d = self.disc(grad_reverse(self.conditioning(f, g), lam)).squeeze(-1).float()
        w = entropy_weights(logits, ns) if self.entropy_conditioning else None
        dom = weighted_domain_loss(d, ns, w)
        labels = torch.zeros_like(d)
        labels[:ns] = 1.0
        dom_acc = ((d.detach() > 0).float() == labels).float().mean()
        return task + dom, {"task_loss": task.detach(), "domain_loss": dom.detach(), "domain_acc": dom_acc,
                            "train_acc": accuracy(logits[:ns].detach(), batch.ys),
                            "lambda": torch.tensor(lam)}


class CDANE(CDAN):
    """CDAN+E: CDAN with entropy conditioning (see the module docstring)."""

    name = "cdan+e"
    version = 1
    entropy_conditioning = True
