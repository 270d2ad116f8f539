r"""CBST: class-balanced self-training for semantic segmentation (Zou, Yu, Kumar & Wang, ECCV 2018),
without the spatial priors (CBST-SP) and the small-class patch mining of the authors' code.

At the start of every epoch after ``warmup_epochs`` source-only epochs (round
:math:`r = \text{epoch} - \text{warmup\_epochs}`), the model labels the whole unlabelled target
training set. With :math:`p_{n,c}` the softmax probability of class :math:`c` at target pixel
:math:`n` and the portion :math:`q_r = \min(q_0 + r\,\Delta q,\ q_{max})`:

1. per class :math:`c`, among the pixels *predicted* as :math:`c` (:math:`\arg\max_k p_{n,k} = c`,
   :math:`N_c` of them), the threshold :math:`k_c` is the :math:`\lfloor q_r N_c \rfloor`-th
   largest confidence :math:`\max_k p_{n,k}`: the top :math:`q_r` of each class pass it, however
   rare the class. A class with :math:`\lfloor q_r N_c \rfloor = 0` gets :math:`k_c = 1`.
2. each pixel takes the class of largest *class-normalised* probability and is kept if that
   reaches 1 (the closed-form solution of the paper's CBST objective, and its code):

.. math::

    \hat y_n = \arg\max_c \frac{p_{n,c}}{k_c} \quad \text{if} \quad \max_c \frac{p_{n,c}}{k_c} \ge 1,
    \qquad \hat y_n = \text{IGNORE (255) otherwise.}

The pseudo-label maps (N, H, W) uint8 are a persistent buffer (checkpointed, so a resumed run has
them). Training minimises, with :math:`\hat y` looked up by ``batch.idx_t``,

.. math::

    \mathcal{L} = \mathrm{CE}(G(x_s), y_s) + w\,\mathrm{CE}(G(x_t), \hat y_t),

both cross-entropies averaged over scored pixels only (an all-ignored target batch adds 0).
Target images are predicted in eval mode, without gradients, with the target batch-norm
statistics, in batches of ``predict_batch``; two passes (thresholds, then labels) so no
(N, K, H, W) tensor is held. ``on_epoch_start`` records the portion and the fraction of target
pixels that got a pseudo-label (``pl_coverage``).

Defaults and their sources (yzou2/CBST, ``issegm/script-self-paced-self-trained-segresnet.py``
and README): ``init_portion = 0.2`` (the README's CBST command, ``--init-tgt-port 0.2``),
``portion_step = 0.05`` (``--step-tgt-port``), ``max_portion = 0.5`` (``--max-tgt-port``),
``weight = 1`` (source and target terms summed). The authors relabel every round of 2 epochs
and start from a converged source-only model; here every epoch is a round, and
``warmup_epochs = 1`` source-only epoch stands in for the source model (set it to 0 when the run
starts from ``--init-from`` source-only weights). They also subsample every 4th pixel to sort
confidences; here all pixels are used.

Shapes: ``xs``, ``xt`` (B, 3, H, W) uint8; logits (B, K, H, W); pseudo-labels (B, H, W) uint8.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.batchnorm import bn_domain
from ..models.inference import evaluating
from ..tasks import IGNORE, accuracy, task_loss
from .base import Batch, Method
from .dann import logits_per_domain


def class_balanced_thresholds(conf: torch.Tensor, pred: torch.Tensor, num_classes: int,
                              portion: float) -> torch.Tensor:
    """(K,) thresholds :math:`k_c`: the ``floor(portion * N_c)``-th largest of the confidences
    ``conf`` of the ``N_c`` pixels with ``pred == c``; 1.0 where that count is 0."""
    conf, pred = conf.reshape(-1).float(), pred.reshape(-1).long()
    thr = torch.ones(num_classes, device=conf.device)
    for c in range(num_classes):
        v = conf[pred == c]
        k = math.floor(portion * len(v))
        if k >= 1:
            thr[c] = v.kthvalue(len(v) - k + 1).values  # the k-th largest
    return thr


def cbst_pseudo_labels(probs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 pseudo-labels from probabilities (B, K, H, W): ``argmax_c p_c / k_c`` where
    ``max_c p_c / k_c >= 1``, :data:`~dalab.tasks.IGNORE` elsewhere."""
    ratio = probs / thresholds.to(probs.device).view(1, -1, *([1] * (probs.dim() - 2)))
    best, labels = ratio.max(1)
    labels = labels.to(torch.uint8)
    labels[best < 1.0] = IGNORE
    return labels


