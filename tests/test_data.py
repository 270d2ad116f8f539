"""The MNIST-M builders and importers on small fixtures made here.

- ``import_real_mnistm`` for the pickle dict (train/test, or TensorFlow's train/valid/test, checked
  image by image against MNIST's labels) and for the
  PNG folder + labels-file layout of the original tarball;
- ``dalab data prepare --backgrounds DIR`` (through the CLI, in-process);
- determinism of ``build_mnistm`` / ``prepare_mnistm``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalab.data import REGISTRY, load_domain
from dalab.data.mnistm import (REAL_CACHE_NAME, build_mnistm, import_real_mnistm, load_backgrounds,
                               prepare_mnistm, random_patches)
from dalab.errors import DataError


def _mnist(root: Path) -> dict:
    with np.load(root / "mnist.npz") as z:
        return {k: z[k] for k in z.files}


def _imgs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)


def _encode(k: np.ndarray) -> np.ndarray:
    """28x28 RGB images whose pixels spell their index k: red = k % 256, green = k // 256."""
    x = np.zeros((len(k), 28, 28, 3), np.uint8)
    x[..., 0] = (k % 256)[:, None, None]
    x[..., 1] = (k // 256)[:, None, None]
    return x


def _decode(x: np.ndarray) -> np.ndarray:
    return x[:, 0, 0, 0].astype(np.int64) + 256 * x[:, 0, 0, 1].astype(np.int64)


def _fake_mnist(root: Path, ntr: int, nva: int, nte: int) -> dict:
    """An MNIST cache whose training image k (train then val: MNIST's order) holds k, and whose
    labels are an irregular function of k (a shifted pairing would get most of them wrong)."""
    k = np.arange(ntr + nva + nte)
    labels = (k * 7 + k // 3) % 10
    grey = _encode(k)[..., 0]
    a = {"train_x": grey[:ntr], "train_y": labels[:ntr], "val_x": grey[ntr:ntr + nva],
         "val_y": labels[ntr:ntr + nva], "test_x": grey[ntr + nva:], "test_y": labels[ntr + nva:]}
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "mnist.npz", **a)
    return {"k": k, "labels": labels}


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_import_real_mnistm_pickle_in_tensorflow_layout_pairs_each_image_with_its_label(tmp_path, protocol):
    # mnistm_data.pkl was made with TensorFlow's MNIST reader: 'valid' = MNIST training images
    # 0..4,999, 'train' = 5,000..59,999 (55k), 'test' = the 10k test images. Here the same
    # layout at 1/100 scale (dalab's split of those 600 images: 500 train + 100 val).
    root = tmp_path / "data"
    fake = _fake_mnist(root, ntr=500, nva=100, nte=100)
    mnistm = _encode(fake["k"])  # MNIST-M image k is made from MNIST image k, so it holds k too
    obj = {"train": mnistm[50:600], "valid": mnistm[:50], "test": mnistm[600:]}
    src = tmp_path / "mnistm_data.pkl"
    src.write_bytes(pickle.dumps(obj, protocol=protocol))  # the public file is a protocol-2 pickle
    assert import_real_mnistm(root, src) == root / REAL_CACHE_NAME
    d = load_domain("mnistm-real", root)
    assert [len(d[s]) for s in ("train", "val", "test")] == [500, 100, 100]
    for s, first in (("train", 0), ("val", 500), ("test", 600)):
        k = _decode(d[s].x)
        assert np.array_equal(k, np.arange(first, first + len(d[s]))), s  # MNIST's order
        assert np.array_equal(d[s].y, fake["labels"][k]), s  # image k carries MNIST label k
    assert str(src) in d.description


def test_import_real_mnistm_pickle_without_valid_keeps_mnist_order(tiny_data_copy, tmp_path):
    m = _mnist(tiny_data_copy)
    ntr, nva, nte = len(m["train_y"]), len(m["val_y"]), len(m["test_y"])
    train, test = _imgs(ntr + nva, 1), _imgs(nte, 2)
    src = tmp_path / "mnistm_data.pkl"
    src.write_bytes(pickle.dumps({"train": train, "test": test}, protocol=2))
    import_real_mnistm(tiny_data_copy, src)
    d = load_domain("mnistm-real", tiny_data_copy)
    assert np.array_equal(d["train"].x, train[:ntr]) and np.array_equal(d["val"].x, train[ntr:])
    assert np.array_equal(d["test"].x, test)
    for s in ("train", "val", "test"):  # the file holds images only: labels are MNIST's, same order
        assert np.array_equal(d[s].y, m[f"{s}_y"])


def test_real_mnistm_cache_of_an_older_import_is_refused(tiny_data_copy, tmp_path):
    """Older dalab put 'valid' last, mislabelling most images: such a cache must be imported again."""
    m = _mnist(tiny_data_copy)
    np.savez(tiny_data_copy / REAL_CACHE_NAME, **m, meta_backgrounds=np.array("real MNIST-M from x.pkl"))
    with pytest.raises(DataError, match=r"mnistm_real\.npz: imported by dalab 0\.6 or older.*import it again"):
        load_domain("mnistm-real", tiny_data_copy)


def test_import_real_mnistm_pickle_of_wrong_size_names_the_file(tiny_data_copy, tmp_path):
    src = tmp_path / "small.pkl"
    src.write_bytes(pickle.dumps({"train": _imgs(10, 0), "test": _imgs(5, 1)}))
    with pytest.raises(DataError, match=r"small\.pkl: sizes 10/5 do not match MNIST"):
        import_real_mnistm(tiny_data_copy, src)
    assert not (tiny_data_copy / REAL_CACHE_NAME).exists()


def _write_png_split(folder: Path, labels: Path, n: int, seed: int, size=28) -> tuple[np.ndarray, list[int]]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    imgs, ys, lines = [], [], []
    for i in range(n):
        s = size if i % 3 else 32  # some images of another size: resized to 28x28
        img = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"{i:08d}.png")
        imgs.append(img)
        ys.append(int(rng.integers(0, 10)))
        lines.append(f"{i:08d}.png {ys[-1]}")
    labels.write_text("\n".join(lines[::-1]) + "\n")  # order of the labels file is the order used
    return imgs, ys


