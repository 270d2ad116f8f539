"""``syndigits``: synthetic digits in the spirit of Ganin & Lempitsky's *Syn Numbers*.

Each digit is drawn from a TrueType font: by default the 21 text fonts shipped inside
matplotlib (DejaVu Sans / Serif / Sans Mono and STIX General in four styles each, and
Computer Modern roman, bold, sans, italic and typewriter), plus any ``.ttf``/``.otf`` of a
folder the user gives (``dalab data prepare --fonts DIR``). Per image, at random:

- the font, the digit, its height (45-80 % of the frame), rotation (+-20 degrees), shear
  (+-0.2) and position (+-3 px),
- neighbouring digits cut by the frame on the left and/or right (as in SVHN crops),
- a background that is a linear gradient between two random colours, a stroke colour
  with enough contrast to it, and a Gaussian blur (sigma 0-1.3 px) plus pixel noise.

Rendering is vectorised: every (font, digit) glyph is rasterised once with PIL into a
64x64 mask; all images are then warped at 2x resolution in batches with
``torch.nn.functional.grid_sample`` and averaged down to 28x28 (antialiasing), and
blurred with per-image Gaussian matrices. The whole default set (50k/10k/10k) builds
in a few seconds of CPU; the result depends only on the seed and the fonts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .io import atomic_save_npz, file_lock

CACHE_NAME = "syndigits.npz"
SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}
CANVAS = 64        # glyph mask size
GLYPH_H = 40       # glyph height inside the mask (px)
FONT_EXTS = {".ttf", ".otf", ".ttc"}

# matplotlib's fonts whose code points '0'..'9' are digits (cmsy10/cmex10 map them to symbols,
# the STIX "NonUni"/"Siz" and *Display fonts have no digits).
MPL_DIGIT_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)


def matplotlib_fonts() -> list[Path]:
    import matplotlib

    d = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [d / f for f in MPL_DIGIT_FONTS if (d / f).is_file()]


def font_files(folder: str | os.PathLike | None = None) -> tuple[list[Path], str]:
    """The matplotlib digit fonts, plus every font file under ``folder`` (recursively)."""
    fonts = matplotlib_fonts()
    origin = f"{len(fonts)} matplotlib fonts"
    if folder is not None:
        d = Path(folder).expanduser()
        if not d.is_dir():
            raise DataError(f"{d}: fonts folder not found")
        extra = sorted(p for p in d.rglob("*") if p.suffix.lower() in FONT_EXTS and p.is_file())
        if not extra:
            raise DataError(f"{d}: no font files (.ttf, .otf, .ttc) in fonts folder")
        fonts += extra
        origin += f" + {len(extra)} from {d}"
    if not fonts:
        raise DataError("no fonts found: matplotlib's font folder is missing; pass --fonts DIR")
    return fonts, origin


def render_glyphs(path: Path) -> np.ndarray | None:
    """(10, CANVAS, CANVAS) float32 masks of '0'..'9' in one font, height-normalised and centred.

    Returns None when the font has no usable digits (blank or identical glyphs); a file
    that is not a font is a DataError naming it.
    """
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(str(path), 96)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable font ({type(e).__name__})") from None
    out = np.zeros((10, CANVAS, CANVAS), np.float32)
    seen = set()
    for d in range(10):
        im = Image.new("L", (192, 192))
        ImageDraw.Draw(im).text((40, 20), str(d), font=font, fill=255)
        box = im.getbbox()
        if box is None:
            return None
        crop = im.crop(box)
        w, h = crop.size
        nw = max(1, min(CANVAS - 4, round(w * GLYPH_H / h)))
        crop = crop.resize((nw, GLYPH_H), Image.LANCZOS)
        x0, y0 = (CANVAS - nw) // 2, (CANVAS - GLYPH_H) // 2
        out[d, y0:y0 + GLYPH_H, x0:x0 + nw] = np.asarray(crop, np.float32) / 255.0
        seen.add(out[d].tobytes())
    if len(seen) < 10:
        return None
    return out


def load_glyphs(fonts_folder=None) -> tuple[np.ndarray, np.ndarray, str]:
    """All glyphs (F, 10, C, C), their ink widths in px (F, 10) and a description."""
    paths, origin = font_files(fonts_folder)
    glyphs, skipped = [], []
    for p in paths:
        g = render_glyphs(p)
        (glyphs if g is not None else skipped).append(g if g is not None else p)
    if not glyphs:
        raise DataError(f"none of the fonts has drawable, distinct digits 0-9 ({origin})")
    g = np.stack(glyphs)
    cols = g.max(axis=2) > 0.05                       # (F, 10, C): columns with ink
    idx = np.arange(CANVAS)
    left = np.where(cols, idx, CANVAS).min(-1)
    right = np.where(cols, idx, -1).max(-1)
    widths = (right - left + 1).astype(np.float32)
    desc = f"{len(glyphs)} fonts ({origin}" + (f"; {len(skipped)} without digits skipped)" if skipped else ")")
    return g, widths, desc


def _contrasting_colours(rng: np.random.Generator, n: int, min_contrast: float = 80.0):
    lum = np.array([0.299, 0.587, 0.114])
    bg = rng.uniform(0, 255, (n, 3))
    fg = rng.uniform(0, 255, (n, 3))
    for _ in range(50):
        bad = np.abs((fg - bg) @ lum) < min_contrast
        if not bad.any():
            break
        fg[bad] = rng.uniform(0, 255, (int(bad.sum()), 3))
    bad = np.abs((fg - bg) @ lum) < min_contrast        # rare leftovers: opposite grey
    fg[bad] = np.where((bg[bad] @ lum) > 127, 0.0, 255.0)[:, None]
    return bg, fg


def _gauss_mats(sigma: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size) row-normalised Gaussian blur matrices (identity for sigma ~ 0)."""
    i = np.arange(size, dtype=np.float32)
    s = np.maximum(sigma, 1e-3).astype(np.float32)[:, None, None]
    k = np.exp(-0.5 * ((i[None, :, None] - i[None, None, :]) / s) ** 2)
    return k / k.sum(-1, keepdims=True)


