"""Shared fixtures: tiny, hermetic data caches made on the fly (no real MNIST needed)."""

from __future__ import annotations

import numpy as np
import pytest

from dalab.data.io import atomic_save_npz
from dalab.data.mnistm import build_mnistm


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey 28x28 'digits': class k is a bright bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    x = (rng.random((n, 28, 28)) < 0.05).astype(np.uint8) * 80
    for k in range(10):
        idx = y == k
        r = 3 + 2 * k
        x[idx, r:r + 3, 4:24] = 255
    return x, y.astype(np.int64)


def write_tiny_caches(root, n_train=512, n_val=128, n_test=128, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    arrays, m_arrays = {}, {}
    rng = np.random.default_rng(seed)
    photos = [rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8) for _ in range(3)]
    for i, (s, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        x, y = synthetic_digits(n, seed + i)
        arrays[f"{s}_x"], arrays[f"{s}_y"] = x, y
        m_arrays[f"{s}_x"], m_arrays[f"{s}_y"] = build_mnistm(x, photos, seed=i), y
    atomic_save_npz(root / "mnist.npz", **arrays)
    atomic_save_npz(root / "mnistm.npz", **m_arrays, meta_seed=np.array(0),
                    meta_backgrounds=np.array("3 random-noise test photos"))
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return write_tiny_caches(tmp_path_factory.mktemp("tinydata"))


@pytest.fixture
def tiny_data_copy(tmp_path):
    """A private copy tests may damage."""
    return write_tiny_caches(tmp_path / "data")


def write_tiny_scenes(root, sizes=None, seed=0):
    """The two procedural street-scene domains at their real size (48x96), a few images per split,
    textured from random-noise 'photos' so no wheel photo is needed."""
    from dalab.data import scenes

    root.mkdir(parents=True, exist_ok=True)
    sizes = sizes or {"train": 48, "val": 16, "test": 16}
    rng = np.random.default_rng(seed)
    photos = [rng.integers(0, 256, size=(110, 140, 3), dtype=np.uint8) for _ in range(3)]
    for name, style in scenes.STYLES.items():
        arrays = scenes.build_scenes(style, seed, sizes, photos=photos)
        atomic_save_npz(root / scenes.cache_name(name), **arrays, meta_seed=np.array(seed),
                        meta_format=np.array(scenes.FORMAT))
    return root


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory):
    """Tiny digit caches and tiny street-scene caches in one data folder."""
    root = write_tiny_caches(tmp_path_factory.mktemp("tinyscenes"), n_train=128, n_val=32, n_test=32)
    return write_tiny_scenes(root)


@pytest.fixture(scope="session")
def real_trees(tmp_path_factory):
    """GTA5, Cityscapes and SYNTHIA trees in their real layouts at their real sizes, with the real copies'
    flaws (see tests/realdata.py). Shared by the session: copy a tree before damaging it."""
    from realdata import write_real_trees

    return write_real_trees(tmp_path_factory.mktemp("realdata"))
