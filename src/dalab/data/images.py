"""Any image file -> the model's input: (H, W, 3) uint8, by default 28 x 28 RGB.

Used by ``dalab predict`` and reusable for one's own images. Every PIL mode is accepted:
grey (L, 1-bit), palette, RGBA/LA (alpha dropped), CMYK, YCbCr, 16-bit and 32-bit integer
or float (scaled to 0..255 by :func:`dalab.data.mnistm.read_rgb`). Any size, including 1x1,
is resized to ``size x size`` with bilinear interpolation (the aspect ratio is not kept,
like the real MNIST-M import). A file that is not a readable image raises a one-line
:class:`~dalab.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .mnistm import IMAGE_EXTS, read_rgb

__all__ = ["IMAGE_EXTS", "to_model_input", "load_image", "load_images", "find_images"]


def to_model_input(img: np.ndarray, size: int = 28) -> np.ndarray:
    """An image array -> (size, size, 3) uint8.

    ``img`` may be (H, W) grey, (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped), of any
    integer or float dtype: integers wider than 8 bits and floats are scaled by their
    maximum (floats already in [0, 1] are taken as such).
    """
    from PIL import Image

    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or 0 in a.shape:
        raise DataError(f"expected an image array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.dtype != np.uint8:
        f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        f = f - min(f.min(), 0.0)
        hi = f.max()
        if np.issubdtype(a.dtype, np.floating) and hi <= 1.0:
            hi = 1.0
        a = np.round(f * (255.0 / (hi or 1.0))).clip(0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[:2] != (size, size):
        a = np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return np.ascontiguousarray(a)


def load_image(path: str | os.PathLike, size: int = 28) -> np.ndarray:
    """Read any image file and convert it to (size, size, 3) uint8 (DataError naming the file)."""
    return to_model_input(read_rgb(Path(path)), size)


def find_images(paths, recursive: bool = True) -> list[Path]:
    """Expand files and folders into a list of files, in the order given.

    A file is taken as it is (whatever its name; reading it later says if it is not an
    image). A folder contributes its files with an image extension (``IMAGE_EXTS``),
    sorted, recursively. A missing path or a folder without images is a DataError.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(q for q in it if q.is_file() and q.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise DataError(f"{p}: no images ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


def load_images(paths, size: int = 28) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Load many image files; unreadable ones are collected, not raised.

    Returns (images (N, size, size, 3) uint8, the N paths read, [(path, error message)]).
    """
    imgs, ok, bad = [], [], []
    for p in paths:
        try:
            imgs.append(load_image(p, size))
            ok.append(Path(p))
        except DataError as e:
            bad.append((Path(p), str(e)))
    x = np.stack(imgs) if imgs else np.empty((0, size, size, 3), np.uint8)
    return x, ok, bad
