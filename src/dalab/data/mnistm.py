"""MNIST-M, rebuilt the published way, plus loaders for the real files.

Ganin & Lempitsky (2015) blend each MNIST digit with a random 28x28 crop of a colour
photo (BSDS500): ``out = |patch - 255 * digit|`` per channel, where ``digit`` is the
binarised MNIST image (``x > 0``). The real BSDS500 is not downloadable here, so by
default the crops come from colour photos shipped inside installed wheels (scikit-image,
scikit-learn, matplotlib). Reports call that set "MNIST-M (rebuilt)". A user's own photo
folder (``--backgrounds DIR``, e.g. BSDS500; scaled to BSDS500's 321-px short side unless
``--background-scale native``) or the real MNIST-M files also work.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from .io import atomic_save_npz, file_lock
from .mnist import SPLITS, load_mnist_arrays, load_npz_checked, safe_unpickle_numpy

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}

# (package, relative path) of colour photos that ship inside wheels we depend on.
WHEEL_PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/ihc.png"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def wheel_photo_paths() -> list[Path]:
    paths = []
    for pkg, rel in WHEEL_PHOTOS:
        d = _package_dir(pkg)
        if d is not None and (d / rel).is_file():
            paths.append(d / rel)
    return paths


def read_rgb(path: Path) -> np.ndarray:
    """Any image file -> HxWx3 uint8, or a one-line DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit int or float: scale to 0..255
                arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
                arr = arr - min(arr.min(), 0.0)
                hi = arr.max() or 1.0
                im = Image.fromarray((arr * (255.0 / hi)).astype(np.uint8))
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__})") from None


# BSDS500's photos are 481x321 or 321x481; Ganin & Lempitsky cropped MNIST-M's 28x28
# backgrounds from them. A user's photos are scaled to that short side by default: a 28x28
# crop of a 4000x3000 photo at its native resolution is nearly one flat colour.
BSDS_SHORT_SIDE = 321
BACKGROUND_SCALES = ("bsds", "native")


def to_bsds_scale(img: np.ndarray) -> np.ndarray:
    """Resize (Lanczos) so that the short side is ``BSDS_SHORT_SIDE`` pixels."""
    from PIL import Image

    h, w = img.shape[:2]
    if min(h, w) == BSDS_SHORT_SIDE:
        return img
    f = BSDS_SHORT_SIDE / min(h, w)
    size = (round(w * f), round(h * f))
    return np.asarray(Image.fromarray(img).resize(size, Image.LANCZOS), dtype=np.uint8)


def load_backgrounds(folder: str | os.PathLike | None = None, min_size: int = 28,
                     scale: str = "bsds") -> tuple[list[np.ndarray], str]:
    """Photos to crop from: a user folder (recursively) or the wheel photos.

    A user's photos are scaled to BSDS500's size (``scale="bsds"``) or kept as they are
    (``"native"``); ``min_size`` applies to the photo as read. The wheel photos are always
    used at their native resolution, whatever ``scale`` says: that is how the rebuilt
    MNIST-M behind dalab's published results was made, so it must not change.
    """
    if scale not in BACKGROUND_SCALES:
        raise DataError(f"background scale {scale!r}: expected one of {', '.join(BACKGROUND_SCALES)}")
    if folder is None:
        paths = wheel_photo_paths()
        origin = f"{len(paths)} colour photos shipped in installed wheels (scikit-image, scikit-learn, matplotlib)"
        if not paths:
            raise DataError("no background photos found: install scikit-image/scikit-learn/matplotlib "
                            "or pass --backgrounds DIR")
    else:
        root = Path(folder)
        if not root.is_dir():
            raise DataError(f"{root}: backgrounds folder not found")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if not paths:
            raise DataError(f"{root}: no images (.jpg/.png/...) in backgrounds folder")
        origin = f"{len(paths)} photos from {root}, " + (
            f"scaled to a {BSDS_SHORT_SIDE}-px short side (BSDS500's scale)" if scale == "bsds"
            else "at native resolution")
    photos = []
    for p in paths:
        img = read_rgb(p)
        if img.shape[0] >= min_size and img.shape[1] >= min_size:
            photos.append(to_bsds_scale(img) if folder is not None and scale == "bsds" else img)
    if not photos:
        raise DataError(f"no background photo is at least {min_size}x{min_size} pixels")
    return photos, origin