def pseudo_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the pixels with a label (0, with gradient, if there are none)."""
    ce = task_loss(logits, labels, reduction="none")
    return ce.sum() / (labels != IGNORE).sum().clamp(min=1)


@torch.no_grad()
def _over_target(model, x: torch.Tensor, batch_size: int, fn) -> list:
    """``fn(softmax(model(batch)))`` for each batch of ``x``, in eval mode with target statistics."""
    with evaluating(model, "fp32", "target") as dev:
        return [fn(F.softmax(model(x[i:i + batch_size].to(dev)).float(), 1)) for i in range(0, len(x), batch_size)]


class CBST(Method):
    r"""Class-balanced self-training (see the module docstring)."""

    name = "cbst"
    version = 1
    tasks = ("segmentation",)
    needs_target_set = True

    def __init__(self, init_portion: float = 0.2, portion_step: float = 0.05, max_portion: float = 0.5,
                 warmup_epochs: int = 1, weight: float = 1.0, predict_batch: int = 256):
        super().__init__()
        for n, v in (("init_portion", init_portion), ("max_portion", max_portion)):
            if not 0.0 < float(v) <= 1.0:
                raise ValueError(f"{n} must be in (0, 1], got {v}")
        if float(portion_step) < 0 or int(warmup_epochs) < 0 or int(predict_batch) < 1:
            raise ValueError("portion_step and warmup_epochs must be >= 0, predict_batch >= 1")
        self.init_portion = float(init_portion)
        self.portion_step = float(portion_step)
        self.max_portion = float(max_portion)
        self.warmup_epochs = int(warmup_epochs)
        self.weight = float(weight)
        self.predict_batch = int(predict_batch)
        self.register_buffer("pl_labels", torch.zeros(0, dtype=torch.uint8))
        self.register_buffer("thresholds", torch.zeros(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the buffers' shapes are the target set's, unknown at construction: adopt the saved ones
        for name in ("pl_labels", "thresholds"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def portion(self, epoch: int) -> float:
        """:math:`q_r`, the portion of each class's pixels labelled in round ``epoch - warmup_epochs``."""
        return min(self.init_portion + (epoch - self.warmup_epochs) * self.portion_step, self.max_portion)

    def relabel(self, model, target_x: torch.Tensor, portion: float) -> dict:
        confs, preds = zip(*_over_target(model, target_x, self.predict_batch,
                                         lambda p: (p.max(1).values, p.argmax(1).to(torch.uint8))))
        thr = class_balanced_thresholds(torch.cat(confs), torch.cat(preds), int(model.num_classes), portion)
        labels = torch.cat(_over_target(model, target_x, self.predict_batch, lambda p: cbst_pseudo_labels(p, thr)))
        self.pl_labels = labels.to(self.pl_labels.device)
        self.thresholds = thr.to(self.thresholds.device)
        return {"cbst_portion": portion, "pl_coverage": float((labels != IGNORE).float().mean())}

    def on_epoch_start(self, model, epoch, target_x):
        if target_x is None or len(target_x) == 0 or epoch < self.warmup_epochs:
            return {}
        return self.relabel(model, target_x, self.portion(epoch))

    def loss(self, model, batch: Batch):
        if len(self.pl_labels) == 0:  # warm-up: source only
            with bn_domain(model, "source"):
                ls = model(batch.xs)
            task = task_loss(ls, batch.ys)
            return task, {"task_loss": task.detach(), "pl_loss": torch.zeros((), device=task.device),
                          "train_acc": accuracy(ls.detach(), batch.ys)}
        if batch.idx_t is None:
            raise ValueError("cbst needs batch.idx_t, the indices of the target images in the training set")
        ls, lt = logits_per_domain(model, batch.xs, batch.xt)
        task = task_loss(ls, batch.ys)
        y = self.pl_labels[batch.idx_t.to(self.pl_labels.device)].to(lt.device)
        pl = pseudo_label_loss(lt, y)
        return task + self.weight * pl, {"task_loss": task.detach(), "pl_loss": pl.detach(),
                                         "pl_batch_kept": (y != IGNORE).float().mean(),
                                         "train_acc": accuracy(ls.detach(), batch.ys)}
