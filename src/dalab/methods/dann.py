r"""DANN (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016).

With features :math:`f = F(x)`, label head :math:`C` and domain head :math:`D` behind a
GRL of strength :math:`\lambda_p`, one step minimises

.. math::

    \mathcal{L} = \underbrace{\mathrm{CE}(C(f_s), y_s)}_{\text{task}}
      + \underbrace{\mathrm{BCE}\big(D(R_{\lambda}(f_s)), 1\big) + \mathrm{BCE}\big(D(R_{\lambda}(f_t)), 0\big)}_{\text{domain}}

(mean BCE-with-logits over the 2B domain logits, source = 1, target = 0). Because of
:math:`R_\lambda`, the gradient reaching :math:`F` from the domain term is
:math:`-\lambda \, \partial \mathcal{L}_{dom}/\partial f`: the head learns to tell the domains
apart while the features learn to make them indistinguishable (the saddle point of the paper).

Shapes: ``xs`` (B,3,28,28), ``xt`` (B,3,28,28) -> features (2B, 768) computed in *one*
pass (with per-domain batch norm too: :func:`features_per_domain`) -> class logits (B, 10) on
the source half, domain logits (2B,).

Segmentation (DANN on pixels): features are a map (2B, C, h, w), the label head gives (B, K, h, w)
logits scored against (B, H, W) label maps after bilinear upsampling (:func:`dalab.tasks.task_loss`,
255 ignored), and the domain head is fully convolutional: one domain logit per feature-map
location, (2B, 1, h, w), each a BCE term of the same mean. Every location of a source map is
labelled source, so the features learn to make each *local* patch indistinguishable.

``reverse=False`` is the practical's first question: the same three-part network, but the
domain gradient reaches the features un-reversed (scaled by +lambda), so the features
*help* the domain classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.batchnorm import bn_domain, bn_split, has_batch_norm, splits_domains
from ..models.grl import LambdaSchedule
from ..tasks import task_loss
from .base import Batch, Method, accuracy


def domain_adversarial_loss(d_logits: torch.Tensor, n_source: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE-with-logits with labels 1 for the first ``n_source`` logits and 0 for the rest.

    Returns (loss, domain accuracy), the accuracy computed on probabilities > 0.5.
    """
    labels = torch.zeros_like(d_logits)
    labels[:n_source] = 1.0
    loss = F.binary_cross_entropy_with_logits(d_logits, labels)
    acc = ((d_logits.detach() > 0).float() == labels).float().mean()
    return loss, acc


