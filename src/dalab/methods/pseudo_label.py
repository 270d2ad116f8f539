r"""Pseudo-labelling (self-training) and DANN + pseudo-labelling.

A model labels the *unlabelled* target training set with its own predictions; only the
confident ones are kept, and the model is then trained on source labels plus those
target pseudo-labels. Every ``relabel_every`` epochs (one "round") the current model
relabels the whole target set, so labels improve as the model improves. Start it from a
teacher with ``TrainConfig.init_from`` (a source-only or DANN ``model.pt``); the first
round's labels are then the teacher's.

.. math::

    \mathcal{L} = \mathrm{CE}(C(F(x_s)), y_s) + w \cdot
      \frac{1}{|B_t|}\sum_{i \in B_t} m_i \, \mathrm{CE}(C(F(x_{t,i})), \hat y_i)

with :math:`\hat y_i = \arg\max_k p_k(x_{t,i})` from the last relabelling and
:math:`m_i = 1` if the sample is selected:

- ``threshold`` selection: :math:`\max_k p_k(x_{t,i}) \ge \tau`;
- ``class_balanced`` selection (as in CBST, Zou et al. 2018): per predicted class, the
  ``fraction`` most confident samples, so easy classes do not crowd out hard ones.

``dann-pl`` adds the same term to DANN's loss. Target labels are never read here:
the pseudo-labels' *accuracy* is measured after the fact by
:func:`dalab.evaluation.pseudo_labels.pseudo_label_quality` from the saved buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.inference import predict_logits
from .base import Batch, Method, accuracy
from .dann import DANN, classify_per_domain, domain_adversarial_loss, features_per_domain, logits_per_domain


def select_pseudo_labels(probs: torch.Tensor, threshold: float = 0.9, class_balanced: bool = False,
                         fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N,), keep mask (N,) bool) from class probabilities (N, C)."""
    conf, labels = probs.max(1)
    if not class_balanced:
        return labels, conf >= threshold
    keep = torch.zeros_like(labels, dtype=torch.bool)
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero(as_tuple=True)[0]
        k = max(1, int(round(fraction * len(idx))))
        top = conf[idx].topk(k).indices
        keep[idx[top]] = True
    return labels, keep


class _PseudoLabelMixin:
    """Holds the pseudo-labels as buffers (so they are checkpointed and resumable)."""

    needs_target_set = True

    def _init_pl(self, threshold, class_balanced, fraction, weight, relabel_every):
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.threshold = float(threshold)
        self.class_balanced = bool(class_balanced)
        self.fraction = float(fraction)
        self.weight = float(weight)
        self.relabel_every = max(1, int(relabel_every))
        self.register_buffer("pl_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("pl_mask", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("pl_conf", torch.zeros(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the buffers' length is the target set's, unknown at construction: adopt the saved one
        for name in ("pl_labels", "pl_mask", "pl_conf"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def relabel(self, model, target_x: torch.Tensor) -> dict:
        probs = predict_logits(model, target_x, domain="target").softmax(1)
        labels, keep = select_pseudo_labels(probs, self.threshold, self.class_balanced, self.fraction)
        dev = self.pl_labels.device
        self.pl_labels = labels.to(dev)
        self.pl_mask = keep.to(dev)
        self.pl_conf = probs.max(1).values.to(dev)
        return self.coverage_logs()

    def coverage_logs(self) -> dict:
        n = max(1, len(self.pl_mask))
        return {"pl_coverage": float(self.pl_mask.sum().item()) / n,
                "pl_mean_confidence": float(self.pl_conf.mean().item()) if len(self.pl_conf) else 0.0}

    def on_epoch_start(self, model, epoch, target_x):
        if target_x is None:
            return {}
        if epoch % self.relabel_every == 0 or len(self.pl_labels) != len(target_x):
            logs = self.relabel(model, target_x)
        else:
            logs = self.coverage_logs()
        logs["pl_round"] = epoch // self.relabel_every + 1
        return logs

    def pseudo_label_term(self, logits_t: torch.Tensor, idx_t: torch.Tensor):
        y = self.pl_labels[idx_t]
        m = self.pl_mask[idx_t].float()
        ce = F.cross_entropy(logits_t.float(), y, reduction="none")
        return (ce * m).sum() / max(1, len(m)), m.mean()


class PseudoLabel(_PseudoLabelMixin, Method):
    """Source cross-entropy + ``weight`` x cross-entropy on the selected target pseudo-labels."""

    name = "pseudo-label"
    version = 1

    def __init__(self, threshold: float = 0.9, class_balanced: bool = False, fraction: float = 0.5,
                 weight: float = 1.0, relabel_every: int = 1):
        Method.__init__(self)
        self._init_pl(threshold, class_balanced, fraction, weight, relabel_every)

    def loss(self, model, batch: Batch):
        ls, lt = logits_per_domain(model, batch.xs, batch.xt)
        task = F.cross_entropy(ls, batch.ys)
        pl, frac = self.pseudo_label_term(lt, batch.idx_t)
        return task + self.weight * pl, {"task_loss": task.detach(), "pl_loss": pl.detach(),
                                         "pl_batch_kept": frac.detach(),
                                         "train_acc": accuracy(ls.detach(), batch.ys)}


class DANNPseudoLabel(_PseudoLabelMixin, DANN):
    """DANN's loss + the same pseudo-label term."""

    name = "dann-pl"
    version = 1
    tasks = ("classification",)  # its pseudo-labels are one class per image (not DANN's pixel variant)

    def __init__(self, lambda_max: float = 1.0, schedule: str = "ganin", gamma: float = 10.0,
                 threshold: float = 0.9, class_balanced: bool = False, fraction: float = 0.5,
                 weight: float = 1.0, relabel_every: int = 1):
        DANN.__init__(self, lambda_max, schedule, gamma, reverse=True)
        self._init_pl(threshold, class_balanced, fraction, weight, relabel_every)

    def loss(self, model, batch: Batch):
        ns = batch.xs.shape[0]
        f = features_per_domain(model, batch.xs, batch.xt)
        logits = classify_per_domain(model, f, ns)
        task = F.cross_entropy(logits[:ns], batch.ys)
        lam = self.current_lambda(batch.p)
        d = model.domain_logits(f, lam)
        dom, dom_acc = domain_adversarial_loss(d.float(), ns)
        pl, frac = self.pseudo_label_term(logits[ns:], batch.idx_t)
        return task + dom + self.weight * pl, {
            "task_loss": task.detach(), "domain_loss": dom.detach(), "domain_acc": dom_acc,
            "pl_loss": pl.detach(), "pl_batch_kept": frac.detach(),
            "train_acc": accuracy(logits[:ns].detach(), batch.ys), "lambda": torch.tensor(lam)}
