"""Real files a user may have: SVHN (``.mat``), USPS (``usps.h5`` or LIBSVM ``.bz2``).

``dalab data prepare --svhn PATH --usps PATH`` imports them once into ``svhn.npz`` and
``usps.npz`` (atomic, under a file lock). Every image is resized to 28x28 with an
antialiased bilinear filter (:func:`dalab.data.imageops.resize_batch`); a validation
split is held out of the training set (10 %, class-stratified, seed 0) because neither
dataset ships one. Any unreadable or malformed file is a one-line :class:`DataError`
that names it.
"""

from __future__ import annotations

import bz2
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .imageops import resize_batch, split_arrays
from .io import atomic_save_npz, file_lock

SVHN_CACHE = "svhn.npz"
USPS_CACHE = "usps.npz"
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
USPS_FILES_BZ2 = ("usps.bz2", "usps.t.bz2")


# ---------------------------------------------------------------------------- SVHN

def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN cropped-digits file: ``X`` (32,32,3,N) uint8 and ``y`` (N,1), 10 meaning 0."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        m = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) file; the SVHN files are v5 .mat "
                        "(re-download train_32x32.mat / test_32x32.mat)") from None
    except Exception as e:  # noqa: BLE001 - scipy raises many kinds for a corrupt file
        raise DataError(f"{path}: not a readable .mat file ({type(e).__name__})") from None
    if "X" not in m or "y" not in m:
        raise DataError(f"{path}: expected variables 'X' and 'y' (the SVHN cropped-digits format)")
    x, y = np.asarray(m["X"]), np.asarray(m["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y):
        raise DataError(f"{path}: 'X' must be (H, W, 3, N) with N = len(y), got {x.shape} and {len(y)} labels")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() > 10):
        raise DataError(f"{path}: labels must be 0..10 (10 = digit 0), got {y.min()}..{y.max()}")
    y[y == 10] = 0
    x = np.ascontiguousarray(np.moveaxis(x, 3, 0))  # (N, H, W, 3)
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    return x, y


def _svhn_paths(source: Path) -> tuple[Path, Path]:
    if source.is_dir():
        tr, te = (source / f for f in SVHN_FILES)
    elif source.is_file():
        folder = source.parent
        tr, te = (folder / f for f in SVHN_FILES)
        if source.name not in SVHN_FILES:
            raise DataError(f"{source}: expected {SVHN_FILES[0]} or {SVHN_FILES[1]} (or their folder)")
    else:
        raise DataError(f"{source}: no such file or folder")
    for p in (tr, te):
        if not p.is_file():
            raise DataError(f"{p}: missing; --svhn needs {SVHN_FILES[0]} and {SVHN_FILES[1]} side by side")
    return tr, te


def import_svhn(root: Path, source: str | os.PathLike, seed: int = 0) -> Path:
    """Import SVHN (format 2, cropped digits) into ``svhn.npz``; ``extra_32x32.mat`` is not used."""
    tr, te = _svhn_paths(Path(source))
    x, y = read_svhn_mat(tr)
    xt, yt = read_svhn_mat(te)
    arrays = split_arrays(resize_batch(x), y, val=0.1, seed=seed)
    arrays.update(test_x=resize_batch(xt), test_y=yt)
    path = root / SVHN_CACHE
    with file_lock(root / ".svhn.lock"):
        atomic_save_npz(path, **arrays, meta_origin=np.array(f"SVHN cropped digits from {tr.parent}"))
    return path


# ---------------------------------------------------------------------------- USPS

def _read_usps_h5(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The common Kaggle ``usps.h5``: groups train/test with ``data`` (N,256) in [0,1], ``target``."""
    try:
        import h5py
    except ImportError:
        raise DataError(f"{path}: reading usps.h5 needs h5py (pip install h5py), "
                        "or pass the LIBSVM usps.bz2 instead") from None
    out = {}
    try:
        with h5py.File(path, "r") as f:
            for split in ("train", "test"):
                if split not in f or "data" not in f[split] or "target" not in f[split]:
                    raise DataError(f"{path}: expected groups train/ and test/ with 'data' and 'target'")
                out[split] = (np.asarray(f[split]["data"][()], np.float64),
                              np.asarray(f[split]["target"][()]).reshape(-1))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises OSError/KeyError/... for a bad file
        raise DataError(f"{path}: not a readable HDF5 file ({type(e).__name__})") from None
    return out


def _read_libsvm_bz2(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """LIBSVM USPS: lines ``label i:v ...`` with labels 1..10 (= digit + 1) and v in [-1, 1]."""
    try:
        text = bz2.decompress(path.read_bytes()).decode("ascii")
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a bzip2 LIBSVM file ({type(e).__name__})") from None
    labels, rows = [], []
    for i, line in enumerate(text.splitlines()):
        parts = line.split()
        if not parts:
            continue
        row = np.zeros(256)  # LIBSVM: an omitted index means the value 0
        try:
            labels.append(int(float(parts[0])))
            for item in parts[1:]:
                k, v = item.split(":")
                row[int(k) - 1] = float(v)
        except (ValueError, IndexError):
            raise DataError(f"{path}:{i + 1}: expected 'label index:value ...' with indices 1..256") from None
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no samples")
    y = np.asarray(labels, np.int64)
    if y.min() >= 1 and y.max() <= 10:
        y = y - 1  # LIBSVM's usps stores digit d as d + 1
    return (np.stack(rows) + 1.0) / 2.0, y


def _usps_images(data: np.ndarray, y: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if data.ndim != 2 or data.shape[1] != 256 or len(data) != len(y):
        raise DataError(f"{path}: expected (N, 256) pixel rows and N labels, got {data.shape} and {len(y)}")
    y = np.asarray(y).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels must be digits 0..9, got {y.min()}..{y.max()}")
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    if not np.isfinite(data).all() or lo < -1e-6 or hi > 255.0:
        raise DataError(f"{path}: pixel values must be finite and in [0, 1] (or 0..255)")
    scale = 255.0 if hi <= 1.0 + 1e-6 else 1.0
    img = np.clip(np.rint(data * scale), 0, 255).astype(np.uint8).reshape(-1, 16, 16)
    return img, y


def import_usps(root: Path, source: str | os.PathLike, seed: int = 0) -> Path:
    """Import USPS (``usps.h5``, or ``usps.bz2`` + ``usps.t.bz2``, or their folder) into ``usps.npz``.

    16x16 images are resized to 28x28 (the digit fills the frame, unlike MNIST's 20x20 box:
    part of the shift). Digits are made light on dark like MNIST: if the median pixel is
    bright the whole set is inverted.
    """
    src = Path(source)
    if src.is_dir():
        if (src / "usps.h5").is_file():
            src = src / "usps.h5"
        elif (src / USPS_FILES_BZ2[0]).is_file():
            src = src / USPS_FILES_BZ2[0]
        else:
            raise DataError(f"{src}: no usps.h5 or usps.bz2 in this folder")
    if not src.is_file():
        raise DataError(f"{src}: no such file")
    if src.name.endswith(".bz2"):
        tr = src.parent / USPS_FILES_BZ2[0]
        te = src.parent / USPS_FILES_BZ2[1]
        for p in (tr, te):
            if not p.is_file():
                raise DataError(f"{p}: missing; --usps needs {USPS_FILES_BZ2[0]} and {USPS_FILES_BZ2[1]} side by side")
        (x, y), (xt, yt) = ((_usps_images(*_read_libsvm_bz2(p), p)) for p in (tr, te))
        origin = f"USPS (LIBSVM) from {src.parent}"
    else:
        d = _read_usps_h5(src)
        x, y = _usps_images(*d["train"], src)
        xt, yt = _usps_images(*d["test"], src)
        origin = f"USPS from {src}"
    if np.median(np.concatenate([x.ravel(), xt.ravel()])) > 127:
        x, xt = 255 - x, 255 - xt
    arrays = split_arrays(resize_batch(x), y, val=0.1, seed=seed)
    arrays.update(test_x=resize_batch(xt), test_y=yt)
    path = root / USPS_CACHE
    with file_lock(root / ".usps.lock"):
        atomic_save_npz(path, **arrays, meta_origin=np.array(origin))
    return path
