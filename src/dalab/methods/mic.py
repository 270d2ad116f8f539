r"""MIC: masked image consistency (Hoyer, Dai, Wang & Van Gool, CVPR 2023), added to DACS.

On top of :class:`~dalab.methods.dacs.DACS`'s loss, the student also segments a *masked* target
image and is trained towards the mean teacher's labels of the *whole* image, so that it learns to
infer a region's class from its context. Per image, a grid of square blocks of side :math:`b`
is drawn, each kept with probability :math:`1 - r`:

.. math::

    M_{ij} = [v_{ij} > r], \quad v_{ij} \sim U(0, 1), \qquad
    x^M = M \odot x_t + (1 - M) \odot \bar x_t, \qquad
    \mathcal{L} = \mathcal{L}_{\mathrm{DACS}}
      + \lambda_M\,\lambda\,\frac{1}{BHW}\sum_{b,h,w} \mathrm{CE}\big(G(x^M), \hat y_t\big),

with :math:`\hat y_t` the teacher's argmax labels of the unmasked target batch and :math:`\lambda`
the fraction of its confident pixels, both as in DACS (MIC's ``mask_pseudo_threshold='same'``).
The masked image is augmented first (jitter and blur, its own draw; MIC's ``separatetrgaug``)
unless ``augment=False``. Masked pixels take the image's mean colour: MIC zeroes them after
mean subtraction, i.e. sets them to the dataset's mean colour.

**Pixel sizes follow the image** (:mod:`dalab.data.pixel_scale`): the block side :math:`b` is
given in pixels of the authors' 512-px crops and scaled with the image's shorter side,
:math:`b = \max(1, \mathrm{round}(32 \cdot \min(H, W) / 512))`: 32 px at 512x512, 3 px on the
48x96 scenes; on a 512-px side that is a 16 x 16 grid of blocks, as MIC's.

Defaults and their sources (lhoyer/MIC): :math:`r = 0.7` (``mask_ratio``), :math:`\lambda_M = 1`
(``mask_lambda``) (``seg/configs/mic/gtaHR2csHR_mic_hrda.py``); blocks of 32 px on DAFormer's
512x512 crops (``seg/experiments.py``: ``mask_block_size = 32``, "use half the patch size when
training with half resolution"; HRDA's 1024x1024 crops use 64). dalab 0.8 quoted "64 px on 512 px
crops" and used 1/8 of the shorter side, twice MIC's block. Departures: MIC's published runs sit
on DAFormer (a transformer, rare-class sampling, feature distance, EMA 0.999); this module keeps
dalab's DACS underneath (EMA 0.99) and adds only the masked term.

Shapes: ``x`` (B, 3, H, W) float in [0, 1]; mask (B, 1, H, W) bool; pseudo-labels (B, H, W) uint8.
"""

from __future__ import annotations

import torch

from ..data.pixel_scale import scale_length_int, shorter_side
from ..models.batchnorm import bn_domain
from ..models.nets import to_unit_float
from ..tasks import task_loss
from .base import Batch
from .dacs import AUTHORS_CROP, DACS, strong_augment


def block_mask(shape: tuple[int, int, int], block: int, ratio: float,
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(B, 1, H, W) bool, True where the image is kept: square blocks of ``block`` pixels (the last
    row and column of blocks cut at the border), each masked with probability ``ratio``."""
    b, h, w = shape
    gh, gw = -(-h // block), -(-w // block)
    keep = torch.rand(b, 1, gh, gw, generator=generator, device=device) > ratio
    return keep.repeat_interleave(block, 2).repeat_interleave(block, 3)[:, :, :h, :w]


def mask_images(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` where ``keep``, elsewhere each image's mean colour (per channel)."""
    return torch.where(keep, x, x.mean((2, 3), keepdim=True))


class MIC(DACS):
    r"""DACS plus masked image consistency (see the module docstring)."""

    name = "mic"
    # MIC came with DACS's augmentation (dalab 0.8.0): no MIC run lacks it. A change to the DACS part
    # raises both versions. 2: blocks of 32 px on 512-px crops, scaled to the image (was 1/8 of the shorter
    # side), and the blur of DACS underneath scaled too (dalab 0.9.0)
    version = 2
    tasks = ("segmentation",)

    def __init__(self, ema: float = 0.99, threshold: float = 0.968, weight: float = 1.0, augment: bool = True,
                 mask_ratio: float = 0.7, mask_block: float = 32.0, mask_weight: float = 1.0):
        super().__init__(ema=ema, threshold=threshold, weight=weight, augment=augment)
        if not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if not float(mask_block) >= 1.0:
            raise ValueError(f"mask_block is the block side in pixels of {AUTHORS_CROP}-px crops (MIC's 32), "
                             f"at least 1, got {mask_block}")
        self.mask_ratio, self.mask_block, self.mask_weight = float(mask_ratio), float(mask_block), float(mask_weight)

    def block_size(self, shape) -> int:
        """The block side in pixels for images of ``shape`` (..., H, W): ``mask_block`` scaled from
        512-px crops to the shorter side, rounded, at least 1."""
        return scale_length_int(self.mask_block, AUTHORS_CROP, shorter_side(shape))

    def loss(self, model, batch: Batch):
        pseudo, confident = self.pseudo_labels(batch.xt, model.training)
        loss, logs = self.mix_loss(model, batch, pseudo, confident)
        with torch.no_grad():
            x = to_unit_float(batch.xt)
            if self.augment:
                x = strong_augment(x, self._gen, **self.augment_args())
            b, _, h, w = x.shape
            keep = block_mask((b, h, w), self.block_size(x.shape), self.mask_ratio, self._gen, x.device)
            x = mask_images(x, keep)
        with bn_domain(model, "target"):
            masked = confident * task_loss(model(x), pseudo, reduction="none").mean()
        logs.update(masked_loss=masked.detach(), kept_frac=keep.float().mean())
        return loss + self.mask_weight * masked, logs
