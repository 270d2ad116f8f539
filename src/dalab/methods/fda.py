r"""FDA: Fourier Domain Adaptation (Yang & Soatto, CVPR 2020), single beta, with its robust
entropy term.

**The transform** (:func:`fda_source_to_target`). For a source image :math:`x_s` and a target image
:math:`x_t` (3, H, W), per channel, with the 2-D DFT :math:`\mathcal{F}` split into amplitude
:math:`\mathcal{F}^A` and phase :math:`\mathcal{F}^P`, and :math:`M_b` the indicator of the low
frequencies :math:`|k_y| \le b,\ |k_x| \le b` (the centred square of half-side :math:`b` in the
shifted spectrum),

.. math::

    x_{s \to t} = \mathrm{clip}_{[0, 255]}\Big(\mathcal{F}^{-1}\big[\big(M_b \circ \mathcal{F}^A(x_t)
      + (1 - M_b) \circ \mathcal{F}^A(x_s)\big),\ \mathcal{F}^P(x_s)\big]\Big),
    \qquad b = \lfloor \beta \min(H, W) \rfloor .

The window is symmetric in :math:`\pm k`, so the new spectrum stays Hermitian and the inverse is
real. :math:`b = 0` swaps nothing: :math:`x_{s \to t} = x_s`. Pixel values are on the 0..255
scale (the authors apply FDA to raw images, before any normalisation).

**The loss.** The segmenter trains on the stylised source, plus the entropy of its target
predictions through the Charbonnier penalty :math:`\rho(x) = (x^2 + \epsilon^2)^{\eta}`, which
for :math:`\eta > 0.5` weighs confident (low-entropy) pixels down:

.. math::

    \mathcal{L} = \mathrm{CE}\big(G(x_{s \to t}), y_s\big) + \lambda_{ent}\,\frac{1}{BHW}
      \sum_{b,h,w} \rho\Big(\frac{H(P_{x_t}^{(h,w)})}{\log K}\Big),
    \qquad H(p) = -\sum_k p_k \log p_k .

Shapes: ``xs``, ``xt`` (B, 3, H, W) uint8 -> stylised source (B, 3, H, W) float in [0, 1] for the
network -> logits (B, K, H, W). Source image *i* takes its style from target image *i* of the batch.

Defaults and their sources (YanchaoYang/FDA, README and ``options/train_options.py``):
``beta = 0.01`` (``--LB=0.01``, the README's single-beta command), ``lambda_ent = 0.005``
(``--entW``), ``eta = 2.0`` (``--ita``), entropy from the first step (``--switch2entropy=0`` in
the same command); ``eps = 0.001`` as in the paper's Charbonnier penalty (the authors' code adds
1e-8, i.e. eps = 1e-4; the difference is negligible). The code normalises the entropy by log 19
(``/ 2.9444``), here by log K.

**Pixel sizes follow the image** (:mod:`dalab.data.pixel_scale`). The paper's window
:math:`b = \lfloor \beta \min(H, W) \rfloor` is a fraction of the image *in frequency*, which
makes its cut-off a fixed *length in pixels*: the swapped amplitudes are those of structures with
a period of at least :math:`\min(H, W) / b \approx 1/\beta` pixels, 100 px for :math:`\beta = 0.01`,
on the authors' 1024x512 crops (``crop_size=image_sizes['cityscapes']`` = (1024, 512) in
``data/__init__.py``; :math:`b = \lfloor 0.01 \cdot 512 \rfloor = 5`). dalab scales that period
with the image's shorter side like every other pixel size,
:math:`P = \frac{1}{\beta} \cdot \frac{\min(H, W)}{512}`, and swaps
:math:`b = \lfloor \min(H, W) / P \rfloor = \lfloor 512\,\beta \rfloor` cycles per image: 5 at
any image size for :math:`\beta = 0.01`, the same share of the spectrum as the authors'. (dalab
0.8 used :math:`\beta = 0.09` of the image itself, chosen for 64-px images to give :math:`b = 5`;
on the 48x96 scenes it gave :math:`b = 4`.) :func:`fda_source_to_target` keeps the paper's
formula (``beta`` a fraction of the image it is given, or the window ``half_side`` itself);
:class:`FDA` passes it the window of :func:`window_half_side`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.pixel_scale import scale_length
from ..models.nets import to_unit_float
from ..tasks import accuracy, task_loss
from .base import Batch, Method
from .dann import logits_per_domain


def low_frequency_window(h: int, w: int, b: int, device=None) -> torch.Tensor:
    """(H, W) bool mask of the unshifted DFT grid: True where ``|k_y| <= b`` and ``|k_x| <= b``
    (all False for ``b = 0``)."""
    if b <= 0:
        return torch.zeros(h, w, dtype=torch.bool, device=device)
    ky = torch.fft.fftfreq(h, d=1.0 / h, device=device).abs() <= b
    kx = torch.fft.fftfreq(w, d=1.0 / w, device=device).abs() <= b
    return ky[:, None] & kx[None, :]


#: the shorter side of the crops FDA's beta was published for (1024x512)
AUTHORS_SIDE = 512


def window_half_side(beta: float, side: int, ref_side: float = AUTHORS_SIDE) -> int:
    """The window's half-side b (cycles per image) for an image of shorter side ``side``: the
    cut-off period ``1 / beta`` px at shorter side ``ref_side`` scaled to ``side`` by the pixel rule,
    ``b = floor(side / period)`` (= ``floor(beta * ref_side)``); 0 for ``beta = 0``."""
    if beta <= 0:
        return 0
    period = scale_length(1.0 / beta, ref_side, side)
    return math.floor(side / period + 1e-9)


def fda_source_to_target(xs: torch.Tensor, xt: torch.Tensor, beta: float, clip: bool = True,
                         half_side: int | None = None) -> torch.Tensor:
    """Source images with the low-frequency amplitude of target images (see the module docstring).

    ``xs`` (B, C, H, W) and ``xt`` (Bt, C, H, W), uint8 or float on the 0..255 scale; source image
    *i* takes target image ``i % Bt``. Returns float32 (B, C, H, W) on the 0..255 scale, clipped to
    [0, 255] unless ``clip=False``. ``beta`` is a fraction of ``min(H, W)`` (the paper's formula);
    ``half_side``, when given, is the window's half-side b itself and ``beta`` is not used.
    """
    if xs.shape[-2:] != xt.shape[-2:] or xs.shape[1] != xt.shape[1]:
        raise ValueError(f"source {tuple(xs.shape)} and target {tuple(xt.shape)} images differ in size")
    h, w = xs.shape[-2:]
    b = math.floor(beta * min(h, w)) if half_side is None else int(half_side)
    xs = xs.float()
    if b <= 0:
        return xs.clone()
    xt = xt.float()[torch.arange(len(xs), device=xt.device) % len(xt)]
    fs, ft = torch.fft.fft2(xs), torch.fft.fft2(xt)
    amp = torch.where(low_frequency_window(h, w, b, xs.device), ft.abs(), fs.abs())
    out = torch.fft.ifft2(torch.polar(amp, fs.angle())).real
    return out.clamp(0.0, 255.0) if clip else out


def charbonnier_entropy(logits: torch.Tensor, eta: float = 2.0, eps: float = 1e-3) -> torch.Tensor:
    """Mean over pixels of ``((H / log K)^2 + eps^2)^eta`` for ``softmax(logits)`` (B, K, ...)."""
    logp = F.log_softmax(logits.float(), dim=1)
    ent = -(logp.exp() * logp).sum(1) / math.log(logits.shape[1])
    return (ent ** 2 + eps ** 2).pow(eta).mean()


class FDA(Method):
    r"""Fourier Domain Adaptation with the robust entropy term (see the module docstring)."""

    name = "fda"
    #: 2: beta is read at the authors' 512-px crops and the window scaled to the image (was 0.09 of the image)
    version = 2
    tasks = ("segmentation",)

    def __init__(self, beta: float = 0.01, lambda_ent: float = 0.005, eta: float = 2.0, eps: float = 1e-3):
        super().__init__()
        if not 0.0 <= float(beta) <= 0.5:
            raise ValueError(f"beta must be in [0, 0.5], got {beta}")
        self.beta = float(beta)
        self.lambda_ent = float(lambda_ent)
        self.eta = float(eta)
        self.eps = float(eps)

    def describe(self) -> dict:
        return {**super().describe(), "beta_at": f"{AUTHORS_SIDE}-px crops: the window is floor({AUTHORS_SIDE} beta) "
                                                 "cycles per image at any image size"}

    def loss(self, model, batch: Batch):
        with torch.no_grad():
            b = window_half_side(self.beta, min(batch.xs.shape[-2:]))
            xs = fda_source_to_target(batch.xs, batch.xt, self.beta, half_side=b) / 255.0
        ls, lt = logits_per_domain(model, xs, to_unit_float(batch.xt))
        task = task_loss(ls, batch.ys)
        ent = charbonnier_entropy(lt, self.eta, self.eps)
        return task + self.lambda_ent * ent, {"task_loss": task.detach(), "ent_loss": ent.detach(),
                                              "fda_window": torch.tensor(float(b)),
                                              "train_acc": accuracy(ls.detach(), batch.ys)}
