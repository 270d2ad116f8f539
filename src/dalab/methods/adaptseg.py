r"""AdaptSegNet: adversarial learning in the output space (Tsai, Hung, Schulter, Sohn, Yang &
Chandraker, CVPR 2018), single level, for semantic segmentation.

A fully convolutional discriminator :math:`D` reads softmax maps :math:`P = \mathrm{softmax}(G(x))`
(B, K, H, W) and outputs one source-vs-target logit per patch (B, 1, H/16, W/16). With source
label 1 and target label 0 (dalab's convention; the paper's code uses 0/1, which is the same game),

.. math::

    \mathcal{L}_D = \tfrac12\,\mathrm{BCE}\big(D(P_s), 1\big) + \tfrac12\,\mathrm{BCE}\big(D(P_t), 0\big),
    \qquad
    \mathcal{L}_G = \mathrm{CE}(G(x_s), y_s) + \lambda_{adv}\,\mathrm{BCE}\big(D(P_t), 1\big),

each BCE a mean over patches and images, CE over scored pixels (:data:`~dalab.tasks.IGNORE` left
out). :math:`D` minimises :math:`\mathcal{L}_D`, the segmenter :math:`\mathcal{L}_G`: the target
maps are pushed to look like source maps. dalab has one optimiser over the network and the
method's parameters, so one step minimises :math:`\mathcal{L}_G + \mathcal{L}_D` with the GAN
trick of :func:`dalab.methods.dann.nonsaturating_domain_losses`: :math:`\mathcal{L}_D` sees
*detached* maps (it trains :math:`D` only) and the adversarial term goes through a copy of
:math:`D` with detached parameters (it trains the segmenter only).

Defaults and their sources:

- ``lambda_adv = 0.001``: the single-level GTA5 -> Cityscapes setting of the authors' code
  (``--lambda-adv-target2 0.001``, README of wasidennis/AdaptSegNet).
- ``ndf = 32``: the discriminator's width. The paper's is 64 (channels 64-128-256-512); our images
  are about 64 x 128 px instead of 1024 x 512, so a quarter of the parameters is plenty.
- Discriminator: four 4x4 convolutions of stride 2 (ndf, 2ndf, 4ndf, 8ndf channels), each
  followed by LeakyReLU(0.2), as in the paper. Its last layer here is a 3x3 convolution of
  stride 1 to one channel instead of the paper's 4x4 of stride 2: at 64 x 128 px the paper's last
  layer would leave 2 x 4 patches, and at 16 x 32 px none at all. Inputs need 16 px per side.
- The paper trains :math:`D` with its own Adam (lr 1e-4); here it shares the trainer's optimiser
  and learning rate.

Shapes: ``xs``, ``xt`` (B, 3, H, W) uint8 -> logits (B, K, H, W) -> softmax maps (B, K, H, W)
-> patch logits (B, 1, H/16, W/16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import accuracy, task_loss
from .base import Batch, Method
from .dann import domain_adversarial_loss, logits_per_domain


def fc_discriminator(in_channels: int, ndf: int = 32) -> nn.Sequential:
    """AdaptSegNet/ADVENT's fully convolutional discriminator (see the module docstring):
    (B, in_channels, H, W) -> (B, 1, H/16, W/16) logits."""
    layers: list[nn.Module] = []
    c = in_channels
    for mult in (1, 2, 4, 8):
        layers += [nn.Conv2d(c, ndf * mult, kernel_size=4, stride=2, padding=1),
                   nn.LeakyReLU(0.2, inplace=True)]
        c = ndf * mult
    layers.append(nn.Conv2d(c, 1, kernel_size=3, stride=1, padding=1))
    return nn.Sequential(*layers)


def output_space_adversarial(disc: nn.Module, maps_s: torch.Tensor, maps_t: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(discriminator loss, adversarial loss, discriminator accuracy) on source and target maps.

    The discriminator loss, BCE of ``disc`` on the *detached* maps (source 1, target 0), trains
    only ``disc``. The adversarial loss, BCE of the target maps against the source label through
    ``disc`` with *detached* parameters, trains only what produced ``maps_t``. Source maps get no
    adversarial gradient (as in AdaptSegNet and ADVENT).
    """
    both = torch.cat([maps_s, maps_t]).detach()
    loss_d, acc = domain_adversarial_loss(disc(both).float(), len(maps_s))
    frozen = {k: v.detach() for k, v in disc.named_parameters()}
    d_t = torch.func.functional_call(disc, frozen, (maps_t,)).float()
    loss_adv = F.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t))
    return loss_d, loss_adv, acc


class _OutputDiscriminatorMixin:
    """Builds the discriminator in :meth:`setup`, once the number of classes is known."""

    def _build_disc(self, model, device) -> None:
        if self.disc is None:
            self.disc = fc_discriminator(int(model.num_classes), self.ndf).to(device)

    def _check_disc(self) -> None:
        if self.disc is None:
            raise RuntimeError(f"{self.name}: call setup(model, device) before loss() (it builds the discriminator)")


class AdaptSeg(_OutputDiscriminatorMixin, Method):
    r"""Output-space adversarial training (see the module docstring for the loss)."""

    name = "adaptseg"
    version = 1
    tasks = ("segmentation",)

    def __init__(self, lambda_adv: float = 0.001, ndf: int = 32):
        super().__init__()
        self.lambda_adv = float(lambda_adv)
        self.ndf = int(ndf)
        if self.ndf < 1:
            raise ValueError(f"ndf must be >= 1, got {ndf}")
        self.disc: nn.Module | None = None

    def setup(self, model, device) -> None:
        self._build_disc(model, device)

    def maps(self, logits: torch.Tensor) -> torch.Tensor:
        """What the discriminator reads: softmax maps (B, K, H, W)."""
        return F.softmax(logits.float(), 1)

    def target_terms(self, maps_t: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        """Further weighted loss terms on the target maps, ``{log name: (weight, term)}``: none here."""
        return {}

    def loss(self, model, batch: Batch):
        self._check_disc()
        ls, lt = logits_per_domain(model, batch.xs, batch.xt)
        task = task_loss(ls, batch.ys)
        m_s, m_t = self.maps(ls), self.maps(lt)
        loss_d, adv, d_acc = output_space_adversarial(self.disc, m_s, m_t)
        extra = self.target_terms(m_t)
        total = task + self.lambda_adv * adv
        for w, term in extra.values():
            total = total + w * term
        total = total + loss_d
        return total, {"task_loss": task.detach(), "adv_loss": adv.detach(),
                       **{k: term.detach() for k, (_, term) in extra.items()},
                       "disc_loss": loss_d.detach(), "disc_acc": d_acc, "train_acc": accuracy(ls.detach(), batch.ys)}
