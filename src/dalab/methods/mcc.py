r"""MCC: minimum class confusion (Jin, Wang, Long & Wang, ECCV 2020).

On a target batch with logits :math:`Z \in \mathbb{R}^{B \times C}` and temperature
:math:`T`, :math:`\hat Y = \mathrm{softmax}(Z / T)`. Each example is weighted by its
certainty, :math:`W_{ii} = \frac{B\,(1 + e^{-H(\hat y_i)})}{\sum_{i'} (1 + e^{-H(\hat y_{i'})})}`
(detached), the class-correlation matrix is :math:`\mathbf{C} = \hat Y^\top W \hat Y`
(:math:`C \times C`), and it is normalised per category (column),
:math:`\tilde C_{jj'} = C_{jj'} / \sum_{j''} C_{j''j'}`. The class-confusion loss is the
off-diagonal mass

.. math::

    \mathcal{L}_{MCC}(Z) = \frac{1}{C} \sum_{j=1}^{C} \sum_{j' \ne j} |\tilde C_{jj'}|,

and one step minimises :math:`\mathrm{CE}(C(f_s), y_s) + \mu\, \mathcal{L}_{MCC}(Z_t)`.
Defaults: :math:`T = 2.5`, :math:`\mu = 1` (the paper's). Shapes: ``xs``, ``xt`` (B,3,28,28)
-> features (2B, 768) -> logits (2B, 10); the loss uses the target half only. No domain
discriminator; with batch norm each domain gets its own batch statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Method, accuracy
from .dann import classify_per_domain, features_per_domain
from .losses import entropy


def mcc_loss(target_logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """The class-confusion loss of a target batch of logits (B, C); a scalar in [0, (C-1)/C]."""
    z = target_logits.float()
    b, c = z.shape
    y = F.softmax(z / temperature, dim=1)
    h = entropy(z / temperature).detach()
    w = 1.0 + torch.exp(-h)
    w = (b * w / w.sum()).unsqueeze(1)                     # (B, 1)
    conf = (y * w).t() @ y                                 # (C, C)
    conf = conf / conf.sum(dim=0, keepdim=True)            # each column sums to 1
    return (conf.sum() - conf.trace()) / c


class MCC(Method):
    name = "mcc"
    version = 1

    def __init__(self, temperature: float = 2.5, mu: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)
        self.mu = float(mu)

    def loss(self, model, batch: Batch):
        ns = batch.xs.shape[0]
        logits = classify_per_domain(model, features_per_domain(model, batch.xs, batch.xt), ns)
        task = F.cross_entropy(logits[:ns], batch.ys)
        mcc = mcc_loss(logits[ns:], self.temperature)
        return task + self.mu * mcc, {"task_loss": task.detach(), "mcc_loss": mcc.detach(),
                                      "train_acc": accuracy(logits[:ns].detach(), batch.ys)}
