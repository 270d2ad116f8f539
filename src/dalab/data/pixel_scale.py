r"""One rule for every hyper-parameter that its authors gave in pixels.

A published value in pixels was chosen for the crops its authors trained on. dalab applies it to
images of another size in proportion to the image, never as the same number of pixels:

- a **length** (a blur's :math:`\sigma`, a mask block's side, a number of rows) scales with the
  image's shorter side relative to the shorter side of the authors' crop,

  .. math:: v' = v \cdot \frac{\min(H, W)}{s_{ref}},

- a **pixel count** (e.g. rare-class sampling's ``min_pixels``) scales with the area, i.e. with
  the square of that ratio, :math:`n' = n \cdot (\min(H, W) / s_{ref})^2`.

:math:`(H, W)` is the size of what the value acts on: the network's input (the whole image for
in-memory domains, the training crop for domains read from files), or the label map that a
pixel count is counted on. :math:`s_{ref}` is the shorter side of the authors' crop or label
map: 512 for DACS's and DAFormer's 512x512 crops, 1052 for GTA5's 1914x1052 label files. At
:math:`\min(H, W) = s_{ref}` every value is the published one.

The same rule is behind FDA's :math:`\beta`, already a fraction of the image's shorter side, and
behind MIC's own configurations: 64 px blocks on HRDA's 1024-px crops and 32 px on DAFormer's
512-px crops ("half the patch size when training with half resolution"), and rare-class
sampling's crop threshold times :math:`2^2` on crops of twice the side (lhoyer/MIC,
``seg/experiments.py`` and ``seg/configs/mic/gtaHR2csHR_mic_hrda.py``).
"""

from __future__ import annotations

import math


def _ratio(side: float, ref_side: float) -> float:
    if not (side > 0 and ref_side > 0):
        raise ValueError(f"image and reference sides must be positive, got {side} and {ref_side}")
    return float(side) / float(ref_side)


def shorter_side(shape) -> int:
    """The shorter of the last two entries of ``shape`` (e.g. ``(B, C, H, W)`` or ``(H, W)``)."""
    h, w = shape[-2], shape[-1]
    return int(min(h, w))


def scale_length(value: float, ref_side: float, side: float) -> float:
    """A length of ``value`` pixels at shorter side ``ref_side``, for an image of shorter side ``side``."""
    return float(value) * _ratio(side, ref_side)


def scale_length_int(value: float, ref_side: float, side: float, minimum: int = 1) -> int:
    """:func:`scale_length` rounded to the nearest whole pixel (halves up), at least ``minimum``."""
    return max(int(minimum), math.floor(scale_length(value, ref_side, side) + 0.5))


def scale_count(value: float, ref_side: float, side: float) -> float:
    """A count of ``value`` pixels at shorter side ``ref_side``, for an image of shorter side ``side``
    (scaled by the area: the square of the sides' ratio)."""
    return float(value) * _ratio(side, ref_side) ** 2


__all__ = ["shorter_side", "scale_length", "scale_length_int", "scale_count"]
