r"""Consistency methods with augmentation: self-ensembling / mean teacher (French, Mackiewicz
& Fisher, ICLR 2018) and FixMatch-style confidence-thresholded pseudo-labels (Sohn et al.,
NeurIPS 2020), plus the batched augmentations they need, written as tensor ops on the
device (no torchvision).

**Augmentations** (:func:`augment`), per image, independently, on a (B,3,H,W) batch in
[0, 1]: a random affine warp (translation up to ``translate`` pixels, rotation up to
``rotate`` degrees, scale in ``1 +- scale``) through one ``affine_grid``/``grid_sample``;
then, for the *strong* level only, per-channel random gain and offset, a random channel
permutation, intensity inversion with probability 1/2 and Gaussian noise. The *weak*
level is the warp with small ranges only. Output is float in [0, 1] (clamped).

**Mean teacher** (``mean-teacher``). A teacher :math:`\bar\theta` is an exponential moving
average of the student, :math:`\bar\theta \leftarrow \alpha \bar\theta + (1 - \alpha)\theta`
after every step (batch-norm buffers copied). With two independent augmentations
:math:`a, a'` of a target batch, student probabilities :math:`z_i = p_\theta(a(x_{t,i}))`,
teacher probabilities :math:`\bar z_i = p_{\bar\theta}(a'(x_{t,i}))` and the confidence mask
:math:`m_i = [\max_c \bar z_{ic} > \tau]`,

.. math::

    \mathcal{L} = \mathrm{CE}(p_\theta(a(x_s)), y_s)
      + w_u \frac{1}{B} \sum_i m_i \, \| z_i - \bar z_i \|_2^2
      + w_{cb}\, \bar m \, \mathrm{BCE}\big(\tfrac{1}{B}\sum_i z_i,\ \tfrac{1}{C}\mathbf{1}\big),

the last term being the class-balance loss (binary cross-entropy of the mean target
prediction against the uniform distribution, weighted by the confident fraction
:math:`\bar m`). Defaults follow French et al.: :math:`\alpha = 0.99, \tau = 0.968, w_u = 3`,
``cls_balance = 0.005``. Source and target go through the student separately (per-domain
batch-norm statistics, as in the paper). The saved model is the student.

**FixMatch** (``fixmatch``). The model's own prediction on a weakly augmented target image
becomes a hard pseudo-label where it is confident, and the model is trained to predict it
on a strongly augmented copy:

.. math::

    \mathcal{L} = \mathrm{CE}(p_\theta(a_w(x_s)), y_s) + w_u \frac{1}{B}\sum_i
      [\max_c q_{ic} > \tau]\; \mathrm{CE}\big(p_\theta(a_s(x_{t,i})), \arg\max_c q_{ic}\big),
    \qquad q_i = p_\theta(a_w(x_{t,i})) \text{ (no gradient)},

with :math:`\tau = 0.95, w_u = 1`.

**AdaMatch** (``adamatch``; Berthelot, Roelofs, Sohn, Carlini & Kurakin, ICLR 2022) is FixMatch
made for a domain shift, against its confirmation bias (a run that locks into its own early
mistakes). With weak/strong augmentations :math:`a_w, a_s`, source probabilities
:math:`p^s_i = p_\theta(a_w(x_{s,i}))` and target ones :math:`q_i = p_\theta(a_w(x_{t,i}))`, all
taken from the same step's batches:

- *distribution alignment*: :math:`\tilde q_i = \mathrm{normalise}\big(q_i \odot
  \bar p^s / \bar q\big)`, with :math:`\bar p^s, \bar q` the batch means, so the pseudo-labels
  keep the source's class proportions instead of drifting to a few classes;
- *relative threshold*: :math:`c_\tau = \tau \cdot \frac{1}{B}\sum_i \max_c p^s_{ic}`, the
  confidence bar rising with the model's confidence on (labelled) source images;
- the loss, with the unlabelled weight warmed up over the first half of training,
  :math:`\mu(p) = \tfrac12 - \tfrac12\cos(\min(\pi, 2\pi p))`:

.. math::

    \mathcal{L} = \mathrm{CE}(p_\theta(a_w(x_s)), y_s) + \mathrm{CE}(p_\theta(a_s(x_s)), y_s)
      + w_u\, \mu(p) \frac{1}{B}\sum_i [\max_c \tilde q_{ic} \ge c_\tau]\;
      \mathrm{CE}\big(p_\theta(a_s(x_{t,i})), \arg\max_c \tilde q_{ic}\big),

with :math:`\tau = 0.9, w_u = 1` (the paper's values). Two departures, both documented choices:
pseudo-labels are hard (argmax), as in FixMatch above; the paper's *random logit interpolation*
(a blend of logits computed with joint and with source-only batch statistics) is left out,
because dalab normalises each domain with its own statistics already. Weak and strong views of
one domain share a pass (the same batch statistics); gradients flow through all four views.

Shapes throughout: (B,3,28,28) images -> (B,10) logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.batchnorm import bn_domain
from ..models.ema import ema_update, make_teacher  # noqa: F401  (re-exported)
from .augment import augment, channel_jitter, random_affine  # noqa: F401  (re-exported)
from .base import Batch, Method, accuracy
from .dann import logits_per_domain


def class_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """BCE of the batch-mean prediction (C,) against the uniform 1/C, averaged over classes."""
    m = probs.mean(0).clamp(1e-6, 1 - 1e-6)
    u = 1.0 / probs.shape[1]
    return -(u * torch.log(m) + (1 - u) * torch.log(1 - m)).mean()


def confident_squared_difference(student_probs: torch.Tensor, teacher_probs: torch.Tensor,
                                 threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mask): ``mean_i m_i ||z_i - zbar_i||^2`` with ``m_i = max zbar_i > threshold``."""
    mask = (teacher_probs.max(1).values > threshold).to(student_probs.dtype)
    sq = ((student_probs - teacher_probs) ** 2).sum(1)
    return (mask * sq).mean(), mask


