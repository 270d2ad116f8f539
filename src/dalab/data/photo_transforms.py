r"""The standard ImageNet-style transforms for photos, in PIL and numpy, seeded per item.

Training (:func:`train_transform`): resize the shorter side to ``resize``, take a random
resized crop of ``image_size`` x ``image_size`` (area fraction ``scale`` = (0.08, 1), aspect
ratio ``ratio`` = (3/4, 4/3)) and flip it horizontally with probability 1/2. Evaluation
(:func:`eval_transform`): resize the shorter side to ``resize`` and cut the centre
``image_size`` x ``image_size``. ``resize`` defaults to ``round(image_size * 256 / 224)``
(256 for 224). The output is a (3, S, S) uint8 array; normalisation (ImageNet mean and
standard deviation) is the network's job (:class:`dalab.models.backbones.PhotoNet`).

Sources of the values: torchvision's reference classification recipe
(``references/classification/presets.py``: ``RandomResizedCrop(224)`` with torchvision's default
``scale=(0.08, 1.0)``, ``ratio=(3/4, 4/3)``, ``RandomHorizontalFlip(0.5)``; evaluation
``Resize(256)`` then ``CenterCrop(224)``) and TLlib's domain-adaptation examples
(``examples/domain_adaptation/image_classification/utils.py``, ``get_train_transform`` /
``get_val_transform`` with ``resizing='default'``: resize to 256, ``RandomResizedCrop(224)``,
flip; resize to 256, ``CenterCrop(224)``). TLlib's resize makes every image 256 x 256 (its
``ResizeImage`` does not keep the aspect ratio); ``resize_mode="square"`` does the same,
while the default ``"shorter"`` keeps the aspect ratio as torchvision's ``Resize(256)`` does.

The random resized crop (torchvision's algorithm): up to 10 tries draw an area fraction
:math:`s \sim U(\text{scale})` and a log-uniform aspect ratio :math:`r`, giving a crop of
width :math:`w = \mathrm{round}(\sqrt{s A r})` and height :math:`h = \mathrm{round}(\sqrt{s A / r})`
(:math:`A` the area of the resized image); the first that fits is placed uniformly at random.
When none fits, the centre crop of the whole image clamped to the ratio range is taken.
Because the area fraction and the aspect ratio do not change when an image is scaled
uniformly, resizing the shorter side first does not change which part of the photo is cut;
it only fixes the resolution the crop is taken from.

One resampling per item: the crop is chosen in the coordinates of the resized image and cut
from the decoded image scaled back (``Image.resize(box=...)``, bilinear, antialiased), which is
the resize and the crop in one step rather than two successive resamplings. JPEGs are decoded
at a reduced scale when that still leaves at least ``resize`` pixels on the shorter side
(:func:`dalab.data.images.decode_photo`).

Randomness: the caller passes ``np.random.default_rng([seed, epoch, index])``, so an item's
crop and flip do not depend on the worker, the number of workers or the batch.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DalabError

SCALE = (0.08, 1.0)      # torchvision RandomResizedCrop's default area fraction
RATIO = (3 / 4, 4 / 3)   # and its default aspect-ratio range
RESIZE_MODES = ("shorter", "square")

__all__ = ["SCALE", "RATIO", "RESIZE_MODES", "default_resize", "resized_size", "random_resized_crop_box",
           "center_crop_box", "train_transform", "eval_transform", "check_transform_args"]


def default_resize(image_size: int) -> int:
    """``round(image_size * 256 / 224)``: 256 for 224, 73 for 64 (ImageNet's 256 -> 224 ratio)."""
    return int(round(int(image_size) * 256 / 224))


def check_transform_args(image_size: int, resize: int | None = None, resize_mode: str = "shorter",
                         scale=SCALE, ratio=RATIO) -> tuple[int, int]:
    """(image_size, resize) checked: one-line DalabErrors for values that cannot work."""
    try:
        s = int(image_size)
        r = default_resize(s) if resize is None else int(resize)
    except (TypeError, ValueError):
        raise DalabError(f"image size and resize must be whole numbers, got {image_size!r} and {resize!r}") from None
    if s < 8:
        raise DalabError(f"--image-size must be at least 8 pixels, got {s}")
    if r < s:
        raise DalabError(f"resize ({r}) must be at least the image size ({s}): the centre crop is cut from it")
    if resize_mode not in RESIZE_MODES:
        raise DalabError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
    lo, hi = (float(v) for v in scale)
    if not 0 < lo <= hi <= 1:
        raise DalabError(f"crop scale must be (low, high) with 0 < low <= high <= 1, got {tuple(scale)}")
    lo, hi = (float(v) for v in ratio)
    if not 0 < lo <= hi:
        raise DalabError(f"crop ratio must be (low, high) with 0 < low <= high, got {tuple(ratio)}")
    return s, r


def resized_size(width: int, height: int, resize: int, mode: str = "shorter") -> tuple[int, int]:
    """(width, height) after resizing: the shorter side to ``resize`` (the other by the same factor,
    as torchvision's ``Resize(int)``), or both sides to ``resize`` (``mode="square"``)."""
    if mode == "square":
        return resize, resize
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale=SCALE,
                            ratio=RATIO) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) of torchvision's RandomResizedCrop on a width x height image."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height  # fallback: the whole image, clamped to the ratio range, centred
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, size, size): torchvision's CenterCrop offsets, ``round((side - size) / 2)``."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0)), size, size


def _cut(img, box: tuple[int, int, int, int], virtual: tuple[int, int], size: int) -> np.ndarray:
    """Cut ``box`` (in the coordinates of the image resized to ``virtual`` = (W', H')) from ``img``
    at its own resolution and resample it to size x size: (size, size, 3) uint8."""
    from PIL import Image

    left, top, w, h = box
    sx, sy = img.width / virtual[0], img.height / virtual[1]
    src = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    return np.asarray(img.resize((size, size), Image.BILINEAR, box=src), dtype=np.uint8)


def _chw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def train_transform(img, rng: np.random.Generator, image_size: int = 224, resize: int | None = None,
                    scale=SCALE, ratio=RATIO, flip: bool = True, resize_mode: str = "shorter") -> np.ndarray:
    """An RGB PIL image -> (3, S, S) uint8: resize, random resized crop, random horizontal flip."""
    s, r = check_transform_args(image_size, resize, resize_mode, scale, ratio)
    virtual = resized_size(img.width, img.height, r, resize_mode)
    box = random_resized_crop_box(*virtual, rng, scale, ratio)
    a = _cut(img, box, virtual, s)
    if flip and rng.random() < 0.5:
        a = a[:, ::-1]
    return _chw(a)


def eval_transform(img, image_size: int = 224, resize: int | None = None, resize_mode: str = "shorter") -> np.ndarray:
    """An RGB PIL image -> (3, S, S) uint8: resize, centre crop (no randomness)."""
    s, r = check_transform_args(image_size, resize, resize_mode)
    virtual = resized_size(img.width, img.height, r, resize_mode)
    return _chw(_cut(img, center_crop_box(*virtual, s), virtual, s))