def test_import_real_mnistm_png_folder(tiny_data_copy, tmp_path):
    src = tmp_path / "mnist_m"
    tr, ytr = _write_png_split(src / "mnist_m_train", src / "mnist_m_train_labels.txt", 12, 0)
    te, yte = _write_png_split(src / "mnist_m_test", src / "mnist_m_test_labels.txt", 5, 1)
    import_real_mnistm(tiny_data_copy, src)
    d = load_domain("mnistm-real", tiny_data_copy)
    assert [len(d[s]) for s in ("train", "val", "test")] == [10, 2, 5]  # 1/6 of train held out as val
    order = list(range(12))[::-1]
    assert d["train"].y.tolist() + d["val"].y.tolist() == [ytr[i] for i in order]
    assert d["test"].y.tolist() == [yte[i] for i in range(5)][::-1]
    assert d["train"].x.shape[1:] == (28, 28, 3) and d["train"].x.dtype == np.uint8
    # a 28x28 PNG comes back pixel for pixel
    first28 = next(k for k, i in enumerate(order) if i % 3)
    assert np.array_equal(d["train"].x[first28], tr[order[first28]])


def test_import_real_mnistm_png_folder_errors_name_the_file(tiny_data_copy, tmp_path):
    src = tmp_path / "mnist_m"
    _write_png_split(src / "mnist_m_train", src / "mnist_m_train_labels.txt", 4, 0)
    with pytest.raises(DataError, match="mnist_m_test missing"):
        import_real_mnistm(tiny_data_copy, src)
    _write_png_split(src / "mnist_m_test", src / "mnist_m_test_labels.txt", 2, 1)
    (src / "mnist_m_test_labels.txt").write_text("00000000.png seven\n")
    with pytest.raises(DataError, match=r"mnist_m_test_labels\.txt:1: expected 'filename label'"):
        import_real_mnistm(tiny_data_copy, src)
    (src / "mnist_m_test_labels.txt").write_text("00000000.png 1\nmissing.png 2\n")
    with pytest.raises(DataError, match=r"missing\.png: not a readable image"):
        import_real_mnistm(tiny_data_copy, src)
    with pytest.raises(DataError, match="no such file or folder"):
        import_real_mnistm(tiny_data_copy, tmp_path / "nothing")
    assert not (tiny_data_copy / REAL_CACHE_NAME).exists()


