"""``uci-digits``: scikit-learn's bundled 8x8 handwritten digits, upsampled to 28x28.

scikit-learn ships the 1,797 test images of the UCI "Optical Recognition of Handwritten
Digits" set (43 writers, 4x4 blocks counted into 8x8 grids of 0..16). We scale them to
0..255, resize the 8x8 grid to 20x20 (bilinear) and centre it in a 28x28 black frame,
like MNIST's 20x20 box: the domain shift is the blocky, low-resolution strokes and the
small sample size. Splits are class-stratified with seed 0: 70 % train, 10 % val, 20 % test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .imageops import resize_batch, split_arrays
from .io import atomic_save_npz, file_lock

CACHE_NAME = "uci_digits.npz"


def build_uci_digits(seed: int = 0) -> dict[str, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise DataError("uci-digits needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    img8 = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (1797, 8, 8)
    box = resize_batch(img8, 20)
    x = np.zeros((len(box), 28, 28), np.uint8)
    x[:, 4:24, 4:24] = box
    arrays = split_arrays(x, d.target.astype(np.int64), val=0.1, test=0.2, seed=seed)
    arrays["meta_origin"] = np.array("scikit-learn load_digits (UCI optical digits, 8x8 -> 28x28)")
    return arrays


def prepare_uci_digits(root: Path, force: bool = False, seed: int = 0) -> Path:
    from .mnist import load_npz_checked

    path = root / CACHE_NAME
    with file_lock(root / ".uci_digits.lock"):
        if path.is_file() and not force:
            load_npz_checked(path, "uci-digits")
            return path
        atomic_save_npz(path, **build_uci_digits(seed))
    return path
