r"""DACS: domain adaptation via cross-domain mixed sampling (Tranheden, Olsson, Pinto & Svensson,
WACV 2021), i.e. ClassMix (Olsson et al., WACV 2021) between a source and a target image.

A mean teacher :math:`\bar G` (an exponential moving average of the segmenter :math:`G`) labels the
target batch: :math:`\hat y_t = \arg\max_k \bar P_{x_t}` with confidence
:math:`c = \max_k \bar P_{x_t}` (B, H, W). For each pair :math:`i`, half of the classes present in
the source label map :math:`y_{s,i}` (:math:`\lceil n_i / 2 \rceil` of its :math:`n_i` classes,
ignore excluded), drawn at random, define the mask :math:`M_i` of their pixels; then

.. math::

    x_m = M \odot x_s + (1 - M) \odot x_t, \qquad y_m = M \odot y_s + (1 - M) \odot \hat y_t,

    \mathcal{L} = \mathrm{CE}(G(x_s), y_s)
      + w_u\,\frac{1}{BHW}\sum_{b,h,w} \big(M + (1 - M)\,\lambda\big)\,\mathrm{CE}\big(G(x_m), y_m\big),
    \qquad \lambda = \frac{1}{BHW}\sum_{b,h,w} [c \ge \tau],

so target pixels count by the fraction :math:`\lambda` of confident teacher pixels in the batch
(DACS's ``threshold_uniform`` weighting); ignored pixels add 0 but stay in the mean, as in the
authors' loss. After every optimiser step the teacher follows the student,
:math:`\bar\theta \leftarrow \alpha_t \bar\theta + (1 - \alpha_t)\theta` with
:math:`\alpha_t = \min(1 - 1/(t + 1), \alpha)` (the authors' warm-up of the average), batch-norm
buffers copied (:func:`~dalab.methods.consistency.ema_update`).

The mixed images are then strongly augmented, as in the authors' code (:func:`strong_augment`),
each image on its own draw: with probability 0.8 a colour jitter of strength :math:`s = 0.25`
(brightness, contrast and saturation factors in :math:`[1 - s, 1 + s]`, a hue rotation of up to
:math:`\pm s` of a turn), and with probability 0.5 a Gaussian blur with
:math:`\sigma \sim U(0.15, 1.15)` and an odd kernel of about a tenth of the image's height and
width. ``augment=False`` leaves the mixed images as they are.

Defaults and their sources (vikolss/DACS, ``trainUDA.py``, ``utils/transformsgpu.py`` and
``configs/configUDA.json``): :math:`\alpha = 0.99` (``alpha_teacher``), :math:`\tau = 0.968`,
:math:`w_u = 1` (``consistency_weight``), ``color_jitter`` and ``blur`` on, ``flip`` off.
Departures: the jitter follows torchvision's definitions of the four factors, applied in a fixed
order (brightness, contrast, saturation, hue), with the hue rotated in YIQ space; the class
choice leaves the ignore label out (the authors' code can draw it); with per-domain batch norm
the mixed images use the *target* statistics, the source images the source ones. The class and
augmentation draws use a ``torch.Generator`` on the training device, seeded in
:meth:`DACS.setup` from the global RNG (so from the run's seed).

Shapes: ``xs``, ``xt`` (B, 3, H, W) uint8; ``ys`` (B, H, W) uint8; mask (B, H, W) bool; logits
(B, K, H, W); :func:`strong_augment` maps (B, 3, H, W) floats in [0, 1] to the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.batchnorm import bn_domain
from ..models.nets import to_unit_float
from ..tasks import IGNORE, accuracy, task_loss
from .base import Batch, Method
from .consistency import ema_update, make_teacher
from .dann import logits_per_domain


def random_class_mask(ys: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, H, W) bool: per image, the pixels of ``ceil(n / 2)`` of the ``n`` classes present in
    ``ys[i]`` (:data:`~dalab.tasks.IGNORE` never chosen), drawn without replacement."""
    masks = []
    for y in ys:
        classes = torch.unique(y)
        classes = classes[classes != IGNORE]
        n = len(classes)
        dev = generator.device if generator is not None else classes.device
        perm = torch.randperm(n, generator=generator, device=dev).to(classes.device)
        masks.append(torch.isin(y, classes[perm[:(n + 1) // 2]]))
    return torch.stack(masks) if masks else torch.zeros_like(ys, dtype=torch.bool)


# RGB -> YIQ (NTSC); a hue rotation turns the (I, Q) chroma plane and keeps the luma Y.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0]


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def colour_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
                  hue: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) floats in [0, 1], one factor per image (B,) each -> jittered, clamped to [0, 1].

    Brightness scales the image, contrast blends it with its mean luma, saturation with its
    per-pixel luma (torchvision's definitions; factor 1 keeps the image), and ``hue`` turns the
    chroma by ``hue`` of a full turn in YIQ space (0 keeps it). Applied in that order.
    """
    f = lambda v: v.to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    luma = _LUMA.to(x.device, x.dtype).view(1, 3, 1, 1)
    x = (x * f(brightness)).clamp(0, 1)
    mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean) * f(contrast) + mean).clamp(0, 1)
    grey = (x * luma).sum(1, keepdim=True)
    x = ((x - grey) * f(saturation) + grey).clamp(0, 1)
    angle = 2 * math.pi * hue.float()
    rot = torch.zeros(len(x), 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = angle.cos(), -angle.sin()
    rot[:, 2, 1], rot[:, 2, 2] = angle.sin(), angle.cos()
    m = _YIQ_TO_RGB.to(x.device) @ rot @ _RGB_TO_YIQ.to(x.device)  # (B, 3, 3), per image
    return torch.einsum("bij,bjhw->bihw", m.to(x.dtype), x).clamp(0, 1)


def _odd_kernel_size(n: int) -> int:
    """DACS's kernel size for an image side of ``n`` pixels: ceil(n / 10), made odd by going down."""
    c = max(1, math.ceil(0.1 * n))
    return c if c % 2 else c - 1


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) blurred per image with its own ``sigma`` (B,) (0 keeps the image): a separable
    Gaussian with odd kernels of about H / 10 by W / 10 pixels, reflected at the borders."""
    b, c, h, w = x.shape
    out = x.reshape(1, b * c, h, w)
    for dim, k in ((2, _odd_kernel_size(h)), (3, _odd_kernel_size(w))):
        r = k // 2
        if r == 0:
            continue
        d = torch.arange(-r, r + 1, device=x.device, dtype=torch.float32)
        s = sigma.float().clamp_min(1e-6).view(-1, 1)
        g = torch.exp(-0.5 * (d / s) ** 2)
        g = torch.where(sigma.view(-1, 1) > 0, g / g.sum(1, keepdim=True), (d == 0).float().expand_as(g))
        g = g.repeat_interleave(c, 0).to(x.dtype)  # (B*C, k)
        if dim == 2:
            out = F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), g.view(b * c, 1, k, 1), groups=b * c)
        else:
            out = F.conv2d(F.pad(out, (r, r, 0, 0), mode="reflect"), g.view(b * c, 1, 1, k), groups=b * c)
    return out.reshape(b, c, h, w)


def strong_augment(x: torch.Tensor, generator: torch.Generator | None = None, *, strength: float = 0.25,
                   jitter_p: float = 0.8, blur_p: float = 0.5, sigma=(0.15, 1.15)) -> torch.Tensor:
    """DACS's augmentation of the mixed images: per image, :func:`colour_jitter` with probability
    ``jitter_p`` (factors drawn in ``1 +- strength``, hue in ``+- strength`` turns), then
    :func:`gaussian_blur` with probability ``blur_p`` (sigma uniform in ``sigma``). (B, 3, H, W)
    floats in [0, 1] -> the same; every draw comes from ``generator``."""
    with torch.autocast(x.device.type, enabled=False):  # the augmentation is data, kept in float32
        return _strong_augment(x.float(), generator, strength, jitter_p, blur_p, sigma)


def _strong_augment(x, generator, strength, jitter_p, blur_p, sigma):
    n, dev = len(x), x.device
    jit = torch.rand(n, generator=generator, device=dev) < jitter_p
    one = torch.ones(n, device=dev)
    factors = [torch.where(jit, _uniform(n, 1 - strength, 1 + strength, generator, dev), one) for _ in range(3)]
    hue = torch.where(jit, _uniform(n, -strength, strength, generator, dev), one - 1)
    x = colour_jitter(x, *factors, hue)
    blur = torch.rand(n, generator=generator, device=dev) < blur_p
    return gaussian_blur(x, torch.where(blur, _uniform(n, sigma[0], sigma[1], generator, dev), one - 1))


def class_mix(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt_pseudo: torch.Tensor,
              classes_mask_gen=random_class_mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mixed images (B, 3, H, W), mixed labels (B, H, W), mask (B, H, W) bool).

    ``classes_mask_gen(ys)`` gives the mask M of source pixels to paste; elsewhere the target
    image and its pseudo-label are kept. Images and labels keep their dtypes.
    """
    m = classes_mask_gen(ys).bool()
    return torch.where(m[:, None], xs, xt), torch.where(m, ys, yt_pseudo.to(ys.dtype)), m


def mixed_loss(logits: torch.Tensor, y_mix: torch.Tensor, mask: torch.Tensor, target_weight) -> torch.Tensor:
    """Mean over all pixels of ``weight * CE``, weight 1 on pasted source pixels and
    ``target_weight`` on target pixels; ignored pixels contribute 0."""
    ce = task_loss(logits, y_mix, reduction="none")
    w = torch.where(mask, torch.ones_like(ce), torch.as_tensor(target_weight, dtype=ce.dtype, device=ce.device))
    return (w * ce).mean()


class DACS(Method):
    r"""Cross-domain ClassMix with a mean teacher (see the module docstring)."""

    name = "dacs"
    # 2: dalab 0.8.0 added the authors' colour jitter and blur of the mixed images (runs of 0.7.0 lack them)
    version = 2
    tasks = ("segmentation",)

    def __init__(self, ema: float = 0.99, threshold: float = 0.968, weight: float = 1.0, augment: bool = True):
        super().__init__()
        if not 0.0 <= float(ema) < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.ema = float(ema)
        self.threshold = float(threshold)
        self.weight = float(weight)
        self.augment = bool(augment)
        self.teacher: torch.nn.Module | None = None
        self._gen: torch.Generator | None = None
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def setup(self, model, device) -> None:
        self.teacher = make_teacher(model)
        self._gen = torch.Generator(device=device)
        self._gen.manual_seed(int(torch.randint(0, 2 ** 62, (1,))))

    def pseudo_labels(self, xt: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's (B, H, W) uint8 argmax labels of the target batch and the fraction of its
        pixels that are confident (>= ``threshold``), a 0-dim float."""
        if self.teacher is None:
            raise RuntimeError(f"{self.name}: call setup(model, device) before loss() (it builds the teacher)")
        with torch.no_grad():
            self.teacher.train(training)
            with bn_domain(self.teacher, "target"):
                conf, pseudo = F.softmax(self.teacher(xt).float(), 1).max(1)
            return pseudo.to(torch.uint8), (conf >= self.threshold).float().mean()

    def mix_loss(self, model, batch: Batch, pseudo: torch.Tensor, confident: torch.Tensor):
        """Source cross-entropy plus ``weight`` times the loss on the class-mixed images."""
        with torch.no_grad():
            x_mix, y_mix, m = class_mix(batch.xs, batch.ys, batch.xt, pseudo,
                                        lambda ys: random_class_mask(ys, self._gen))
            xs = batch.xs
            if self.augment:
                xs, x_mix = to_unit_float(xs), strong_augment(to_unit_float(x_mix), self._gen)
        ls, lm = logits_per_domain(model, xs, x_mix)
        task = task_loss(ls, batch.ys)
        mix = mixed_loss(lm, y_mix, m, confident)
        return task + self.weight * mix, {"task_loss": task.detach(), "mix_loss": mix.detach(),
                                          "confident_frac": confident, "mix_frac": m.float().mean(),
                                          "train_acc": accuracy(ls.detach(), batch.ys)}

    def loss(self, model, batch: Batch):
        return self.mix_loss(model, batch, *self.pseudo_labels(batch.xt, model.training))

    def after_step(self, model) -> None:
        t = int(self.ema_steps)
        ema_update(self.teacher, model, min(1.0 - 1.0 / (t + 1), self.ema))
        self.ema_steps += 1