# ------------------------------------------------------------------ --backgrounds DIR

COLOURS = [(10, 20, 30), (200, 100, 50), (0, 255, 128)]


def _solid_photos(d: Path) -> Path:
    d.mkdir()
    for i, c in enumerate(COLOURS):
        Image.new("RGB", (40 + 5 * i, 33), c).save(d / f"photo{i}.{'png' if i % 2 else 'jpg'}")
    Image.new("RGB", (10, 10), (1, 1, 1)).save(d / "too_small.png")  # ignored: smaller than 28x28
    (d / "notes.txt").write_text("not a photo")
    return d


def test_prepare_with_backgrounds_dir_through_the_cli(tiny_data_copy, tmp_path, monkeypatch, capsys):
    from dalab.cli.main import main

    for name in list(REGISTRY):  # only mnist + mnistm: other domains' caches are slow and irrelevant
        if name not in ("mnist", "mnistm"):
            monkeypatch.delitem(REGISTRY, name)
    photos = _solid_photos(tmp_path / "photos")
    assert main(["data", "prepare", "--data-dir", str(tiny_data_copy), "--backgrounds", str(photos),
                 "--seed", "3"]) == 0
    assert f"photos from {photos}" in capsys.readouterr().out
    m, mm = _mnist(tiny_data_copy), load_domain("mnistm", tiny_data_copy)
    cols = np.array(COLOURS)
    for s in ("train", "test"):
        x, on = mm[s].x.astype(int), m[f"{s}_x"] > 0
        # each image's background is one solid photo: off the digit that colour, on it 255 - colour
        # (JPEG may shift a solid colour by a unit or two)
        bg = np.where(on[..., None], 255 - x, x)  # (N, 28, 28, 3): the photo colour at every pixel
        dist = np.abs(bg[:, :, :, None, :] - cols[None, None, None]).max(-1)  # (N, 28, 28, colours)
        which = dist.argmin(-1)
        assert dist.min(-1).max() <= 3
        assert (which == which[:, :1, :1]).all()  # one photo per image
        assert np.array_equal(mm[s].y, m[f"{s}_y"])
    assert "seed 3" in mm.description


