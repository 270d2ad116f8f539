"""Extra domains: syndigits, uci-digits, SVHN / USPS imports, image folders (all on tiny fixtures)."""

from __future__ import annotations

import bz2
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from dalab.cli.main import main
from dalab.data import REGISTRY, load_domain
from dalab.data.external import import_svhn, import_usps
from dalab.data.imageops import resize_batch, stratified_split
from dalab.data.syndigits import build_syndigits, matplotlib_fonts, prepare_syndigits
from dalab.data.ucidigits import prepare_uci_digits
from dalab.errors import DataError
from dalab.training import TrainConfig, Trainer

TINY = {"train": 120, "val": 30, "test": 30}


# ------------------------------------------------------------------------ helpers

def test_resize_batch_matches_pil_bilinear():
    rng = np.random.default_rng(0)
    for shape, size in (((4, 32, 32, 3), 28), ((4, 8, 8), 20), ((2, 16, 16), 28)):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        r = resize_batch(x, size)
        ref = np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BILINEAR)) for i in x])
        assert r.shape == ref.shape and r.dtype == np.uint8
        assert np.abs(r.astype(int) - ref).max() <= 1


def test_stratified_split_is_deterministic_disjoint_and_complete():
    y = np.repeat(np.arange(10), 37)
    a = stratified_split(y, (0.2, 0.1), seed=0)
    b = stratified_split(y, (0.2, 0.1), seed=0)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    allidx = np.concatenate(a)
    assert len(allidx) == len(y) and len(np.unique(allidx)) == len(y)
    assert all(set(y[p]) == set(range(10)) for p in a)  # every class in every part


# ------------------------------------------------------------------------ built domains

def test_registry_has_the_new_domains():
    for name in ("syndigits", "uci-digits", "svhn", "usps"):
        assert name in REGISTRY
    assert REGISTRY["syndigits"].prepare is not None and REGISTRY["uci-digits"].prepare is not None