def render_digits(glyphs: np.ndarray, widths: np.ndarray, n: int, seed: int,
                  size: int = 28, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """n random synthetic digit images (n, size, size, 3) uint8 and labels (n,) int64."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    nf = glyphs.shape[0]
    font = rng.integers(0, nf, n)
    y = rng.integers(0, 10, n)
    nb_l, nb_r = rng.integers(0, 10, n), rng.integers(0, 10, n)
    has_l, has_r = rng.random(n) < 0.4, rng.random(n) < 0.4
    height = rng.uniform(0.45, 0.80, n)                     # digit height / frame height
    angle = np.deg2rad(rng.uniform(-20, 20, n))
    shear = rng.uniform(-0.2, 0.2, n)
    shift = rng.uniform(-3, 3, (n, 2)) * (2.0 / size)      # in normalised output coordinates
    gap = rng.uniform(2, 10, (n, 2))                        # px between neighbours (glyph space)
    bg, fg = _contrasting_colours(rng, n)
    bg2 = np.clip(bg + rng.uniform(-70, 70, (n, 3)), 0, 255).astype(np.float32)
    bg, fg = bg.astype(np.float32), fg.astype(np.float32)
    grad_dir = rng.uniform(0, 2 * np.pi, n)
    sigma = rng.uniform(0.0, 1.3, n)
    noise = rng.uniform(0.0, 10.0, n).astype(np.float32)
    noise_seed = int(rng.integers(0, 2**31 - 1))

    # theta: output (normalised) -> glyph mask (normalised); glyph of GLYPH_H px -> height * frame
    a = (GLYPH_H / CANVAS) / height
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)      # (n, 2, 2)
    shr = np.zeros((n, 2, 2))
    shr[:, 0, 0] = shr[:, 1, 1] = 1
    shr[:, 0, 1] = shear
    lin = a[:, None, None] * (shr @ rot)
    trans = -(lin @ shift[..., None])[..., 0]
    theta = np.concatenate([lin, trans[..., None]], -1).astype(np.float32)          # (n, 2, 3)
    w_main = widths[font, y]
    dx_l = (w_main / 2 + widths[font, nb_l] / 2 + gap[:, 0]) * (2.0 / CANVAS)
    dx_r = (w_main / 2 + widths[font, nb_r] / 2 + gap[:, 1]) * (2.0 / CANVAS)

    g = torch.from_numpy(glyphs.reshape(nf * 10, 1, CANVAS, CANVAS))
    masks = np.empty((n, size, size), np.float32)
    hi = 2 * size                                           # 2x supersampling, then 2x2 mean
    c = (torch.arange(hi, dtype=torch.float32) * 2 + 1) / hi - 1   # pixel centres (align_corners=False)
    base = torch.stack([c.repeat(hi), c.repeat_interleave(hi), torch.ones(hi * hi)], -1)  # (hi*hi, 3): x, y, 1
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        th = torch.from_numpy(theta[s:e])
        grid = (base @ th.transpose(1, 2)).view(e - s, hi, hi, 2)   # = affine_grid, much faster on CPU
        m = F.grid_sample(g[torch.from_numpy(font[s:e] * 10 + y[s:e])], grid, align_corners=False)
        for has, nb, dx in ((has_l, nb_l, -dx_l), (has_r, nb_r, dx_r)):
            sel = np.flatnonzero(has[s:e])
            if sel.size == 0:
                continue
            gsel = grid[torch.from_numpy(sel)].clone()
            gsel[..., 0] -= torch.from_numpy(dx[s:e][sel].astype(np.float32))[:, None, None]
            nbm = F.grid_sample(g[torch.from_numpy(font[s:e][sel] * 10 + nb[s:e][sel])], gsel,
                                align_corners=False)
            m[torch.from_numpy(sel)] = torch.maximum(m[torch.from_numpy(sel)], nbm)
        masks[s:e] = F.avg_pool2d(m, 2)[:, 0].numpy()

    k = torch.from_numpy(_gauss_mats(sigma, size))
    masks = (k @ torch.from_numpy(masks) @ k.transpose(1, 2)).clamp_(0.0, 1.0).numpy()

    lin_coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / size
    t = (np.cos(grad_dir).astype(np.float32)[:, None, None] * lin_coords[None, None, :]
         + np.sin(grad_dir).astype(np.float32)[:, None, None] * lin_coords[None, :, None]) + 0.5  # (n,H,W) ~[0,1]
    out = np.empty((n, size, size, 3), np.uint8)
    nrng = np.random.default_rng(noise_seed)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        tt = t[s:e, ..., None]
        back = bg[s:e, None, None, :] * (1 - tt) + bg2[s:e, None, None, :] * tt
        mm = masks[s:e, ..., None]
        img = back * (1 - mm) + fg[s:e, None, None, :] * mm
        img += nrng.standard_normal(img.shape, dtype=np.float32) * noise[s:e, None, None, None]
        out[s:e] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out, y.astype(np.int64)


def build_syndigits(seed: int = 0, fonts=None, sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    sizes = sizes or SIZES
    glyphs, widths, desc = load_glyphs(fonts)
    arrays: dict[str, np.ndarray] = {}
    for i, (split, n) in enumerate(sizes.items()):
        arrays[f"{split}_x"], arrays[f"{split}_y"] = render_digits(glyphs, widths, n, seed * 1000 + i)
    arrays["meta_seed"] = np.array(seed)
    arrays["meta_origin"] = np.array(f"rendered from {desc}; seed {seed}")
    return arrays


def prepare_syndigits(root: Path, force: bool = False, seed: int = 0, fonts=None,
                      sizes: dict[str, int] | None = None) -> Path:
    """Build ``syndigits.npz`` (idempotent: an existing, sound cache is kept unless ``force``)."""
    from .mnist import load_npz_checked

    path = root / CACHE_NAME
    with file_lock(root / ".syndigits.lock"):
        if path.is_file() and not force:
            load_npz_checked(path, "syndigits")
            return path
        atomic_save_npz(path, **build_syndigits(seed, fonts, sizes))
    return path