def blend(digits: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """``|patch - 255 * (digit > 0)|`` per channel. digits (N,H,W) uint8, patches (N,H,W,3) uint8."""
    mask = (digits > 0).astype(np.int16)[..., None] * 255
    return np.abs(patches.astype(np.int16) - mask).astype(np.uint8)


def random_patches(photos: Sequence[np.ndarray], n: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """n random size x size crops, vectorised per photo (no per-sample Python)."""
    out = np.empty((n, size, size, 3), np.uint8)
    which = rng.integers(0, len(photos), size=n)
    ar = np.arange(size)
    for k, photo in enumerate(photos):
        idx = np.flatnonzero(which == k)
        if idx.size == 0:
            continue
        h, w = photo.shape[:2]
        y0 = rng.integers(0, h - size + 1, size=idx.size)
        x0 = rng.integers(0, w - size + 1, size=idx.size)
        rows = (y0[:, None] + ar)[:, :, None]
        cols = (x0[:, None] + ar)[:, None, :]
        out[idx] = photo[rows, cols]
    return out


def build_mnistm(digits: np.ndarray, photos: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """Deterministic MNIST-M images (N,28,28,3) uint8 from MNIST digits (N,28,28) uint8."""
    rng = np.random.default_rng(seed)
    return blend(digits, random_patches(photos, len(digits), rng, size=digits.shape[1]))


CACHE_NAME = "mnistm.npz"
REAL_CACHE_NAME = "mnistm_real.npz"
# 2: the pickle's 'valid' images go first (dalab <= 0.6 put them last, pairing most images
# with another image's label). Caches without this mark are refused: import again.
REAL_IMPORT_VERSION = 2


def prepare_mnistm(root: Path, seed: int = 0, backgrounds=None, force: bool = False,
                   background_scale: str = "bsds") -> Path:
    """Build ``mnistm.npz`` from the MNIST cache; each split gets its own derived seed.

    ``background_scale`` ("bsds" or "native") applies to a user's ``backgrounds`` folder only.
    """
    path = root / CACHE_NAME
    with file_lock(root / ".mnistm.lock"):
        if path.is_file() and not force:
            load_npz_checked(path, "mnistm")
            return path
        mnist = load_mnist_arrays(root)
        photos, origin = load_backgrounds(backgrounds, scale=background_scale)
        arrays = {}
        for i, s in enumerate(SPLITS):
            arrays[f"{s}_x"] = build_mnistm(mnist[f"{s}_x"], photos, seed=seed * 1000 + i)
            arrays[f"{s}_y"] = mnist[f"{s}_y"]
        arrays["meta_seed"] = np.array(seed)
        arrays["meta_backgrounds"] = np.array(origin)
        arrays["meta_background_scale"] = np.array(background_scale if backgrounds is not None else "native")
        atomic_save_npz(path, **arrays)
    return path


# ---------------------------------------------------------------- real MNIST-M files

def _real_from_pickle(path: Path, mnist: dict) -> dict[str, np.ndarray]:
    """The common ``mnistm_data.pkl``: dict with 'train'/'test' (and 'valid') uint8 arrays.

    Labels are those of MNIST in the same order (the file holds images only). The file was
    made with TensorFlow's MNIST reader, whose 'valid' is MNIST's training images 0-4,999
    and 'train' images 5,000-59,999: valid + train restores MNIST's order, which then maps
    onto dalab's 50k train + 10k val split like MNIST itself. A file without 'valid' holds
    all 60k training images in MNIST's order.
    """
    obj = safe_unpickle_numpy(path.read_bytes(), str(path))
    if not isinstance(obj, dict) or "train" not in obj or "test" not in obj:
        raise DataError(f"{path}: expected a dict with 'train' and 'test' arrays")
    train = np.asarray(obj["train"])
    if "valid" in obj:
        train = np.concatenate([np.asarray(obj["valid"]), train])
    test = np.asarray(obj["test"])
    ntr, nva = len(mnist["train_y"]), len(mnist["val_y"])
    if len(train) != ntr + nva or len(test) != len(mnist["test_y"]):
        raise DataError(f"{path}: sizes {len(train)}/{len(test)} do not match MNIST "
                        f"({ntr + nva}/{len(mnist['test_y'])})")
    for a in (train, test):
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
            raise DataError(f"{path}: images must be uint8 (N,H,W,3), got {a.dtype} {a.shape}")
    return {"train_x": train[:ntr], "train_y": mnist["train_y"], "val_x": train[ntr:],
            "val_y": mnist["val_y"], "test_x": test, "test_y": mnist["test_y"]}


def read_labelled_png_folder(folder: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """A folder of images with a labels file of lines ``name label`` (the original tarball)."""
    names, labels = [], []
    for i, line in enumerate(labels_file.read_text().splitlines()):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{labels_file}:{i + 1}: expected 'filename label'")
        names.append(parts[0])
        labels.append(int(parts[1]))
    if not names:
        raise DataError(f"{labels_file}: no labels")
    xs = []
    for n in names:
        img = read_rgb(folder / n)
        if img.shape[:2] != (28, 28):
            from PIL import Image

            img = np.asarray(Image.fromarray(img).resize((28, 28), Image.BILINEAR))
        xs.append(img)
    return np.stack(xs), np.asarray(labels, np.int64)


def _real_from_folder(root: Path) -> dict[str, np.ndarray]:
    tr = root / "mnist_m_train"
    te = root / "mnist_m_test"
    trl = root / "mnist_m_train_labels.txt"
    tel = root / "mnist_m_test_labels.txt"
    for p in (tr, te, trl, tel):
        if not p.exists():
            raise DataError(f"{root}: expected mnist_m_train/, mnist_m_test/ and their *_labels.txt ({p.name} missing)")
    x, y = read_labelled_png_folder(tr, trl)
    xt, yt = read_labelled_png_folder(te, tel)
    nval = max(1, len(x) // 6)  # hold out 1/6 of train as validation, like MNIST's 10k of 60k
    return {"train_x": x[:-nval], "train_y": y[:-nval], "val_x": x[-nval:], "val_y": y[-nval:],
            "test_x": xt, "test_y": yt}


def import_real_mnistm(root: Path, source: str | os.PathLike) -> Path:
    """Import the real MNIST-M (pickle or PNG folder) into ``mnistm_real.npz``."""
    src = Path(source)
    if src.is_dir():
        arrays = _real_from_folder(src)
    elif src.is_file():
        arrays = _real_from_pickle(src, load_mnist_arrays(root))
    else:
        raise DataError(f"{src}: no such file or folder")
    path = root / REAL_CACHE_NAME
    with file_lock(root / ".mnistm_real.lock"):
        atomic_save_npz(path, **arrays, meta_backgrounds=np.array(f"real MNIST-M from {src}"),
                        meta_import_version=np.array(REAL_IMPORT_VERSION))
    return path