def test_uci_digits_builds_splits_and_is_idempotent(tmp_path):
    path = prepare_uci_digits(tmp_path)
    d = load_domain("uci-digits", tmp_path)
    sizes = [len(d[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes[0] > sizes[2] > sizes[1] > 0
    x = d["train"].x
    assert x.shape[1:] == (28, 28) and x.dtype == np.uint8
    assert x[:, :4].max() == 0 and x[:, :, 24:].max() == 0        # 20x20 box in a black frame
    assert x.max() > 200 and set(np.unique(d["test"].y)) == set(range(10))
    mtime = path.stat().st_mtime_ns
    prepare_uci_digits(tmp_path)
    assert path.stat().st_mtime_ns == mtime                          # not rebuilt
    xt, _ = d["train"].tensors()
    assert tuple(xt.shape[1:]) == (3, 28, 28)


def test_syndigits_are_deterministic_coloured_and_legible():
    a = build_syndigits(seed=0, sizes=TINY)
    b = build_syndigits(seed=0, sizes=TINY)
    c = build_syndigits(seed=1, sizes=TINY)
    x, y = a["train_x"], a["train_y"]
    assert x.shape == (120, 28, 28, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x, b["train_x"]) and not np.array_equal(x, c["train_x"])
    assert set(np.unique(y)) == set(range(10))
    assert not np.array_equal(a["train_x"][:30], a["test_x"])       # splits use different seeds
    # colour: channels differ; legible: every image has a real contrast between stroke and background
    assert np.abs(x[..., 0].astype(int) - x[..., 1]).mean() > 10
    spread = np.percentile(x.reshape(len(x), -1), 97, axis=1) - np.percentile(x.reshape(len(x), -1), 3, axis=1)
    assert np.median(spread) > 60
    assert "21 fonts" in str(a["meta_origin"])


def test_syndigits_user_font_folder(tmp_path):
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    shutil.copy(matplotlib_fonts()[0], fonts / "mine.ttf")
    a = build_syndigits(seed=0, fonts=fonts, sizes={"train": 20, "val": 10, "test": 10})
    assert "22 fonts" in str(a["meta_origin"]) and a["train_x"].shape == (20, 28, 28, 3)
    (fonts / "broken.ttf").write_bytes(b"not a font at all")
    with pytest.raises(DataError, match="broken.ttf"):
        build_syndigits(seed=0, fonts=fonts, sizes=TINY)
    with pytest.raises(DataError, match="no font files"):
        (tmp_path / "none").mkdir()
        build_syndigits(seed=0, fonts=tmp_path / "none", sizes=TINY)


def test_prepare_syndigits_writes_a_loadable_cache(tmp_path):
    prepare_syndigits(tmp_path, sizes=TINY)
    d = load_domain("syndigits", tmp_path)
    assert [len(d[s]) for s in ("train", "val", "test")] == [120, 30, 30]
    assert "seed 0" in d.description


# ------------------------------------------------------------------------ SVHN / USPS files

def _svhn_mat(path, n, seed):
    import scipy.io

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # 1..10, 10 = digit 0
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y


def test_svhn_import(tmp_path):
    src = tmp_path / "svhn"
    src.mkdir()
    _svhn_mat(src / "train_32x32.mat", 50, 0)
    xt, _ = _svhn_mat(src / "test_32x32.mat", 20, 1)
    import_svhn(tmp_path / "data", src)
    d = load_domain("svhn", tmp_path / "data")
    assert d["train"].x.shape[1:] == (28, 28, 3) and len(d["train"]) + len(d["val"]) == 50
    assert len(d["val"]) == 10 and len(d["test"]) == 20
    assert set(np.unique(d["test"].y)) == set(range(10))              # 10 -> 0
    expect = resize_batch(np.moveaxis(xt, 3, 0))
    assert np.array_equal(d["test"].x, expect)
    # a single file names its folder too: the same domain
    import_svhn(tmp_path / "data2", src / "test_32x32.mat")
    d2 = load_domain("svhn", tmp_path / "data2")
    for s in ("train", "val", "test"):
        assert np.array_equal(d2[s].x, d[s].x) and np.array_equal(d2[s].y, d[s].y), s


def test_svhn_errors_name_the_file(tmp_path):
    src = tmp_path / "svhn"
    src.mkdir()
    _svhn_mat(src / "train_32x32.mat", 10, 0)
    with pytest.raises(DataError, match="test_32x32.mat: missing"):
        import_svhn(tmp_path / "data", src)
    (src / "test_32x32.mat").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match="test_32x32.mat: not a readable .mat"):
        import_svhn(tmp_path / "data", src)
    assert not (tmp_path / "data" / "svhn.npz").exists()


def _usps_images(n, seed):
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 16, 16))
    img[:, 4:12, 6:10] = rng.uniform(0.6, 1.0, (n, 8, 4))   # bright stroke on a dark background
    return img.reshape(n, 256), np.arange(n) % 10


def test_usps_h5_import(tmp_path):
    import h5py  # in the `test` extra

    f = tmp_path / "usps.h5"
    with h5py.File(f, "w") as h:
        for split, n, seed in (("train", 40, 0), ("test", 20, 1)):
            data, y = _usps_images(n, seed)
            g = h.create_group(split)
            g.create_dataset("data", data=data)
            g.create_dataset("target", data=y)
    import_usps(tmp_path / "data", f)
    d = load_domain("usps", tmp_path / "data")
    assert d["train"].x.shape[1:] == (28, 28) and len(d["train"]) + len(d["val"]) == 40 and len(d["test"]) == 20
    assert d["test"].x[:, 14, 14].min() > 100 and d["test"].x[:, 1, 1].max() == 0   # light digit, dark ground


def _libsvm(path, data, y):
    lines = []
    for row, label in zip(data, y):
        v = row * 2 - 1  # LIBSVM usps: values in [-1, 1], labels digit + 1; zeros omitted
        items = " ".join(f"{i + 1}:{val:.6f}" for i, val in enumerate(v) if val != 0)
        lines.append(f"{label + 1} {items}")
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def test_usps_libsvm_bz2_import_and_inverts_dark_digits(tmp_path):
    src = tmp_path / "usps"
    src.mkdir()
    for name, n, seed in (("usps.bz2", 30, 0), ("usps.t.bz2", 20, 1)):
        data, y = _usps_images(n, seed)
        _libsvm(src / name, 1.0 - data, y)  # dark digit on white paper
    import_usps(tmp_path / "data", src / "usps.bz2")
    d = load_domain("usps", tmp_path / "data")
    assert sorted(np.unique(d["test"].y)) == list(range(10))        # labels 1..10 -> 0..9
    assert d["test"].x[:, 14, 14].min() > 100 and d["test"].x[:, 1, 1].max() == 0   # inverted like MNIST


