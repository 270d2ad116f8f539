r"""DAFormer's training strategy (Hoyer, Dai & Van Gool, CVPR 2022) on dalab's network: DACS with
DAFormer's settings, plus the data and schedule options of its recipe.

**The loss** is DACS's (:mod:`dalab.methods.dacs`): ClassMix of a source and a target image with
the mean teacher's pseudo-labels, the target pixels weighted by the fraction :math:`\lambda` of
teacher pixels with confidence :math:`\ge \tau`, except that rows at the top and the bottom of the
target image get weight 0 ("pseudo-label crop"):

.. math::

    w_{bhw} = \begin{cases} 1 & M_{bhw} = 1 \text{ (pasted source pixel)} \\
      0 & h < r_{top} \ \text{or}\ h \ge H - r_{bottom} \\
      \lambda & \text{otherwise,} \end{cases}
    \qquad \mathcal{L} = \mathrm{CE}(G(x_s), y_s)
      + \frac{1}{BHW}\sum_{b,h,w} w_{bhw}\,\mathrm{CE}\big(G(x_m), y_m\big)_{bhw}
      + \lambda_{FD}\,\mathcal{L}_{FD},

and the teacher follows :math:`\bar\theta \leftarrow \alpha_t\bar\theta + (1 - \alpha_t)\theta`,
:math:`\alpha_t = \min(1 - 1/(t+1), \alpha)` with :math:`\alpha = 0.999`. The mixed images are
colour-jittered (probability 0.8, strength 0.2) and blurred (probability 0.5, :math:`\sigma` as
DACS's, scaled to the image).

**ImageNet feature distance** (optional, :func:`thing_feature_distance`): with :math:`F_\theta`
the network's feature map of the source images and :math:`F_I` that of a frozen copy of its
ImageNet-initialised backbone, on the feature cells :math:`\mathcal{T}` whose source label,
downscaled to the feature map, is a *thing* class (a cell takes a class when at least 75 % of its
pixels have it),
:math:`\mathcal{L}_{FD} = \frac{1}{|\mathcal{T}|}\sum_{j \in \mathcal{T}} \|F_\theta(x_s)_j - F_I(x_s)_j\|_2`
(0 when no cell qualifies; DAFormer's mean of an empty set would be NaN). The term is active only
when the model offers a frozen ImageNet copy of its backbone, i.e. implements
:class:`ImageNetFeatures` (``imagenet_features(x)``, of the same shape as ``features(x)``, its
parameters with ``requires_grad=False``); dalab's SegNet starts from random weights and does not,
so on the procedural scenes the term is off (``fd_active`` in the run's summary says which).

**Pixel sizes follow the image** (:mod:`dalab.data.pixel_scale`): the ignored rows are given in
rows of DAFormer's 512-px crops and scaled with the image's shorter side,
:math:`r = \mathrm{round}(r_{512} \cdot \min(H, W) / 512)`: 15 and 120 rows at 512x512, 1 and 11
on the 48x96 scenes; the blur's :math:`\sigma` likewise (see :mod:`dalab.methods.dacs`).

**The recipe** (:attr:`DAFormer.recipe`): rare-class sampling of the source images
(:mod:`dalab.data.rcs`) and a linear learning-rate warm-up over the first 1,500 of 40,000
iterations (3.75 % of the run) from :math:`10^{-6}` times the rate (:func:`linear_warmup`). These
are training options, not loss terms: the trainer applies a method's recipe where the user's flags
do not say otherwise.

Defaults and their sources (lhoyer/DAFormer,
``configs/daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py`` on top of
``configs/_base_/uda/dacs.py``; the loss in ``mmseg/models/uda/dacs.py``, the augmentation in
``mmseg/models/utils/dacs_transforms.py``): :math:`\alpha = 0.999`, :math:`\tau = 0.968`
(``pseudo_threshold``), ``pseudo_weight_ignore_top=15``, ``pseudo_weight_ignore_bottom=120``,
``color_jitter_strength=0.2`` and ``color_jitter_probability=0.2`` (the jitter is applied when a
uniform draw *exceeds* 0.2, i.e. with probability 0.8), ``blur=True`` (applied when a uniform draw
exceeds 0.5), ``imnet_feature_dist_lambda=0.005`` on ``imnet_feature_dist_classes`` = train ids
6, 7, 11-18 (traffic light, traffic sign, person, rider, car, truck, bus, train, motorcycle,
bicycle) with ``imnet_feature_dist_scale_min_ratio=0.75``; rare-class sampling
``min_pixels=3000, class_temp=0.01, min_crop_ratio=0.5``; ``_base_/schedules/poly10warm.py``
``warmup='linear', warmup_iters=1500, warmup_ratio=1e-6`` with ``max_iters=40000``.
Departures: the network, optimiser and learning rate are dalab's (DAFormer trains a MiT-B5
transformer with AdamW at 6e-5 and a linear decay); the feature distance, where active, uses one
extra forward pass of the source images (DAFormer reuses the features of the source pass); as in
:mod:`dalab.methods.dacs`, the jitter and blur are drawn per image, not per batch.

Shapes: ``xs``, ``xt`` (B, 3, H, W) uint8; ``ys`` (B, H, W) uint8; pseudo-label weights
(B, H, W); features (B, C, h, w); the thing mask (B, h, w) bool.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ..data.pixel_scale import scale_length_int, shorter_side
from ..models.batchnorm import bn_domain
from ..tasks import IGNORE
from .base import Batch
from .dacs import AUTHORS_CROP, DACS

#: Cityscapes train ids of DAFormer's "thing" classes (imnet_feature_dist_classes)
THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


@runtime_checkable
class ImageNetFeatures(Protocol):
    """A segmentation network that offers a frozen ImageNet copy of its backbone:
    ``imagenet_features(x)`` -> (B, C, h, w), the same shape as ``features(x)``, computed without
    gradients by a copy of the backbone as it was initialised from ImageNet."""

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def imagenet_features(self, x: torch.Tensor) -> torch.Tensor: ...


def linear_warmup(step: int, warmup_steps: int, ratio: float = 1e-6) -> float:
    r"""The factor on the learning rate of the regular schedule at ``step`` (0-based) during a
    linear warm-up of ``warmup_steps`` steps: :math:`1 - (1 - t/W)(1 - r)`, from ``ratio`` at step
    0 up to 1, then 1 (mmcv's ``warmup='linear'``, ``mmcv/runner/hooks/lr_updater.py``: it multiplies
    the regular schedule's rate at that step)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return 1.0 - (1.0 - step / warmup_steps) * (1.0 - ratio)


def ignored_rows(height: int, side: int, top: float, bottom: float, ref_side: float = AUTHORS_CROP) -> tuple[int, int]:
    """(rows at the top, rows at the bottom) whose pseudo-labels get weight 0 in an image of
    ``height`` rows and shorter side ``side``: ``top`` and ``bottom`` rows of ``ref_side``-px crops,
    scaled by the pixel rule and rounded, together at most ``height``."""
    t = scale_length_int(top, ref_side, side, minimum=0) if top > 0 else 0
    b = scale_length_int(bottom, ref_side, side, minimum=0) if bottom > 0 else 0
    t = min(t, height)
    return t, min(b, height - t)


def downscale_labels(labels: torch.Tensor, size, num_classes: int, min_ratio: float = 0.75) -> torch.Tensor:
    """(B, H, W) label maps -> (B, h, w) int64: each cell takes the most frequent value among its
    pixels (the ignore label counted as one more value) if at least ``min_ratio`` of them have it,
    else :data:`~dalab.tasks.IGNORE` (DAFormer's ``downscale_label_ratio``; cells are average-pooling
    windows of the label map onto ``size`` = (h, w))."""
    y = labels.long().clone()
    y[(y < 0) | (y >= num_classes)] = num_classes
    onehot = F.one_hot(y, num_classes + 1).permute(0, 3, 1, 2).float()
    share, cls = F.adaptive_avg_pool2d(onehot, tuple(size)).max(1)
    cls[(cls == num_classes) | (share < min_ratio)] = IGNORE
    return cls


def thing_feature_distance(f_student: torch.Tensor, f_imagenet: torch.Tensor, labels: torch.Tensor,
                           classes=THING_CLASSES, num_classes: int = 19, min_ratio: float = 0.75
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over the thing cells of the L2 distance between the two (B, C, h, w) feature maps,
    the (B, h, w) bool mask of those cells). 0 (with a gradient path) when no cell is a thing."""
    cells = downscale_labels(labels, f_student.shape[-2:], num_classes, min_ratio)
    things = torch.tensor([c for c in classes if c < num_classes], dtype=cells.dtype, device=cells.device)
    mask = torch.isin(cells, things)
    dist = (f_student.float() - f_imagenet.detach().float()).norm(dim=1)
    if not mask.any():
        return dist.sum() * 0.0, mask
    return dist[mask].mean(), mask


def _offers_imagenet_features(model) -> bool:
    return callable(getattr(model, "imagenet_features", None)) and callable(getattr(model, "features", None))


class DAFormer(DACS):
    r"""DACS with DAFormer's settings and recipe (see the module docstring)."""

    name = "daformer"
    tasks = ("segmentation",)
    version = 1
    jitter_strength = 0.2
    jitter_p = 0.8
    blur_p = 0.5
    blur_sigma = (0.15, 1.15)
    #: training options of DAFormer's recipe, applied by the trainer unless the user's flags say otherwise:
    #: rare-class sampling of the source (dalab.data.rcs, DAFormer's settings) and a linear warm-up of the
    #: learning rate over this fraction of the run from ``warmup_ratio`` times the rate (1,500 of 40,000 iterations)
    recipe: ClassVar[dict] = {"rare_class_sampling": True, "warmup": 1500 / 40000, "warmup_ratio": 1e-6}

    def __init__(self, ema: float = 0.999, threshold: float = 0.968, weight: float = 1.0, augment: bool = True,
                 ignore_top: float = 15.0, ignore_bottom: float = 120.0, fd_lambda: float = 0.005,
                 fd_min_ratio: float = 0.75):
        super().__init__(ema=ema, threshold=threshold, weight=weight, augment=augment)
        if float(ignore_top) < 0 or float(ignore_bottom) < 0:
            raise ValueError(f"ignore_top and ignore_bottom must be >= 0, got {ignore_top} and {ignore_bottom}")
        if float(fd_lambda) < 0 or not 0.0 < float(fd_min_ratio) <= 1.0:
            raise ValueError(f"fd_lambda must be >= 0 and fd_min_ratio in (0, 1], got {fd_lambda}, {fd_min_ratio}")
        self.ignore_top, self.ignore_bottom = float(ignore_top), float(ignore_bottom)
        self.fd_lambda, self.fd_min_ratio = float(fd_lambda), float(fd_min_ratio)
        self.fd_active = False

    def setup(self, model, device) -> None:
        super().setup(model, device)
        self.fd_active = self.fd_lambda > 0 and _offers_imagenet_features(model)

    def describe(self) -> dict:
        return {**super().describe(), "recipe": ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                                          for k, v in self.recipe.items())}

    def target_weight(self, confident: torch.Tensor, shape) -> torch.Tensor:
        """(B, H, W): the fraction of confident teacher pixels everywhere, except 0 on the ignored
        rows at the top and the bottom (:func:`ignored_rows`)."""
        b, h, w = shape
        top, bottom = ignored_rows(h, shorter_side(shape), self.ignore_top, self.ignore_bottom)
        weight = confident.float().expand(b, h, w).clone()
        weight[:, :top] = 0
        if bottom:
            weight[:, h - bottom:] = 0
        return weight

    def feature_distance(self, model, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the ImageNet feature distance on thing cells, the share of thing cells)."""
        with bn_domain(model, "source"):
            f = model.features(xs)
        with torch.no_grad():
            f_in = model.imagenet_features(xs)
        if f_in.shape != f.shape:
            raise ValueError(f"imagenet_features gave {tuple(f_in.shape)}, features {tuple(f.shape)}: they must match")
        k = int(getattr(model, "num_classes", 19))
        return thing_feature_distance(f, f_in, ys, THING_CLASSES, k, self.fd_min_ratio)

    def loss(self, model, batch: Batch):
        loss, logs = self.mix_loss(model, batch, *self.pseudo_labels(batch.xt, model.training))
        if self.fd_active:
            fd, mask = self.feature_distance(model, batch.xs, batch.ys)
            loss = loss + self.fd_lambda * fd
            logs.update(fd_loss=fd.detach(), fd_cells=mask.float().mean())
        return loss, logs
