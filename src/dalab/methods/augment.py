r"""Batched image augmentations on the device, for the methods that train on augmented images: one
colour jitter, a random affine warp, a Gaussian blur, and the policies that draw their parameters.

:func:`colour_jitter` applies per-image parameters, each part only when it is given, in this order:

- channel permutation, per-channel gain :math:`g` and offset :math:`o` (:math:`x \leftarrow gx + o`),
  inversion (:math:`x \leftarrow 1 - x` where drawn) and additive noise, then a clamp to [0, 1]:
  the digit augmentation of the consistency methods (:func:`channel_jitter`, :func:`augment`);
- brightness (:math:`x \leftarrow bx`), contrast (blend with the image's mean luma), saturation (blend
  with each pixel's luma), each followed by a clamp (torchvision's definitions; factor 1 keeps the
  image), and a hue rotation of ``hue`` of a full turn in YIQ space: DACS's and DAFormer's jitter
  of the mixed images (:func:`strong_augment`).

The policies draw every random number from the ``generator`` given (or the global one), so a run
that saves the generator's state resumes with the same draws.

Shapes: (B, C, H, W) floats in [0, 1] in and out; per-image parameters (B,) (gain and offset (B, C)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.pixel_scale import scale_length, shorter_side
from ..models.nets import to_unit_float


# RGB -> YIQ (NTSC); a hue rotation turns the (I, Q) chroma plane and keeps the luma Y.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0]


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def colour_jitter(x: torch.Tensor, brightness: torch.Tensor | None = None, contrast: torch.Tensor | None = None,
                  saturation: torch.Tensor | None = None, hue: torch.Tensor | None = None, *,
                  channel_perm: torch.Tensor | None = None, gain: torch.Tensor | None = None,
                  offset: torch.Tensor | None = None, invert: torch.Tensor | None = None,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) floats in [0, 1] and per-image parameters -> jittered, in [0, 1] (see the module
    docstring for the order). ``channel_perm`` (B, C) a permutation of the channels per image;
    ``gain``, ``offset`` (B, C); ``invert`` (B,) 1 where the image is inverted; ``noise`` (B, C, H, W)
    added as it is; ``brightness``, ``contrast``, ``saturation`` (B,) factors; ``hue`` (B,) turns."""
    f = lambda v: v.to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    channel_part = any(v is not None for v in (channel_perm, gain, offset, invert, noise))
    if channel_perm is not None:
        x = torch.gather(x, 1, channel_perm[:, :, None, None].expand_as(x))
    if gain is not None:
        x = x * gain.view(*gain.shape, 1, 1) + (0.0 if offset is None else offset.view(*offset.shape, 1, 1))
    elif offset is not None:
        x = x + offset.view(*offset.shape, 1, 1)
    if invert is not None:
        flip = f(invert)
        x = flip * (1.0 - x) + (1.0 - flip) * x
    if noise is not None:
        x = x + noise
    if channel_part:
        x = x.clamp(0.0, 1.0)
    if all(v is None for v in (brightness, contrast, saturation, hue)):
        return x
    luma = _LUMA.to(x.device, x.dtype).view(1, 3, 1, 1)
    if brightness is not None:
        x = (x * f(brightness)).clamp(0, 1)
    if contrast is not None:
        mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = ((x - mean) * f(contrast) + mean).clamp(0, 1)
    if saturation is not None:
        grey = (x * luma).sum(1, keepdim=True)
        x = ((x - grey) * f(saturation) + grey).clamp(0, 1)
    if hue is None:
        return x
    angle = 2 * math.pi * hue.float()
    rot = torch.zeros(len(x), 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = angle.cos(), -angle.sin()
    rot[:, 2, 1], rot[:, 2, 2] = angle.sin(), angle.cos()
    m = _YIQ_TO_RGB.to(x.device) @ rot @ _RGB_TO_YIQ.to(x.device)  # (B, 3, 3), per image
    return torch.einsum("bij,bjhw->bihw", m.to(x.dtype), x).clamp(0, 1)


def channel_jitter(x: torch.Tensor, gain: float = 0.3, offset: float = 0.2, invert_p: float = 0.5,
                   noise: float = 0.05, permute_channels: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The digit policy of :func:`colour_jitter`, per image: a random channel permutation, per-channel
    gain in ``1 +- gain`` and offset in ``+- offset``, inversion with probability ``invert_p``, Gaussian
    noise of standard deviation ``noise``."""
    b, c = x.shape[:2]
    dev = x.device
    perm = (torch.rand(b, c, device=dev, generator=generator).argsort(1)
            if permute_channels and c > 1 else None)
    g = 1.0 + (torch.rand(b, c, device=dev, generator=generator) * 2 - 1) * gain
    o = (torch.rand(b, c, device=dev, generator=generator) * 2 - 1) * offset
    flip = torch.rand(b, device=dev, generator=generator) < invert_p
    n = noise * torch.randn(x.shape, device=dev, generator=generator, dtype=x.dtype) if noise > 0 else None
    return colour_jitter(x, channel_perm=perm, gain=g, offset=o, invert=flip, noise=n)


def random_affine(x: torch.Tensor, translate: float = 2.0, rotate: float = 10.0, scale: float = 0.1,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Warp each image of (B,C,H,W) floats by its own random affine map (bilinear, zero fill).

    ``translate`` is in pixels, ``rotate`` in degrees, ``scale`` a relative range.
    """
    b, _, h, w = x.shape
    dev = x.device

    def u(lo, hi):
        return torch.rand(b, device=dev, generator=generator) * (hi - lo) + lo

    ang = u(-rotate, rotate) * math.pi / 180.0
    s = u(1.0 - scale, 1.0 + scale)
    tx, ty = u(-translate, translate) * 2.0 / w, u(-translate, translate) * 2.0 / h
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, strength: str = "strong", generator: torch.Generator | None = None) -> torch.Tensor:
    """The consistency methods' policy. ``weak``: small warp (1 px, 5 degrees, 5 % scale); ``strong``:
    larger warp (2 px, 10 degrees, 10 %) + :func:`channel_jitter`.

    Takes uint8 or [0, 1] float images (B,3,H,W); returns float images in [0, 1] on the same device.
    """
    x = to_unit_float(x).float()
    if strength == "none":
        return x
    if strength == "weak":
        return random_affine(x, 1.0, 5.0, 0.05, generator).clamp(0.0, 1.0)
    if strength == "strong":
        return channel_jitter(random_affine(x, 2.0, 10.0, 0.1, generator), generator=generator)
    raise ValueError(f"unknown augmentation strength {strength!r} (none, weak, strong)")


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


#: the side of the square crops that DACS's and DAFormer's pixel sizes were chosen for (configUDA.json)
AUTHORS_CROP = 512


def strong_augment(x: torch.Tensor, generator: torch.Generator | None = None, *, strength: float = 0.25,
                   jitter_p: float = 0.8, blur_p: float = 0.5, sigma=(0.15, 1.15),
                   sigma_side: float | None = AUTHORS_CROP) -> torch.Tensor:
    """DACS's policy for the mixed images: per image, :func:`colour_jitter` with probability
    ``jitter_p`` (factors drawn in ``1 +- strength``, hue in ``+- strength`` turns), then
    :func:`gaussian_blur` with probability ``blur_p``, sigma uniform in ``sigma``. ``sigma`` is in
    pixels of images whose shorter side is ``sigma_side`` and is scaled to ``x``'s shorter side
    (:func:`dalab.data.pixel_scale.scale_length`); ``sigma_side=None`` takes it in pixels of ``x``.
    (B, 3, H, W) floats in [0, 1] -> the same; every draw comes from ``generator``."""
    if sigma_side is not None:
        side = shorter_side(x.shape)
        sigma = tuple(scale_length(s, sigma_side, side) for s in sigma)
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