def test_usps_errors_name_the_file(tmp_path):
    (tmp_path / "usps.bz2").write_bytes(bz2.compress(b"1 1:0.5 2:oops\n"))
    (tmp_path / "usps.t.bz2").write_bytes(bz2.compress(b"1 1:0.5\n"))
    with pytest.raises(DataError, match=r"usps.bz2:1: expected"):
        import_usps(tmp_path / "data", tmp_path)
    (tmp_path / "usps.bz2").write_bytes(b"not bzip2")
    with pytest.raises(DataError, match="usps.bz2: not a bzip2"):
        import_usps(tmp_path / "data", tmp_path / "usps.bz2")
    (tmp_path / "bad.h5").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.h5"):
        import_usps(tmp_path / "data", tmp_path / "bad.h5")


# ------------------------------------------------------------------------ image folders

def _digit_png(path, k, mode="L", size=(28, 28)):
    a = np.zeros((28, 28), np.uint8)
    a[3 + 2 * k:6 + 2 * k, 4:24] = 255
    img = Image.fromarray(a).resize(size)
    img.convert(mode).save(path)


def make_labelled_folder(root, per_class=6, classes=range(10)):
    for k in classes:
        d = root / str(k)
        d.mkdir(parents=True)
        for i in range(per_class):
            mode, size = [("L", (28, 28)), ("RGB", (40, 32)), ("RGBA", (16, 16))][i % 3]
            _digit_png(d / f"{i}.png", int(k) if str(k).isdigit() else i, mode, size)
    return root


def make_flat_folder(root, n=40):
    root.mkdir(parents=True)
    for i in range(n):
        _digit_png(root / f"img_{i:03d}.png", i % 10, "RGB", (32, 32))
    return root