def nonsaturating_domain_losses(head, f: torch.Tensor, n_source: int
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The GAN form of the domain game that Shu et al.'s code uses, instead of a GRL.

    Returns (discriminator loss, feature loss, domain accuracy). The discriminator loss is
    the BCE of ``head`` on *detached* features (source 1, target 0): only the head learns from it.
    The feature loss is the BCE with the labels *flipped*, through a copy of ``head`` whose
    parameters are detached: only the features learn from it. Unlike the GRL's minimax loss,
    its gradient does not vanish when the discriminator wins.
    """
    d = head(f.detach()).float()
    loss_d, acc = domain_adversarial_loss(d, n_source)
    frozen = {k: v.detach() for k, v in head.named_parameters()}
    d_f = torch.func.functional_call(head, frozen, (f,)).float()
    flipped = torch.ones_like(d_f)
    flipped[:n_source] = 0.0
    return loss_d, F.binary_cross_entropy_with_logits(d_f, flipped), acc


def joint_pass(model) -> bool:
    """Whether source and target go through ``model`` in one concatenated pass: a network without
    batch norm, or one that asks for joint batch statistics (``joint_batch_norm = True``)."""
    return not has_batch_norm(model) or bool(getattr(model, "joint_batch_norm", False))


def features_per_domain(model, xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """Features of source then target, (Bs + Bt, D).

    Each domain is normalised with its own batch statistics during training (as in common
    DANN implementations and AdaBN), and updates its own domain's running statistics
    (:mod:`dalab.models.batchnorm`). The network runs once over the concatenated batch:
    without batch norm, and with per-domain batch norm, which then normalises the source rows
    and the target rows separately inside that one pass (:func:`~dalab.models.batchnorm.bn_split`).
    A network with plain ``BatchNorm2d`` (``--bn-stats shared``) takes one pass per domain, unless it
    sets ``joint_batch_norm`` (:class:`~dalab.models.backbones.PhotoNet`, as TLlib's scripts): then
    one pass normalises the concatenated batch with its joint statistics.
    """
    if joint_pass(model):
        return model.features(torch.cat([xs, xt]))
    if splits_domains(model):
        with bn_split(model, len(xs)):
            return model.features(torch.cat([xs, xt]))
    with bn_domain(model, "source"):
        fs = model.features(xs)
    with bn_domain(model, "target"):
        ft = model.features(xt)
    return torch.cat([fs, ft])


def classify_per_domain(model, f: torch.Tensor, n_source: int) -> torch.Tensor:
    """Class logits ``model.classify(f)`` of features whose first ``n_source`` rows are source and
    the rest target, (len(f), K).

    A label head without batch norm (Ganin's) takes them in one pass; so does a head with
    per-domain batch norm (``--arch conv9``'s third conv block), each domain normalised with its
    own statistics, as in :func:`features_per_domain`. A head with plain ``BatchNorm2d`` takes
    each domain in its own pass.
    """
    head = getattr(model, "label_head", None)
    if head is None or not has_batch_norm(head) or getattr(model, "joint_batch_norm", False):
        return model.classify(f)
    if splits_domains(head):
        with bn_split(model, n_source):
            return model.classify(f)
    parts = []
    for dom, part in (("source", f[:n_source]), ("target", f[n_source:])):
        if len(part):
            with bn_domain(model, dom):
                parts.append(model.classify(part))
    return torch.cat(parts)


def logits_per_domain(model, xs: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits ``model(x)`` of source and target batches, with the same rule as
    :func:`features_per_domain` (works for any network that maps images to logits)."""
    if joint_pass(model):
        out = model(torch.cat([xs, xt]))
    elif splits_domains(model):
        with bn_split(model, len(xs)):
            out = model(torch.cat([xs, xt]))
    else:
        with bn_domain(model, "source"):
            ls = model(xs)
        with bn_domain(model, "target"):
            lt = model(xt)
        return ls, lt
    return out[:len(xs)], out[len(xs):]


class DANN(Method):
    r"""Domain-adversarial training (see the module docstring for the loss).

    ``lambda_max``, ``schedule`` (``"ganin"`` ramp or ``"constant"``) and ``gamma`` set the GRL
    strength :math:`\lambda_p` at progress ``batch.p``; ``reverse=False`` gives :class:`NoGRL`.
    Needs a model with ``features``, ``classify`` and ``domain_logits`` (e.g. :class:`DANNNet`).
    """

    name = "dann"
    version = 1
    needs_domain_head = True
    tasks = ("classification", "segmentation")

    def __init__(self, lambda_max: float = 1.0, schedule: str = "ganin", gamma: float = 10.0,
                 reverse: bool = True):
        super().__init__()
        self.lambda_max = float(lambda_max)
        self.schedule = schedule
        self.gamma = float(gamma)
        self.reverse = bool(reverse)
        self._sched = LambdaSchedule(self.lambda_max, schedule, self.gamma)

    def current_lambda(self, p: float) -> float:
        return self._sched(p)

    def loss(self, model, batch: Batch):
        ns = batch.xs.shape[0]
        f = features_per_domain(model, batch.xs, batch.xt)
        logits = classify_per_domain(model, f[:ns], ns)
        task = task_loss(logits, batch.ys)
        lam = self.current_lambda(batch.p)
        d = model.domain_logits(f, lam if self.reverse else -lam)
        dom, dom_acc = domain_adversarial_loss(d.float(), ns)
        return task + dom, {"task_loss": task.detach(), "domain_loss": dom.detach(),
                            "domain_acc": dom_acc, "train_acc": accuracy(logits.detach(), batch.ys),
                            "lambda": torch.tensor(lam)}


class NoGRL(DANN):
    """DANN's network without gradient reversal (see the module docstring)."""

    name = "no-grl"
    version = 1

    def __init__(self, lambda_max: float = 1.0, schedule: str = "ganin", gamma: float = 10.0):
        super().__init__(lambda_max, schedule, gamma, reverse=False)