class MeanTeacher(Method):
    name = "mean-teacher"
    version = 1

    def __init__(self, ema: float = 0.99, threshold: float = 0.968, weight: float = 3.0,
                 cls_balance: float = 0.005, source_aug: str = "strong", target_aug: str = "strong"):
        super().__init__()
        self.ema = float(ema)
        self.threshold = float(threshold)
        self.weight = float(weight)
        self.cls_balance = float(cls_balance)
        self.source_aug = source_aug
        self.target_aug = target_aug
        self.teacher: torch.nn.Module | None = None

    def setup(self, model, device) -> None:
        self.teacher = make_teacher(model)

    def loss(self, model, batch: Batch):
        xs = augment(batch.xs, self.source_aug)
        xt_student = augment(batch.xt, self.target_aug)
        xt_teacher = augment(batch.xt, self.target_aug)
        ls, lt = logits_per_domain(model, xs, xt_student)
        task = F.cross_entropy(ls, batch.ys)
        with torch.no_grad():
            self.teacher.train(model.training)
            with bn_domain(self.teacher, "target"):
                zbar = F.softmax(self.teacher(xt_teacher).float(), 1)
        z = F.softmax(lt.float(), 1)
        cons, mask = confident_squared_difference(z, zbar, self.threshold)
        cb = class_balance_loss(z) * mask.mean()
        total = task + self.weight * cons + self.cls_balance * cb
        return total, {"task_loss": task.detach(), "consistency_loss": cons.detach(),
                       "confident_frac": mask.mean().detach(), "class_balance": cb.detach(),
                       "train_acc": accuracy(ls.detach(), batch.ys)}

    def after_step(self, model) -> None:
        ema_update(self.teacher, model, self.ema)


class FixMatch(Method):
    name = "fixmatch"
    version = 1

    def __init__(self, threshold: float = 0.95, weight: float = 1.0, source_aug: str = "weak"):
        super().__init__()
        self.threshold = float(threshold)
        self.weight = float(weight)
        self.source_aug = source_aug

    def loss(self, model, batch: Batch):
        xs = augment(batch.xs, self.source_aug)
        with torch.no_grad(), bn_domain(model, "target"):
            q = F.softmax(model(augment(batch.xt, "weak")).float(), 1)
        conf, pseudo = q.max(1)
        mask = (conf > self.threshold).float()
        ls, lt = logits_per_domain(model, xs, augment(batch.xt, "strong"))
        task = F.cross_entropy(ls, batch.ys)
        unsup = (F.cross_entropy(lt.float(), pseudo, reduction="none") * mask).mean()
        return task + self.weight * unsup, {"task_loss": task.detach(), "pseudo_loss": unsup.detach(),
                                            "confident_frac": mask.mean(),
                                            "train_acc": accuracy(ls.detach(), batch.ys)}


def distribution_alignment(q: torch.Tensor, p_source: torch.Tensor) -> torch.Tensor:
    """AdaMatch's alignment of target probabilities ``q`` (B, C) to the source's class proportions:
    ``normalise(q * mean(p_source) / mean(q))`` row by row; (B, C), rows sum to 1."""
    aligned = q * (p_source.mean(0) / q.mean(0).clamp_min(1e-12))
    return aligned / aligned.sum(1, keepdim=True).clamp_min(1e-12)


def warmup_weight(p: float) -> float:
    """``1/2 - cos(min(pi, 2 pi p)) / 2``: 0 at the start, 1 from half-way through training."""
    return 0.5 - 0.5 * math.cos(min(math.pi, 2.0 * math.pi * p))


class AdaMatch(Method):
    name = "adamatch"
    version = 1

    def __init__(self, tau: float = 0.9, weight: float = 1.0, align: bool = True):
        super().__init__()
        self.tau = float(tau)
        self.weight = float(weight)
        self.align = bool(align)

    def loss(self, model, batch: Batch):
        b = batch.xs.shape[0]
        xs = torch.cat([augment(batch.xs, "weak"), augment(batch.xs, "strong")])
        xt = torch.cat([augment(batch.xt, "weak"), augment(batch.xt, "strong")])
        ls, lt = logits_per_domain(model, xs, xt)
        ls_w, ls_s = ls[:b], ls[b:]
        lt_w, lt_s = lt[:b], lt[b:]
        task = F.cross_entropy(ls_w, batch.ys) + F.cross_entropy(ls_s, batch.ys)
        with torch.no_grad():
            ps = F.softmax(ls_w.float(), 1)
            q = F.softmax(lt_w.float(), 1)
            if self.align:
                q = distribution_alignment(q, ps)
            threshold = self.tau * ps.max(1).values.mean()
            conf, pseudo = q.max(1)
            mask = (conf >= threshold).float()
        mu = warmup_weight(batch.p)
        unsup = (F.cross_entropy(lt_s.float(), pseudo, reduction="none") * mask).mean()
        return task + self.weight * mu * unsup, {
            "task_loss": task.detach(), "pseudo_loss": unsup.detach(), "confident_frac": mask.mean(),
            "threshold": threshold, "train_acc": accuracy(ls_w.detach(), batch.ys)}
