"""Any image file -> RGB pixels: at its own size for photos, or 28 x 28 for the digits path.

Decoding (:func:`open_image`, :func:`to_rgb`, :func:`decode_photo`, :func:`read_photo`) turns
every PIL-readable file into RGB at its own size, (H, W, 3) uint8:

- grey ``L`` and 1-bit ``1``: the grey value repeated to three channels;
- palette ``P`` (with or without a transparent colour), ``PA``, ``RGBA``, ``LA``, ``RGBa``,
  ``La``: the colours, alpha dropped (the pixels keep their colour under any transparency);
- ``CMYK`` JPEGs (Adobe's inverted CMYK included) and ``YCbCr``: converted by Pillow;
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): scaled by the range the mode allows,
  ``round(v * 255 / 65535)``, so a dark 16-bit image stays dark (never truncated to its low
  byte, never stretched to its own maximum); 32-bit integer ``I``: by the bit depth its file
  declares (a 16-bit PNG or TIFF read as ``I``: 65535), else 65535 when every value lies in
  0..65535, else its own minimum..maximum; float ``F``: values in [0, 1] as they are, others
  by their minimum..maximum;
- JPEGs with an EXIF orientation tag are turned upright (``ImageOps.exif_transpose``), as a
  phone's photo viewer shows them.

A file that cannot be read is a one-line :class:`~dalab.errors.DataError` naming it.
:func:`decode_photo` may decode a large JPEG at a reduced scale (``Image.draft``: 1/2, 1/4 or
1/8, never below ``min_side`` on its shorter side), which is how a photo of 4000 x 3000 px
becomes a 256-px training input without decoding all of it.

:func:`check_headers` reads only the headers of many files (fast, no decoding) and reports
those that cannot be opened. :func:`load_image` / :func:`load_images` keep the digits path:
any image resized to ``size x size`` (aspect ratio not kept, like the real MNIST-M import),
used by ``folder:PATH`` for small images and by ``dalab predict``.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DataError
from .mnistm import IMAGE_EXTS

__all__ = ["IMAGE_EXTS", "open_image", "to_rgb", "decode_photo", "read_photo", "check_headers", "to_model_input",
           "load_image", "load_images", "find_images"]

# what PIL raises for a file that is not a (complete, supported) image
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, TypeError, ZeroDivisionError,
               MemoryError)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_U16_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


def _unreadable(path, e: BaseException) -> DataError:
    text = str(e).splitlines()[0] if str(e) else ""
    return DataError(f"{path}: not a readable image ({type(e).__name__}{': ' + text if text else ''})")


def open_image(path: str | os.PathLike):
    """Open an image file, reading its header only (a PIL image, lazily decoded).

    A missing file, or one PIL does not recognise, is a DataError naming it.
    """
    from PIL import Image

    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (*_PIL_ERRORS, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    if img.width < 1 or img.height < 1:
        img.close()
        raise DataError(f"{path}: not a readable image (size {img.width}x{img.height})")
    return img


def _declared_bits(img) -> int | None:
    """Bits per sample that the file says it holds (PNG's IHDR, TIFF's BitsPerSample), if any."""
    tags = getattr(img, "tag_v2", None)
    if tags is not None and 258 in tags:
        bits = tags[258]
        return int(bits[0] if isinstance(bits, (tuple, list)) else bits)
    if img.format == "PNG" and getattr(img, "fp", None) is not None:
        try:
            pos = img.fp.tell()
            img.fp.seek(0)
            head = img.fp.read(25)
            img.fp.seek(pos)
        except (OSError, ValueError, AttributeError):
            return None
        if len(head) == 25 and head[12:16] == b"IHDR":
            return int(head[24])
    return None


def _wide_to_8bit(img, bits: int | None) -> np.ndarray:
    """A 16/32-bit integer or float image -> (H, W) uint8 (see the module docstring for the scale)."""
    a = np.asarray(img)
    if img.mode in _U16_MODES:
        lo, hi = 0.0, 65535.0
    elif img.mode == "F":
        f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (0.0, 1.0) if f.size and f.min() >= 0.0 and f.max() <= 1.0 else (float(f.min()), float(f.max()))
        a = f
    elif bits is not None and 1 <= bits <= 31:
        lo, hi = 0.0, float(2 ** bits - 1)
    elif a.size and a.min() >= 0 and a.max() <= 65535:
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = float(a.min()), float(a.max())
    scaled = (a.astype(np.float64) - lo) * (255.0 / ((hi - lo) or 1.0))
    return np.round(scaled).clip(0, 255).astype(np.uint8)


def to_rgb(img, path=None):
    """A PIL image (opened by :func:`open_image`) -> a decoded RGB PIL image, upright.

    Decodes the pixels (DataError naming ``path`` when they cannot be), applies the EXIF
    orientation and converts any mode to RGB as the module docstring says.
    """
    from PIL import Image, ImageOps

    name = path if path is not None else getattr(img, "filename", "image")
    try:
        bits = _declared_bits(img) if img.mode == "I" else None  # from the header, before decoding
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except (*_PIL_ERRORS,):  # a malformed EXIF block: the pixels are fine, keep them as stored
            pass
        if img.mode == "RGB":
            return img
        if img.mode in _U16_MODES or img.mode in ("I", "F"):
            return Image.fromarray(_wide_to_8bit(img, bits)).convert("RGB")
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return img.convert("RGB")
    except (*_PIL_ERRORS, Image.DecompressionBombError) as e:
        raise _unreadable(name, e) from None


def decode_photo(path: str | os.PathLike, min_side: int | None = None):
    """Read an image file as an upright RGB PIL image.

    With ``min_side``, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``) as long
    as its shorter side stays at least ``min_side`` pixels; other formats decode in full.
    """
    with open_image(path) as img:
        if min_side is not None and img.format == "JPEG":
            s = int(min_side) / min(img.size)
            if s < 1.0:
                try:
                    img.draft(None, (math.ceil(img.width * s), math.ceil(img.height * s)))
                except (*_PIL_ERRORS,) as e:
                    raise _unreadable(path, e) from None
        out = to_rgb(img, path)
        return out if out is not img else img.copy()


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """Any image file -> (H, W, 3) uint8 RGB at its own size, upright (DataError naming the file)."""
    return np.asarray(decode_photo(path), dtype=np.uint8)


def _header_problem(path: Path) -> str | None:
    try:
        with open_image(path) as img:
            img.mode  # noqa: B018  (the mode and size come from the header)
        return None
    except DataError as e:
        return str(e)
    except OSError as e:  # e.g. a permission error on open
        return f"{path}: not readable ({type(e).__name__}: {e})"


def check_headers(paths, strict: bool = False, progress: bool | None = None, what: str = "images",
                  threads: int = 8) -> list[tuple[Path, str]]:
    """Open every file's header (no decoding) and return ``[(path, one-line reason)]`` for those that
    cannot be opened, in the order given.

    ``strict=True`` raises one DataError naming the first unreadable file and their count instead.
    ``progress``: a tqdm bar on stderr (default: for more than 2,000 files). Threads overlap the
    file-system latency (a network file system); the answer does not depend on their number.
    """
    paths = [Path(p) for p in paths]
    show = len(paths) > 2000 if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), desc=f"checking {what}", unit="file", leave=False)
    bad = []
    with ThreadPoolExecutor(max(1, int(threads))) as pool:
        for p, problem in zip(paths, pool.map(_header_problem, paths, chunksize=64)):
            if problem is not None:
                bad.append((p, problem))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if strict and bad:
        more = f" (and {len(bad) - 1} more unreadable {what})" if len(bad) > 1 else ""
        raise DataError(f"{bad[0][1]}{more}")
    return bad


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
    """Read any image file (upright RGB, :func:`read_photo`) and resize it to (size, size, 3) uint8
    (DataError naming the file)."""
    return to_model_input(read_photo(path), size)


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