def test_prepare_prints_one_ready_line_per_domain_with_the_name_apart(tiny_data_copy, monkeypatch, capsys):
    import dataclasses

    from dalab.cli.main import main

    for name, spec in list(REGISTRY.items()):  # other domains' builders are slow: stand-ins that do nothing
        if name not in ("mnist", "mnistm") and spec.prepare is not None:
            monkeypatch.setitem(REGISTRY, name, dataclasses.replace(spec, prepare=lambda root, force=False: None))
    assert main(["data", "prepare", "--data-dir", str(tiny_data_copy)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " ready (" in ln]
    names = [ln.split()[0] for ln in lines]
    assert names == ["mnist", "mnistm", *[n for n, sp in REGISTRY.items() if sp.prepare and n not in names[:2]]]
    assert {"syndigits", "uci-digits"} <= set(names)
    assert all(ln.split()[1] == "ready" for ln in lines), lines


def test_backgrounds_folder_problems_are_named(tmp_path):
    with pytest.raises(DataError, match="nowhere: backgrounds folder not found"):
        load_backgrounds(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images"):
        load_backgrounds(tmp_path / "empty")
    (tmp_path / "small").mkdir()
    Image.new("RGB", (20, 50)).save(tmp_path / "small" / "a.png")
    with pytest.raises(DataError, match="at least 28x28"):
        load_backgrounds(tmp_path / "small")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_text("no")
    with pytest.raises(DataError, match=r"x\.jpg: not a readable image"):
        load_backgrounds(tmp_path / "bad")


def _gradient_photo(path: Path, w: int, h: int) -> None:
    """A smooth photo: red rises from 0 to 255 across the width, green down the height."""
    xs = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    ys = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    Image.fromarray(np.stack([xs, ys, np.full_like(xs, 90)], -1).astype(np.uint8)).save(path)


def test_user_photos_are_scaled_to_bsds500_size_by_default(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    _gradient_photo(d / "big.png", 1924, 1284)  # 4x BSDS500's 481x321
    _gradient_photo(d / "portrait.png", 60, 80)  # small ones are scaled up
    bsds, origin = load_backgrounds(d)
    assert sorted(p.shape for p in bsds) == [(321, 481, 3), (428, 321, 3)]
    assert "321-px short side" in origin
    native, origin_n = load_backgrounds(d, scale="native")
    assert sorted(p.shape for p in native) == [(80, 60, 3), (1284, 1924, 3)]
    assert "native resolution" in origin_n
    # crops of the big photo: nearly flat at native resolution, not at BSDS500's scale
    big_b, big_n = (next(p for p in ph if p.shape[1] > p.shape[0]) for ph in (bsds, native))
    rng = np.random.default_rng(0)
    spread = {k: np.ptp(random_patches([ph], 200, rng)[..., 0].astype(int), axis=(1, 2)).mean()
              for k, ph in (("bsds", big_b), ("native", big_n))}
    assert spread["native"] < 5 < 12 < spread["bsds"]
    with pytest.raises(DataError, match="background scale 'huge'"):
        load_backgrounds(d, scale="huge")


def test_wheel_photos_keep_their_native_size_whatever_the_scale():
    from dalab.data.mnistm import read_rgb, wheel_photo_paths

    native = [read_rgb(p).shape for p in wheel_photo_paths()]
    assert [p.shape for p in load_backgrounds(None, scale="bsds")[0]] == native


@pytest.mark.parametrize("scale", [None, "bsds", "native"])
def test_prepare_records_the_background_scale(tiny_data_copy, tmp_path, monkeypatch, capsys, scale):
    from dalab.cli.main import main

    for name in list(REGISTRY):
        if name not in ("mnist", "mnistm"):
            monkeypatch.delitem(REGISTRY, name)
    d = tmp_path / "photos"
    d.mkdir()
    _gradient_photo(d / "big.png", 963, 642)
    extra = [] if scale is None else ["--background-scale", scale]
    assert main(["data", "prepare", "--data-dir", str(tiny_data_copy), "--backgrounds", str(d), *extra]) == 0
    with np.load(tiny_data_copy / "mnistm.npz") as z:
        assert str(z["meta_background_scale"]) == (scale or "bsds")
    desc = load_domain("mnistm", tiny_data_copy).description
    assert ("native resolution" if scale == "native" else "321-px short side (BSDS500's scale)") in desc


def test_background_scale_without_backgrounds_is_refused(tmp_path, capsys):
    from dalab.cli.main import main

    assert main(["data", "prepare", "--data-dir", str(tmp_path / "d"), "--background-scale", "native"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--background-scale applies to --backgrounds DIR only" in err
    assert not (tmp_path / "d" / "mnistm.npz").exists()


# ------------------------------------------------------------------ determinism

def test_build_mnistm_is_deterministic(tiny_data):
    m = _mnist(tiny_data)
    ph, _ = load_backgrounds(None)  # the wheel photos
    a = build_mnistm(m["train_x"][:200], ph, seed=7)
    b = build_mnistm(m["train_x"][:200].copy(), [p.copy() for p in ph], seed=7)
    c = build_mnistm(m["train_x"][:200], ph, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_prepare_mnistm_twice_gives_the_same_cache(tmp_path):
    from conftest import write_tiny_caches

    caches = []
    for name in ("a", "b"):
        root = write_tiny_caches(tmp_path / name, n_train=100, n_val=20, n_test=20)
        (root / "mnistm.npz").unlink()
        prepare_mnistm(root, seed=4)
        with np.load(root / "mnistm.npz") as z:
            caches.append({k: z[k] for k in z.files})
    a, b = caches
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert int(a["meta_seed"]) == 4
    assert str(a["meta_background_scale"]) == "native"  # the built-in photos, as ever
