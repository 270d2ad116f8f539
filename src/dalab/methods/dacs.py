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
:math:`\pm s` of a turn), and with probability 0.5 a Gaussian blur with an odd kernel of about a
tenth of the image's height and width and

.. math:: \sigma \sim U\Big(0.15\,\frac{\min(H, W)}{512},\ 1.15\,\frac{\min(H, W)}{512}\Big) \text{ pixels}.

**Pixel sizes follow the image** (:mod:`dalab.data.pixel_scale`): the authors draw
:math:`\sigma \sim U(0.15, 1.15)` *pixels* on 512x512 crops, so dalab scales it with the image's
shorter side relative to 512: :math:`U(0.15, 1.15)` at 512x512, :math:`U(0.014, 0.108)` on the
48x96 scenes (dalab 0.8 applied 0.15-1.15 px to every image size, a blur about ten times
stronger relative to a 48-px image). The kernel is already a fraction of each side in the
authors' code (:math:`\lceil n/10 \rceil`, made odd by going down) and is kept as it is. Nothing
else in DACS is in pixels. ``augment=False`` leaves the mixed images as they are.

Defaults and their sources (vikolss/DACS, ``trainUDA.py``, ``utils/transformsgpu.py`` and
``configs/configUDA.json``: 512x512 crops, ``"input_size": "512,512"``): :math:`\alpha = 0.99`
(``alpha_teacher``), :math:`\tau = 0.968`, :math:`w_u = 1` (``consistency_weight``),
``color_jitter`` and ``blur`` on (the jitter applied when a uniform draw exceeds 0.2, the blur
when it exceeds 0.5), ``flip`` off.
Departures: the jitter follows torchvision's definitions of the four factors, applied in a fixed
order (brightness, contrast, saturation, hue), with the hue rotated in YIQ space; whether an
image is jittered or blurred is drawn per image (the authors draw it once per step for the whole
batch; the chance for each image is the same); the class choice leaves the ignore label out (the
authors' code can draw it); with per-domain batch norm the mixed images use the *target*
statistics, the source images the source ones. The class and augmentation draws use a
``torch.Generator`` on the training device, seeded in :meth:`DACS.setup` from the global RNG (so
from the run's seed).

Shapes: ``xs``, ``xt`` (B, 3, H, W) uint8; ``ys`` (B, H, W) uint8; mask (B, H, W) bool; logits
(B, K, H, W); :func:`strong_augment` maps (B, 3, H, W) floats in [0, 1] to the same.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from ..models.batchnorm import bn_domain
from ..models.nets import to_unit_float
from ..tasks import IGNORE, accuracy, task_loss
from .base import Batch, Method
from .augment import (AUTHORS_CROP, colour_jitter, gaussian_blur, strong_augment,  # noqa: F401  (re-exported)
                      _odd_kernel_size)
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
    # 2: dalab 0.8.0 added the authors' colour jitter and blur of the mixed images (runs of 0.7.0 lack them);
    # 3: the blur's sigma is scaled to the image (0.15-1.15 px at 512-px crops; dalab 0.9.0)
    version = 3
    tasks = ("segmentation",)
    # the augmentation of the mixed images (vikolss/DACS utils/transformsgpu.py); sigma in pixels of 512-px crops
    jitter_strength = 0.25
    jitter_p = 0.8
    blur_p = 0.5
    blur_sigma = (0.15, 1.15)

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

    def augment_args(self) -> dict:
        """Keyword arguments of :func:`strong_augment` for this method's augmentation."""
        return {"strength": self.jitter_strength, "jitter_p": self.jitter_p, "blur_p": self.blur_p,
                "sigma": self.blur_sigma, "sigma_side": AUTHORS_CROP}

    def describe(self) -> dict:
        d = super().describe()
        if self.augment:
            d.update(jitter_strength=self.jitter_strength, jitter_p=self.jitter_p, blur_p=self.blur_p,
                     blur_sigma=(f"U({self.blur_sigma[0]}, {self.blur_sigma[1]}) px at {AUTHORS_CROP}-px crops, "
                                 "scaled with the image's shorter side"))
        return d

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

    def target_weight(self, confident: torch.Tensor, shape) -> torch.Tensor:
        """The weight of the target (pseudo-labelled) pixels of the mixed images: DACS's one scalar,
        the fraction of confident teacher pixels; a subclass may return a (B, H, W) map."""
        return confident

    def mix_loss(self, model, batch: Batch, pseudo: torch.Tensor, confident: torch.Tensor):
        """Source cross-entropy plus ``weight`` times the loss on the class-mixed images."""
        with torch.no_grad():
            x_mix, y_mix, m = class_mix(batch.xs, batch.ys, batch.xt, pseudo,
                                        lambda ys: random_class_mask(ys, self._gen))
            xs = batch.xs
            if self.augment:
                xs, x_mix = to_unit_float(xs), strong_augment(to_unit_float(x_mix), self._gen, **self.augment_args())
            w_t = self.target_weight(confident, pseudo.shape)
        ls, lm = logits_per_domain(model, xs, x_mix)
        task = task_loss(ls, batch.ys)
        mix = mixed_loss(lm, y_mix, m, w_t)
        return task + self.weight * mix, {"task_loss": task.detach(), "mix_loss": mix.detach(),
                                          "confident_frac": confident, "mix_frac": m.float().mean(),
                                          "train_acc": accuracy(ls.detach(), batch.ys)}

    def loss(self, model, batch: Batch):
        return self.mix_loss(model, batch, *self.pseudo_labels(batch.xt, model.training))

    def after_step(self, model) -> None:
        t = int(self.ema_steps)
        ema_update(self.teacher, model, min(1.0 - 1.0 / (t + 1), self.ema))
        self.ema_steps += 1