def test_labelled_folder_domain(tmp_path):
    src = make_labelled_folder(tmp_path / "imgs")
    (src / "README.txt").write_text("ignored")
    d = load_domain(f"folder:{src}", tmp_path / "data")
    sizes = [len(d[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 60 and all(sizes)
    assert d["train"].x.shape[1:] == (28, 28, 3) and d["train"].x.dtype == np.uint8
    assert set(np.unique(d["train"].y)) == set(range(10)) and d.classes is None and d.num_classes == 10
    again = load_domain(f"folder:{src}", tmp_path / "data")
    assert np.array_equal(again["test"].x, d["test"].x)             # deterministic split
    assert len(list((tmp_path / "data" / "folders").glob("*.npz"))) == 1   # cached


def test_folder_cache_follows_the_files(tmp_path):
    src = make_labelled_folder(tmp_path / "imgs")
    data = tmp_path / "data"
    a = load_domain(f"folder:{src}", data)
    _digit_png(src / "3" / "extra.png", 3)
    b = load_domain(f"folder:{src}", data)
    assert sum(len(b[s]) for s in ("train", "val", "test")) == sum(len(a[s]) for s in ("train", "val", "test")) + 1
    assert len(list((data / "folders").glob("*.npz"))) == 2


def test_named_classes_and_explicit_splits(tmp_path):
    root = tmp_path / "pets"
    for split, n in (("train", 5), ("test", 2)):
        for c in ("dog", "cat", "bird"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                _digit_png(d / f"{i}.jpg", i, "RGB")
    d = load_domain(f"folder:{root}", tmp_path / "data")
    assert d.classes == ("bird", "cat", "dog") and d.num_classes == 3
    assert len(d["test"]) == 6 and len(d["train"]) + len(d["val"]) == 15 and len(d["val"]) == 3


def test_flat_folder_is_an_unlabelled_target(tmp_path):
    d = load_domain(f"folder:{make_flat_folder(tmp_path / 'flat')}", tmp_path / "data")
    assert len(d["train"]) == 40 and len(d["val"]) == 0 and len(d["test"]) == 40
    assert (d["train"].y == -1).all()


def test_folder_errors_name_the_file(tmp_path):
    src = make_labelled_folder(tmp_path / "imgs", per_class=3)
    (src / "4" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken.png: not a readable image"):
        load_domain(f"folder:{src}", tmp_path / "data")
    with pytest.raises(DataError, match="image folder not found"):
        load_domain(f"folder:{tmp_path / 'nope'}", tmp_path / "data")
    mixed = make_labelled_folder(tmp_path / "mixed", per_class=1, classes=range(2))
    _digit_png(mixed / "loose.png", 1)
    with pytest.raises(DataError, match="mixes loose images"):
        load_domain(f"folder:{mixed}", tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_domain(f"folder:{tmp_path / 'empty'}", tmp_path / "data")


# ------------------------------------------------------------------------ training on folders

def _cfg(data, **kw):
    base = dict(method="dann", epochs=1, batch_size=8, data_dir=str(data), precision="fp32", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_train_labelled_folder_to_unlabelled_folder(tmp_path):
    src = make_labelled_folder(tmp_path / "src", per_class=4)
    tgt = make_flat_folder(tmp_path / "tgt")
    s = Trainer(_cfg(tmp_path / "data", source=f"folder:{src}", target=f"folder:{tgt}"), tmp_path / "run",
                progress=False).fit()
    assert s["status"] == "completed" and s["target_test_acc"] is None and s["n_target_train"] == 40
    assert 0.0 <= s["source_test_acc"] <= 1.0
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["target_test_acc"] is None


def test_unlabelled_source_and_oracle_are_refused(tmp_path):
    flat = make_flat_folder(tmp_path / "flat")
    src = make_labelled_folder(tmp_path / "src", per_class=4)
    with pytest.raises(DataError, match="a source must be labelled"):
        Trainer(_cfg(tmp_path / "data", source=f"folder:{flat}", target=f"folder:{src}"), progress=False).fit()
    with pytest.raises(DataError, match="target-only"):
        Trainer(_cfg(tmp_path / "data", method="target-only", source=f"folder:{src}", target=f"folder:{flat}"),
                progress=False).fit()


def test_cli_train_on_folders_and_bad_file(tmp_path, capsys):
    src = make_labelled_folder(tmp_path / "src", per_class=4)
    tgt = make_flat_folder(tmp_path / "tgt")
    common = ["--source", f"folder:{src}", "--epochs", "1", "--batch-size", "8", "--precision", "fp32",
              "--data-dir", str(tmp_path / "data"), "--quiet"]
    assert main(["train", *common, "--target", f"folder:{tgt}", "--out", str(tmp_path / "ok")]) == 0
    assert "n/a" in capsys.readouterr().out
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "ok" / "model.pt"), "--domain", f"folder:{tgt}",
               "--data-dir", str(tmp_path / "data"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "unlabelled" in err and len(err.splitlines()) == 1
    (tgt / "zz_bad.png").write_bytes(b"garbage")
    rc = main(["train", *common, "--target", f"folder:{tgt}", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "zz_bad.png" in err
    assert not (tmp_path / "bad").exists()                          # the run did not start half-way


def test_cli_data_list_shows_every_domain(tmp_path, capsys):
    prepare_uci_digits(tmp_path)
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("mnist", "mnistm", "syndigits", "uci-digits", "svhn", "usps", "folder:PATH"):
        assert name in out
    uci = next(line for line in out.splitlines() if line.startswith("uci-digits"))
    n_train = len(load_domain("uci-digits", tmp_path)["train"])
    assert " yes " in uci and f" {n_train} " in uci
    svhn = next(line for line in out.splitlines() if line.startswith("svhn"))
    assert " no " in svhn and "--svhn" in svhn


def test_cli_prepare_flags_parse():
    from dalab.cli.main import build_parser

    a = build_parser().parse_args(["data", "prepare", "--svhn", "s", "--usps", "u.h5", "--fonts", "f"])
    assert (a.svhn, a.usps, a.fonts) == ("s", "u.h5", "f")
    assert os.path.basename(str(matplotlib_fonts()[0])).endswith(".ttf")
