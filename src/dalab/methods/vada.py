r"""VADA and DIRT-T (Shu, Bui, Narui & Ermon, "A DIRT-T approach to unsupervised domain
adaptation", ICLR 2018).

**VADA** (virtual adversarial domain adaptation) adds the *cluster assumption* to DANN:
decision boundaries should not cross dense target regions. With features :math:`f`,
classifier :math:`h = C \circ F`, domain head :math:`D` behind a GRL of constant strength
:math:`\lambda_d`, conditional entropy
:math:`\mathcal{L}_c(x_t) = -\mathbb{E}_{x_t}\, h(x_t)^\top \log h(x_t)` and virtual adversarial
loss :math:`\mathcal{L}_v(x) = \mathbb{E}_x \max_{\|r\|\le\epsilon} \mathrm{KL}(h(x) \,\|\, h(x+r))`:

.. math::

    \mathcal{L}_{VADA} = \mathrm{CE}(h(x_s), y_s) + \lambda_d\, \mathcal{L}_{dom}
      + \lambda_s\, \mathcal{L}_v(x_s) + \lambda_t \big(\mathcal{L}_c(x_t) + \mathcal{L}_v(x_t)\big).

The GRL makes :math:`D` minimise the (unweighted) domain BCE while the features feel
:math:`-\lambda_d` times its gradient, i.e. the paper's two-player game with the minimax
generator loss (``adversary="minimax"``, the default). ``adversary="non-saturating"`` plays it as
Shu et al.'s code does: :math:`D` learns from the BCE on detached features, and the features
minimise :math:`\lambda_d` times the BCE with the domain labels flipped, whose gradient does not
vanish when :math:`D` wins (:func:`dalab.methods.dann.nonsaturating_domain_losses`).
Paper values for MNIST -> MNIST-M (instance-normalised inputs, Adam 1e-3):
:math:`\lambda_d = 10^{-2}, \lambda_s = 0, \lambda_t = 10^{-2}`; they are the defaults here.

**DIRT-T** (decision-boundary iterative refinement with a teacher) starts from a VADA
model and drops the source: with a frozen teacher :math:`h_{\theta_{n-1}}`

.. math::

    \mathcal{L}_{DIRT\text{-}T} = \lambda_t \big(\mathcal{L}_c(x_t) + \mathcal{L}_v(x_t)\big)
      + \beta\, \mathbb{E}_{x_t} \mathrm{KL}\big(h_{\theta_{n-1}}(x_t) \,\|\, h_\theta(x_t)\big),

an approximate natural-gradient step; the teacher is replaced by the student every
``teacher_every`` epochs (default 1: at each epoch start). Paper :math:`\beta = 10^{-2}`
for MNIST -> MNIST-M. Start it with ``--init-from RUN/model.pt`` of a VADA run (from random
weights it would only sharpen the initial, meaningless predictions). The source batch is ignored;
``source_val_acc`` is still recorded, as a sanity check, not a selection rule.

Shapes: ``xs``, ``xt`` (B,3,28,28) -> features (2B, 768) -> logits (2B, 10), domain
logits (2B,); VAT costs two extra forward passes and one backward per perturbed batch
(:func:`dalab.methods.losses.vat_loss`, radius ``vat_eps`` in [0, 1] pixel units).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..models.batchnorm import bn_domain
from .base import Batch, Method, accuracy
from .dann import classify_per_domain, domain_adversarial_loss, features_per_domain, nonsaturating_domain_losses
from .losses import entropy, kl_logits, vat_loss


class VADA(Method):
    name = "vada"
    version = 1
    needs_domain_head = True

    def __init__(self, lambda_d: float = 1e-2, lambda_s: float = 0.0, lambda_t: float = 1e-2,
                 vat_eps: float = 1.0, adversary: str = "minimax"):
        super().__init__()
        if adversary not in ("minimax", "non-saturating"):
            raise ValueError(f"unknown adversary {adversary!r} (minimax, non-saturating)")
        self.adversary = adversary
        self.lambda_d = float(lambda_d)
        self.lambda_s = float(lambda_s)
        self.lambda_t = float(lambda_t)
        self.vat_eps = float(vat_eps)

    def loss(self, model, batch: Batch):
        ns = batch.xs.shape[0]
        f = features_per_domain(model, batch.xs, batch.xt)
        logits = classify_per_domain(model, f, ns)
        ls, lt = logits[:ns], logits[ns:]
        task = F.cross_entropy(ls, batch.ys)
        if self.adversary == "minimax":  # dom: the discriminator's BCE (the features feel -lambda_d x its gradient)
            d = model.domain_logits(f, self.lambda_d).float()
            dom, dom_acc = domain_adversarial_loss(d, ns)
            adv = dom
        else:
            dom, dom_f, dom_acc = nonsaturating_domain_losses(model.domain_head, f, ns)
            adv = dom + self.lambda_d * dom_f
        ent = entropy(lt).mean()
        zero = torch.zeros((), device=f.device)
        with bn_domain(model, "target"):
            vat_t = vat_loss(model, batch.xt, lt, self.vat_eps) if self.lambda_t > 0 else zero
        with bn_domain(model, "source"):
            vat_s = vat_loss(model, batch.xs, ls, self.vat_eps) if self.lambda_s > 0 else zero
        total = task + adv + self.lambda_s * vat_s + self.lambda_t * (ent + vat_t)
        return total, {"task_loss": task.detach(), "domain_loss": dom.detach(), "domain_acc": dom_acc,
                       "target_entropy": ent.detach(), "vat_target": vat_t.detach(),
                       "vat_source": vat_s.detach(), "train_acc": accuracy(ls.detach(), batch.ys)}


class DIRTT(Method):
    name = "dirt-t"
    version = 1

    def __init__(self, beta: float = 1e-2, lambda_t: float = 1e-2, vat_eps: float = 1.0,
                 teacher_every: int = 1):
        super().__init__()
        self.beta = float(beta)
        self.lambda_t = float(lambda_t)
        self.vat_eps = float(vat_eps)
        self.teacher_every = max(1, int(teacher_every))
        self.teacher: torch.nn.Module | None = None

    def setup(self, model, device) -> None:
        """The teacher starts as a frozen copy of the (``--init-from``) model."""
        self.teacher = copy.deepcopy(model)
        for q in self.teacher.parameters():
            q.requires_grad_(False)

    def on_epoch_start(self, model, epoch, target_x) -> dict:
        if epoch > 0 and epoch % self.teacher_every == 0:
            self.teacher.load_state_dict(model.state_dict())
            return {"teacher_refreshed": 1.0}
        return {}

    def loss(self, model, batch: Batch):
        with bn_domain(model, "target"):  # DIRT-T sees target images only
            lt = model(batch.xt)
            vat_t = vat_loss(model, batch.xt, lt, self.vat_eps)
        with torch.no_grad(), bn_domain(self.teacher, "target"):
            self.teacher.train(model.training)
            lt_teacher = self.teacher(batch.xt)
        ent = entropy(lt).mean()
        kl = kl_logits(lt_teacher, lt).mean()
        total = self.lambda_t * (ent + vat_t) + self.beta * kl
        return total, {"target_entropy": ent.detach(), "vat_target": vat_t.detach(),
                       "teacher_kl": kl.detach()}
