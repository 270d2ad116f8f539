"""The real segmentation datasets (GTA5, Cityscapes) on tiny fixtures written in their exact layouts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dalab.cli.main import main
from dalab.data import Split, StreamSplit, load_domain
from dalab.data.cityscapes_labels import ID_TO_TRAIN_ID, IGNORE, LABELS, TRAIN_NAMES
from dalab.data.domains import Domain
from dalab.data.seg_real import (SegFiles, check_pairs, cityscapes_pairs, collate, gta5_listing, gta5_pairs,
                                 gta5_split, read_pair, size_mismatches)
from dalab.errors import DataError
from realdata import write_png16


@pytest.fixture(autouse=True)
def _data_cache(tmp_path, monkeypatch):
    """The header checks of these tests are cached in a folder of their own, not the user's cache."""
    monkeypatch.setenv("DALAB_DATA", str(tmp_path / "dalab-cache"))

# label ids drawn in the fixtures: 0 and 9 map to IGNORE, 26 is 'car' (train id 13)
IDS = [0, 7, 8, 9, 11, 21, 23, 24, 26]
RG = {i: (25 + 25 * j, 230 - 25 * j) for j, i in enumerate(IDS)}  # the image's (R, G) encodes the label id
PALETTE = [v for row in sorted(LABELS) for v in row[3]]            # Cityscapes colours, indexed by label id


def scene(h, w, k):
    """A label-id map of 8x8 blocks (26 and 9 at the top left) and an image whose colour encodes it.

    The blue channel is a per-image marker, 20 * k."""
    rng = np.random.default_rng(k)
    blocks = rng.choice(IDS, size=(-(-h // 8), -(-w // 8)))
    blocks[0, 0], blocks[0, 1] = 26, 9
    ids = np.kron(blocks, np.ones((8, 8), int))[:h, :w].astype(np.uint8)
    img = np.zeros((h, w, 3), np.uint8)
    for i, (r, g) in RG.items():
        img[ids == i] = (r, g, 0)
    img[..., 2] = 20 * k
    return img, ids


def pixels(path, mode=None):
    """The pixel array of an image file (its palette indices for a 'P' PNG), the file closed."""
    with Image.open(path) as im:
        return np.array(im.convert(mode) if mode else im)


def save_palette_label(ids, path):
    im = Image.fromarray(ids)
    im.putpalette(PALETTE + [0] * (768 - len(PALETTE)))      # an 'L' image with a palette becomes 'P'
    im.save(path)
    with Image.open(path) as im:
        assert im.mode == "P"


def make_gta5(root, n=12, odd=7):
    """GTA5 layout: images/00001.png + labels/00001.png (palette PNGs); image ``odd`` has another size."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k in range(1, n + 1):
        h, w = (40, 88) if k == odd else (48, 96)
        img, ids = scene(h, w, k)
        Image.fromarray(img).save(root / "images" / f"{k:05d}.png")
        save_palette_label(ids, root / "labels" / f"{k:05d}.png")
    return root


CITIES = {"train": {"aachen": 2, "bochum": 2}, "val": {"frankfurt": 2, "lindau": 3}}


def make_cityscapes(root, splits=CITIES):
    """Cityscapes layout: leftImg8bit/<split>/<city>/..._leftImg8bit.png, gtFine/... with the files ignored too."""
    k = 0
    for split, cities in splits.items():
        for city, frames in cities.items():
            (root / "leftImg8bit" / split / city).mkdir(parents=True)
            (root / "gtFine" / split / city).mkdir(parents=True)
            for f in range(frames):
                k += 1
                stem = f"{city}_{k:06d}_{19 + f:06d}"
                img, ids = scene(64, 128, k)
                Image.fromarray(img).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                gt = root / "gtFine" / split / city
                Image.fromarray(ids).save(gt / f"{stem}_gtFine_labelIds.png")        # 8-bit grey
                Image.fromarray(ID_TO_TRAIN_ID[ids]).convert("RGB").save(gt / f"{stem}_gtFine_color.png")
                Image.fromarray(ids.astype(np.uint16) * 1000).save(gt / f"{stem}_gtFine_instanceIds.png")
                (gt / f"{stem}_gtFine_polygons.json").write_text(json.dumps({"objects": []}))
    return root


@pytest.fixture
def gta5(tmp_path):
    return make_gta5(tmp_path / "GTA5")


@pytest.fixture
def cityscapes(tmp_path):
    return make_cityscapes(tmp_path / "cityscapes")


def item_marker(x):
    """The fixture image number k of an (3, H, W) image tensor, from its blue channel."""
    return int(x[2].flatten().mode().values) // 20


# ------------------------------------------------------------------------ indexing

def test_cityscapes_pairs_follow_the_layout(cityscapes):
    train, val = cityscapes_pairs(cityscapes, "train"), cityscapes_pairs(cityscapes, "val")
    assert len(train) == 4 and len(val) == 5
    assert train == sorted(train)
    for img, lab in train + val:
        assert img.name.endswith("_leftImg8bit.png") and lab.name.endswith("_gtFine_labelIds.png")
        assert img.name[:-len("_leftImg8bit.png")] == lab.name[:-len("_gtFine_labelIds.png")]
        assert img.parent.name == lab.parent.name                  # same city
    assert {p[0].parent.name for p in val} == {"frankfurt", "lindau"}


def test_gta5_pairs_and_the_held_out_val(gta5):
    pairs = gta5_pairs(gta5)
    assert [p[0].name for p in pairs] == [f"{k:05d}.png" for k in range(1, 13)]
    assert all(i.name == l.name and l.parent.name == "labels" for i, l in pairs)
    train, val = gta5_split(pairs)
    assert len(val) == 1 and len(train) == 11 and set(train) | set(val) == set(pairs) and not set(train) & set(val)
    assert gta5_split(pairs[::-1])[1] == val                        # independent of the order
    _, val4 = gta5_split(pairs, n_val=4)
    assert set(val) <= set(val4) and len(val4) == 4                 # the lowest hashes: a larger holdout contains it
    rest = [p for p in pairs if p not in val4]
    assert gta5_split([p for p in pairs if p not in rest[:3]], n_val=4)[1] == val4   # other files do not matter


# ------------------------------------------------------------------------ content

def test_label_ids_become_train_ids(cityscapes, gta5):
    assert TRAIN_NAMES[13] == "car"
    for img_path, lab_path in (cityscapes_pairs(cityscapes, "val")[0], gta5_pairs(gta5)[0]):
        ids = pixels(lab_path)
        x, y = SegFiles([(img_path, lab_path)], train=False)[0]
        assert x.dtype == torch.uint8 and y.dtype == torch.uint8
        assert tuple(x.shape) == (3, *ids.shape) and tuple(y.shape) == ids.shape
        assert np.array_equal(x.permute(1, 2, 0).numpy(), pixels(img_path, "RGB"))
        assert ids[0, 0] == 26 and y[0, 0] == 13                     # car
        assert ids[0, 8] == 9 and y[0, 8] == IGNORE                  # parking is not scored
        assert np.array_equal(y.numpy(), ID_TO_TRAIN_ID[ids])
        assert set(np.unique(y.numpy())) <= set(range(19)) | {IGNORE}


def test_gta5_palette_indices_not_colours_are_read(gta5):
    img_path, lab_path = gta5_pairs(gta5)[0]
    rgb = pixels(lab_path, "RGB")
    assert tuple(rgb[0, 0]) == (0, 0, 142)                          # the file shows car's colour ...
    assert read_pair(img_path, lab_path)[1][0, 0] == 13              # ... and its index 26 is read


# ------------------------------------------------------------------------ errors

def _first_line_only(e):
    assert len(str(e.value).splitlines()) == 1
    return str(e.value)


def test_layout_errors(tmp_path, gta5, cityscapes):
    with pytest.raises(DataError, match="GTA5 folder not found"):
        gta5_pairs(tmp_path / "nope")
    with pytest.raises(DataError, match="Cityscapes folder not found"):
        cityscapes_pairs(tmp_path / "nope", "val")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "images").mkdir()
    with pytest.raises(DataError, match=r"expected images/ and labels/.*no labels/"):
        gta5_pairs(tmp_path / "half")
    with pytest.raises(DataError, match=r"expected leftImg8bit/val/<city>/.*_leftImg8bit.png"):
        cityscapes_pairs(gta5, "val")                                # a GTA5 folder is not Cityscapes
    with pytest.raises(DataError, match="no split 'trainval'"):
        cityscapes_pairs(cityscapes, "trainval")
    (cityscapes / "leftImg8bit" / "test" / "berlin").mkdir(parents=True)
    (cityscapes / "gtFine" / "test" / "berlin").mkdir(parents=True)
    e = pytest.raises(DataError, cityscapes_pairs, cityscapes, "test")
    assert "empty split" in _first_line_only(e) and "leftImg8bit/test" in str(e.value)


def test_unpaired_files_are_skipped_named_and_counted(gta5, cityscapes, tmp_path):
    # dalab 0.8 refused the whole set for one unpaired file; real copies lack some pairs, so they are skipped
    for k in (3, 5, 8, 11):
        (gta5 / "labels" / f"{k:05d}.png").unlink()
    listing = gta5_listing(gta5)
    assert [p[0].name for p in listing.pairs] == [f"{k:05d}.png" for k in (1, 2, 4, 6, 7, 9, 10, 12)]
    assert [(f.name, why) for f, why in listing.unpaired] == [
        (f"{k:05d}.png", f"image without a label in {gta5 / 'labels'}/") for k in (3, 5, 8, 11)]
    d = load_domain(f"gta5:{gta5}")
    assert len(d["train"]) + len(d["val"]) == 8 and d.pair_check.counts()["unpaired_skipped"] == 4
    assert "4 files without a partner skipped" in d.description
    log = d.pair_check.write_log(tmp_path / "check.log").read_text().splitlines()
    assert log[0].startswith(f"# gta5:{gta5}: 8 usable pairs; 4 files without a partner skipped")
    assert sorted(line.split("\t")[1] for line in log[1:]) == [str(gta5 / "images" / f"{k:05d}.png")
                                                               for k in (3, 5, 8, 11)]
    lab = next((cityscapes / "gtFine" / "val" / "lindau").glob("*_labelIds.png"))
    img = cityscapes / "leftImg8bit" / "val" / "lindau" / lab.name.replace("_gtFine_labelIds", "_leftImg8bit")
    img.unlink()
    assert len(cityscapes_pairs(cityscapes, "val")) == 4                 # the label alone is left out
    c = load_domain(f"cityscapes:{cityscapes}")
    assert len(c["val"]) == 4 and c.pair_check.unpaired == [(lab, f"label without an image in {img.parent.parent}/")]
    for k in (1, 2, 4, 6, 7, 9, 10, 12):                                # nothing usable is an error
        (gta5 / "labels" / f"{k:05d}.png").unlink()
    e = pytest.raises(DataError, load_domain, f"gta5:{gta5}")
    assert "no usable pair: 0 usable pairs; 12 files without a partner skipped" in _first_line_only(e)


def test_bad_label_values_and_kinds_name_the_file(gta5):
    pairs = gta5_pairs(gta5)
    img, ids = scene(48, 96, 2)
    ids[5, 5] = 200
    save_palette_label(ids, pairs[1][1])
    e = pytest.raises(DataError, SegFiles(pairs, train=False).__getitem__, 1)
    assert str(pairs[1][1]) in _first_line_only(e) and "label id 200" in str(e.value)
    Image.fromarray(ID_TO_TRAIN_ID[ids]).convert("RGB").save(pairs[2][1])    # a coloured label
    e = pytest.raises(DataError, SegFiles(pairs, train=True, crop=(16, 16)).__getitem__, 2)
    assert str(pairs[2][1]) in _first_line_only(e) and "not a palette or grey PNG" in str(e.value)
    pairs[3][0].write_bytes(b"\x89PNG truncated")
    e = pytest.raises(DataError, SegFiles(pairs, train=False).__getitem__, 3)
    assert str(pairs[3][0]) in _first_line_only(e) and "not a readable image" in str(e.value)


def test_a_label_of_another_size_is_resized_to_its_image(gta5):
    # dalab 0.8 refused such a pair; real GTA5 copies have them, so the label is resized (nearest) when read
    pairs = gta5_pairs(gta5)
    _, ids = scene(24, 48, 1)                                        # half the image's 48x96
    save_palette_label(ids, pairs[0][1])
    img, lab = read_pair(*pairs[0])
    assert (img.height, img.width) == (48, 96) and lab.shape == (48, 96)
    assert np.array_equal(lab, np.kron(ID_TO_TRAIN_ID[ids], np.ones((2, 2), np.uint8)))   # nearest: each id doubled
    x, y = SegFiles(pairs, train=False)[0]
    assert tuple(x.shape) == (3, 48, 96) and np.array_equal(y.numpy(), lab)


# ------------------------------------------------------------------------ domains

def test_load_domain_gta5_and_cityscapes(gta5, cityscapes):
    g = load_domain(f"gta5:{gta5}")
    assert g.task == "segmentation" and g.num_classes == 19 and g.classes == TRAIN_NAMES
    assert set(g.splits) == {"train", "val"} and len(g["train"]) == 11 and len(g["val"]) == 1
    assert f"GTA5 (Playing for Data) at {gta5}, 12 images: 11 train, 1 held out" in g.description
    c = load_domain(f"cityscapes:{cityscapes}")
    assert c.task == "segmentation" and c.classes == TRAIN_NAMES and set(c.splits) == {"train", "val"}
    assert len(c["train"]) == 4 and len(c["val"]) == 5
    assert f"Cityscapes (leftImg8bit + gtFine) at {cityscapes}, 4 train images" in c.description
    assert "5 val images (scored)" in c.description
    assert c["val"].streamed and c["val"].labelled and not Split.streamed
    assert Domain("d", "x").task == "classification"
    with pytest.raises(DataError, match="has no split 'test'"):
        c["test"]


def test_streamed_splits_refuse_to_load_into_memory(gta5, tmp_path, capsys):
    s = load_domain(f"gta5:{gta5}")["train"]
    for get in (s.tensors, lambda: s.x, lambda: s.y):
        e = pytest.raises(DataError, get)
        assert "streamed split (11 images" in _first_line_only(e) and ".loader(" in str(e.value)
    assert isinstance(s, StreamSplit)
    with pytest.raises(DataError, match="gta5: needs a path"):
        load_domain("gta5:")
    with pytest.raises(DataError, match="Cityscapes folder not found"):
        load_domain(f"cityscapes:{tmp_path / 'nope'}")
    rc = main(["data", "show", f"gta5:{gta5}", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "streamed split" in err
    assert not (tmp_path / "g.png").exists()


# ------------------------------------------------------------------------ transforms

def _decode(img, lab):
    """Train ids read back from the image colours, and the scored pixels whose 3x3 neighbourhood lies
    inside the crop and has one label (there, bilinear and nearest resizing must agree)."""
    cols = np.array([RG[i] for i in IDS])
    d = ((img[..., :2].astype(int)[..., None, :] - cols) ** 2).sum(-1)
    from_img = ID_TO_TRAIN_ID[np.array(IDS)[d.argmin(-1)]]
    p = np.pad(lab.astype(int), 1, constant_values=-1)
    interior = np.ones(lab.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            interior &= p[dy:dy + lab.shape[0], dx:dx + lab.shape[1]] == lab
    return from_img, interior & (lab != IGNORE)


def test_scale_crop_flip_keep_image_and_label_aligned(cityscapes):
    pairs = cityscapes_pairs(cityscapes, "train")
    ds = SegFiles(pairs, train=True, crop=(48, 80), scale=(0.5, 1.5), flip=True, seed=3)
    shapes, agree, control = set(), [], []
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            x, y = ds[i]
            assert tuple(x.shape) == (3, 48, 80) and tuple(y.shape) == (48, 80)
            img, lab = x.permute(1, 2, 0).numpy(), y.numpy()
            from_img, keep = _decode(img, lab)
            agree.append((from_img == lab)[keep].mean())
            from_flipped, _ = _decode(img[:, ::-1], lab)              # a flip of the image alone
            control.append((from_flipped == lab)[keep].mean())
            shapes.add(int((lab == IGNORE).all(0).sum()))
    assert min(agree) > 0.99 and np.mean(control) < 0.5
    assert len(shapes) > 1                                           # the scale varies (padding width)


def test_crop_larger_than_the_image_pads_with_0_and_255(cityscapes):
    pair = cityscapes_pairs(cityscapes, "val")[0]
    x, y = SegFiles([pair], train=True, crop=(80, 160), scale=None, flip=False)[0]
    assert tuple(x.shape) == (3, 80, 160) and tuple(y.shape) == (80, 160)
    assert (x[:, 64:] == 0).all() and (x[:, :, 128:] == 0).all()
    assert (y[64:] == IGNORE).all() and (y[:, 128:] == IGNORE).all()
    assert np.array_equal(y[:64, :128].numpy(), ID_TO_TRAIN_ID[pixels(pair[1])])


def test_flip_mirrors_image_and_label_together(cityscapes):
    pair = cityscapes_pairs(cityscapes, "val")[0]
    x0, y0 = SegFiles([pair], train=False)[0]
    seen = set()
    for seed in range(12):
        x, y = SegFiles([pair], train=True, scale=None, flip=True, seed=seed)[0]
        flipped = torch.equal(x, x0.flip(-1))
        assert flipped or torch.equal(x, x0)
        assert torch.equal(y, y0.flip(-1) if flipped else y0)
        seen.add(flipped)
    assert seen == {True, False}
    x, _ = SegFiles([pair], train=True, scale=None, flip=False, seed=0)[0]
    assert torch.equal(x, x0)


def test_size_rescales_before_the_random_scale(cityscapes):
    pair = cityscapes_pairs(cityscapes, "val")[0]
    x, y = SegFiles([pair], train=True, size=(32, 64), scale=None, flip=False)[0]
    assert tuple(x.shape) == (3, 32, 64) and tuple(y.shape) == (32, 64)
    x, y = SegFiles([pair], train=True, size=(32, 64), scale=(2.0, 2.0), flip=False)[0]
    assert tuple(x.shape) == (3, 64, 128)


def test_evaluation_resizes_the_image_and_scores_at_full_or_input_size(cityscapes):
    pair = cityscapes_pairs(cityscapes, "val")[0]
    full = ID_TO_TRAIN_ID[pixels(pair[1])]
    x, y = SegFiles([pair], train=False, size=(32, 64))[0]
    assert tuple(x.shape) == (3, 32, 64) and np.array_equal(y.numpy(), full)
    x, y = SegFiles([pair], train=False, size=(32, 64), score_at="input")[0]
    assert tuple(y.shape) == (32, 64) and np.array_equal(y.numpy(), full[::2, ::2])   # nearest
    assert np.array_equal(SegFiles([pair], train=False, size=(32, 64), seed=5)[0][0].numpy(), x.numpy())


def test_items_are_deterministic_in_seed_epoch_and_index(cityscapes):
    pairs = cityscapes_pairs(cityscapes, "train")
    kw = dict(train=True, crop=(32, 48), scale=(0.5, 1.5))
    a, b = SegFiles(pairs, seed=1, **kw), SegFiles(pairs, seed=1, **kw)
    assert all(torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1]) for i in range(4))
    assert torch.equal(a[(2, 5)][0], b[(2, 5)][0])
    assert any(not torch.equal(a[(i, 0)][0], a[(i, 1)][0]) for i in range(4))       # epochs differ
    c = SegFiles(pairs, seed=2, **kw)
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(4))                 # seeds differ


# ------------------------------------------------------------------------ loaders

def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_training_loader_with_0_and_2_workers_gives_the_same_batches(gta5):
    split = StreamSplit(gta5_pairs(gta5), name="gta5 all")
    kw = dict(batch_size=4, train=True, seed=7, crop=(32, 32), scale=(0.75, 1.25))
    l0, l2 = split.loader(workers=0, **kw), split.loader(workers=2, **kw)
    assert len(l0) == 3 and l2.persistent_workers and not l0.pin_memory
    for epoch in range(2):
        b0, b2 = _batches(l0), _batches(l2)
        assert len(b0) == 3
        for (x0, y0), (x2, y2) in zip(b0, b2):
            assert x0.shape == (4, 3, 32, 32) and y0.shape == (4, 32, 32) and x0.dtype == torch.uint8
            assert torch.equal(x0, x2) and torch.equal(y0, y2)
        assert sorted(item_marker(x) for xb, _ in b0 for x in xb) == list(range(1, 13))   # every image once
    assert l0.epoch == l2.epoch == 2


def test_training_order_is_deterministic_per_seed_and_epoch(gta5):
    split = StreamSplit(gta5_pairs(gta5))
    kw = dict(batch_size=3, train=True, workers=0, crop=(16, 16), scale=None)

    def order(loader):
        return [item_marker(x) for xb, _ in loader for x in xb]

    a, b, c = split.loader(seed=1, **kw), split.loader(seed=1, **kw), split.loader(seed=2, **kw)
    a0, a1 = order(a), order(a)
    assert a0 == order(b) and a1 == order(b) and a0 != a1 and a0 != order(c)
    a.set_epoch(1)
    assert order(a) == a1 and a.epoch == 2                          # resume at an epoch
    it = a.forever(start_epoch=0)
    assert [item_marker(x) for _ in range(8) for x in next(it)[0]] == a0 + a1   # 4 batches an epoch


def test_training_sharded_over_two_ranks(gta5):
    split = StreamSplit(gta5_pairs(gta5))
    kw = dict(batch_size=2, train=True, workers=0, seed=0, world_size=2, crop=(16, 16), scale=None)
    r0, r1 = (split.loader(rank=r, **kw) for r in (0, 1))
    m0 = [item_marker(x) for xb, _ in r0 for x in xb]
    m1 = [item_marker(x) for xb, _ in r1 for x in xb]
    assert len(m0) == len(m1) == 6 and not set(m0) & set(m1) and set(m0) | set(m1) == set(range(1, 13))
    assert [item_marker(x) for xb, _ in r0 for x in xb] != m0          # a new shuffle next epoch


def test_evaluation_sharded_over_two_ranks_covers_the_set_once(cityscapes):
    split = load_domain(f"cityscapes:{cityscapes}")["val"]
    marks = []
    for rank in (0, 1):
        loader = split.loader(batch_size=2, train=False, workers=0, rank=rank, world_size=2, size=(32, 64))
        for x, y in loader:
            assert x.shape[1:] == (3, 32, 64) and y.shape[1:] == (64, 128)   # labels at full size
            marks += [item_marker(i) for i in x]
    whole = [item_marker(i) for x, _ in split.loader(batch_size=2, train=False, workers=2, size=(32, 64))
             for i in x]
    assert len(whole) == 5 and len(marks) == 5 and sorted(marks) == sorted(whole)   # 5 items: no padding
    assert whole == sorted(whole)                                    # in file order


def test_a_bad_file_read_in_a_worker_is_one_line(gta5):
    pairs = gta5_pairs(gta5)
    _, ids = scene(48, 96, 4)
    ids[0, 0] = 200
    save_palette_label(ids, pairs[3][1])
    loader = StreamSplit(pairs).loader(batch_size=2, train=False, workers=2, size=(16, 32))
    e = pytest.raises(DataError, list, loader)
    msg = _first_line_only(e)
    assert msg.startswith(str(pairs[3][1])) and "label id 200" in msg and "Traceback" not in msg


def test_loader_refusals(gta5):
    split = StreamSplit(gta5_pairs(gta5), name="gta5 all")
    # evaluation batches are grouped by size (dalab 0.8 stopped here): 00007 is 88x40, the others 96x48
    batches = list(split.loader(batch_size=12, train=False, workers=0))
    assert [tuple(x.shape) for x, _ in batches] == [(11, 3, 48, 96), (1, 3, 40, 88)]
    assert [item_marker(x) for xb, _ in batches for x in xb] == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 7]
    ds = split.dataset(train=False)
    with pytest.raises(DataError, match="images of different sizes in one batch"):
        collate([ds[0], ds[6]])                                      # what a batch of two sizes would be
    with pytest.raises(DataError, match="fewer than one batch of 16"):
        split.loader(batch_size=16, train=True, workers=0)
    with pytest.raises(DataError, match="fewer than one batch"):
        split.loader(batch_size=4, train=True, workers=0, world_size=4)   # 3 a rank
    # the first 7: six of 96x48 (batches of 5 and 1), then 00007 alone
    assert len(split.loader(batch_size=5, train=False, workers=0, limit=7)) == 3


def test_size_mismatches_are_found_from_the_headers(gta5):
    pairs = gta5_pairs(gta5)
    assert size_mismatches(pairs) == []
    _, ids = scene(40, 80, 1)
    save_palette_label(ids, pairs[4][1])
    assert size_mismatches(pairs) == [(pairs[4][0], pairs[4][1], (96, 48), (80, 40))]


def test_the_check_shows_progress_on_stderr_and_needs_no_cache(gta5, capsys):
    pairs = gta5_pairs(gta5)
    _, ids = scene(46, 96, 1)                                        # 2 rows short
    save_palette_label(ids, pairs[0][1])
    c = check_pairs(pairs, progress=True, name="gta5 copy")
    err = capsys.readouterr().err
    assert "checking gta5 copy" in err and "/24" in err              # 12 images and 12 labels
    assert c.opened == 24 and c.counts() == {"pairs": 12, "labels_resized": 1, "unpaired_skipped": 0,
                                             "unreadable_skipped": 0}
    assert c.resized == [(pairs[0][0], pairs[0][1], (48, 96), (46, 96))] and c.image_sizes[6] == (40, 88)
    check_pairs(pairs, progress=False)
    assert capsys.readouterr().err == ""
    load_domain(f"gta5:{gta5}", progress=False)                     # a domain checks its files when loaded
    assert capsys.readouterr().err == ""
    touched = gta5 / "labels" / "00002.png"                          # one file to read again: a bar for it
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert load_domain(f"gta5:{gta5}", progress=True).pair_check.opened == 1
    assert f"checking gta5:{gta5}" in capsys.readouterr().err


def test_data_list_names_the_segmentation_domains(tmp_path, capsys):
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gta5:PATH" in out and "cityscapes:PATH" in out


# ------------------------------------------------------------------ the one trainer, streamed

def test_trainer_streams_gta5_to_cityscapes(gta5, cityscapes, tmp_path):
    from dalab.training import TrainConfig, Trainer, load_model

    cfg = TrainConfig(method="dann", source=f"gta5:{gta5}", target=f"cityscapes:{cityscapes}", epochs=1,
                      batch_size=2, crop_size=[32, 64], eval_size=[32, 64], workers=0, precision="fp32",
                      device="cpu", data_dir=str(tmp_path / "cache"))
    s = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert s["status"] == "completed" and s["task"] == "segmentation"
    assert s["target_scored_split"] == "val" and 0.0 <= s["target_test_miou"] <= 1.0
    # GTA5 has no test split: the source is scored on its held-out val only
    assert 0.0 <= s["source_val_miou"] <= 1.0
    absent = s.get("source_test_miou")
    assert absent is None or absent != absent                        # no score: null (NaN before the JSON fix)
    assert s["n_source_train"] == 11 and s["n_target_train"] == 4
    model, config = load_model(tmp_path / "run" / "model.pt")
    assert config["task"] == "segmentation" and config["input"] == [3, 32, 64]


def test_trainer_refuses_a_whole_set_method_on_streamed_data(gta5, cityscapes, tmp_path):
    from dalab.errors import DalabError
    from dalab.training import TrainConfig, Trainer

    cfg = TrainConfig(method="cbst", source=f"gta5:{gta5}", target=f"cityscapes:{cityscapes}", epochs=1,
                      batch_size=2, crop_size=[32, 64], workers=0, device="cpu", data_dir=str(tmp_path / "c"))
    with pytest.raises(DalabError, match="whole target training set"):
        Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert not (tmp_path / "run").exists()


def test_cli_wrong_layout_is_one_line_exit_2(tmp_path, cityscapes):
    import subprocess
    import sys

    (tmp_path / "not-gta").mkdir()
    (tmp_path / "not-gta" / "frame.png").write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "dalab", "train", "--method", "dann", "--source",
                        f"gta5:{tmp_path / 'not-gta'}", "--target", f"cityscapes:{cityscapes}", "--out",
                        tmp_path / "run", "--quiet", "--data-dir", tmp_path / "c"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "images" in r.stderr and not (tmp_path / "run").exists()


def test_cli_evaluate_streams_cityscapes_val(gta5, cityscapes, tmp_path):
    import json
    import subprocess
    import sys

    from dalab.training import TrainConfig, Trainer

    cfg = TrainConfig(method="source-only", source=f"gta5:{gta5}", target=f"cityscapes:{cityscapes}", epochs=1,
                      batch_size=2, crop_size=[32, 64], eval_size=[32, 64], workers=0, precision="fp32",
                      device="cpu", data_dir=str(tmp_path / "cache"))
    s = Trainer(cfg, tmp_path / "run", progress=False).fit()
    r = subprocess.run([sys.executable, "-m", "dalab", "evaluate", "--checkpoint", tmp_path / "run" / "model.pt",
                        "--domain", f"cityscapes:{cityscapes}", "--split", "val", "--eval-size", "32x64",
                        "--workers", "0", "--device", "cpu", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n"] == 5 and res["miou"] == pytest.approx(s["target_test_miou"], abs=1e-6)


def test_streamed_training_needs_a_crop(gta5, cityscapes, tmp_path):
    from dalab.errors import DalabError
    from dalab.training import TrainConfig, Trainer

    cfg = TrainConfig(method="dann", source=f"gta5:{gta5}", target=f"cityscapes:{cityscapes}", epochs=1,
                      batch_size=2, workers=0, device="cpu", data_dir=str(tmp_path / "c"))
    with pytest.raises(DalabError, match="--crop"):
        Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ SYNTHIA-RAND-CITYSCAPES
# SYNTHIA class -> Cityscapes train id for the classes drawn below; 0 void and 22 lane marking -> IGNORE
SYNTHIA_DRAWN = {0: IGNORE, 1: 10, 2: 2, 3: 0, 8: 13, 10: 11, 21: 3, 22: IGNORE}


def make_synthia(root, n=12):
    """SYNTHIA-RAND-CITYSCAPES layout: RGB/0000000.png + GT/LABELS/0000000.png (16-bit: class in red,
    instance id in green)."""
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        classes = np.kron(rng.choice(list(SYNTHIA_DRAWN), size=(6, 12)), np.ones((8, 8), int))
        lab = np.zeros((48, 96, 3), np.uint16)
        lab[..., 0], lab[..., 1] = classes, 300 + k  # an instance id above 255: 16 bits in use
        write_png16(root / "GT" / "LABELS" / f"{k:07d}.png", lab)
        img = np.zeros((48, 96, 3), np.uint8)
        img[..., 0], img[..., 2] = 10 * classes, 20 * k
        Image.fromarray(img).save(root / "RGB" / f"{k:07d}.png")
    return root


@pytest.fixture
def synthia(tmp_path):
    return make_synthia(tmp_path / "SYNTHIA")


def test_synthia_16_bit_labels_become_train_ids(synthia):
    from dalab.data.seg_real import read_synthia_label, synthia_pairs

    pairs = synthia_pairs(synthia)
    assert len(pairs) == 12 and pairs[0][0].name == pairs[0][1].name == "0000000.png"
    image, label = pairs[3]
    classes = pixels(image)[..., 0].astype(int) // 10
    train = read_synthia_label(label)
    assert train.dtype == np.uint8 and train.shape == (48, 96)
    for synthia_class, train_id in SYNTHIA_DRAWN.items():
        assert (train[classes == synthia_class] == train_id).all()
    assert len(np.unique(classes)) > 4
    # why OpenCV: Pillow reads a 16-bit colour PNG as 8-bit RGB, keeping the high bytes (all 0 here)
    assert not pixels(label)[..., 0].any()


def test_synthia_8_bit_copies_and_bad_classes(synthia, tmp_path):
    from dalab.data.seg_real import read_synthia_label

    classes = np.array([[3, 8], [0, 21]], np.uint8)
    Image.fromarray(classes).save(tmp_path / "grey.png")
    assert read_synthia_label(tmp_path / "grey.png").tolist() == [[0, 13], [IGNORE, 3]]
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = classes
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_synthia_label(tmp_path / "rgb.png").tolist() == [[0, 13], [IGNORE, 3]]
    bad = np.zeros((8, 8, 3), np.uint16)
    bad[0, 0, 0] = 40
    write_png16(tmp_path / "bad.png", bad)
    with pytest.raises(DataError, match=r"bad\.png: class 40 outside SYNTHIA's label table \(0\.\.22\)"):
        read_synthia_label(tmp_path / "bad.png")


def test_synthia_without_opencv_says_what_to_install(synthia, monkeypatch):
    import sys

    from dalab.data.seg_real import read_synthia_label
    from dalab.errors import DalabError

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(DalabError, match="16-bit PNGs.*pip install opencv-python-headless"):
        read_synthia_label(synthia / "GT" / "LABELS" / "0000000.png")


def test_synthia_layout_errors(synthia, tmp_path):
    from dalab.data.domains import domain_task

    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="not a SYNTHIA-RAND-CITYSCAPES folder: expected RGB/ and GT/LABELS/"):
        load_domain(f"synthia:{tmp_path / 'flat'}")
    (synthia / "GT" / "LABELS" / "0000004.png").unlink()                # skipped, no longer an error
    d = load_domain(f"synthia:{synthia}")
    assert len(d["train"]) + len(d["val"]) == 11
    assert d.pair_check.unpaired == [(synthia / "RGB" / "0000004.png",
                                      f"image without a label in {synthia / 'GT' / 'LABELS'}/")]
    assert domain_task("synthia:/anywhere") == "segmentation"


def test_trainer_streams_synthia_to_cityscapes(synthia, cityscapes, tmp_path, capsys):
    from dalab.training import TrainConfig, Trainer

    d = load_domain(f"synthia:{synthia}")
    assert d.task == "segmentation" and (len(d["train"]), len(d["val"])) == (11, 1)
    assert "terrain, truck, train never occur" in d.description
    x, y = d["train"].dataset(train=True, crop=(32, 64), scale=None, seed=1, size="native")[0]
    classes = x[0].long() // 10  # the image's red channel encodes the SYNTHIA class (crop and flip keep it aligned)
    for synthia_class, train_id in SYNTHIA_DRAWN.items():
        assert (y[classes == synthia_class] == train_id).all()
    cfg = TrainConfig(method="source-only", source=f"synthia:{synthia}", target=f"cityscapes:{cityscapes}",
                      epochs=1, batch_size=2, crop_size=[32, 64], eval_size=[32, 64], workers=0, precision="fp32",
                      device="cpu", data_dir=str(tmp_path / "cache"))
    s = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert s["status"] == "completed" and 0.0 <= s["target_test_miou"] <= 1.0
    # the papers' 16- and 13-class scores
    args = ["evaluate", "--checkpoint", str(tmp_path / "run" / "model.pt"), "--domain", f"cityscapes:{cityscapes}",
            "--split", "val", "--eval-size", "32x64", "--workers", "0", "--device", "cpu"]
    for preset, left_out in (("synthia16", {"terrain", "truck", "train"}),
                             ("synthia13", {"terrain", "truck", "train", "wall", "fence", "pole"})):
        capsys.readouterr()
        assert main(args + ["--classes", preset, "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert len(res["classes"]) == 19 - len(left_out) and not left_out & set(res["classes"])
        present = [v for k, v in res["per_class_iou"].items() if k in res["classes"] and v is not None]
        assert res["classes_scored"] == len(present) and res["miou"] == pytest.approx(sum(present) / len(present))
    assert main(args + ["--classes", "car,road"]) == 0
    assert "over the 2 of the 2 classes asked for present" in capsys.readouterr().out
    assert main(args + ["--classes", "car,lamppost"]) == 2
    assert "--classes: no class 'lamppost'" in capsys.readouterr().err


# ------------------------------------------------------------------ the Cityscapes label table
# (id, name, train id, colour) of every label id, as cityscapesScripts' cityscapesscripts/helpers/labels.py
# lists them; 'license plate' (id -1, train id -1) has no id in label images ("ignored when creating
# ground truth images"), so a uint8 label PNG never holds it and the table here stops at 33.
OFFICIAL = [
    (0, "unlabeled", 255, (0, 0, 0)), (1, "ego vehicle", 255, (0, 0, 0)),
    (2, "rectification border", 255, (0, 0, 0)), (3, "out of roi", 255, (0, 0, 0)), (4, "static", 255, (0, 0, 0)),
    (5, "dynamic", 255, (111, 74, 0)), (6, "ground", 255, (81, 0, 81)), (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 1, (244, 35, 232)), (9, "parking", 255, (250, 170, 160)), (10, "rail track", 255, (230, 150, 140)),
    (11, "building", 2, (70, 70, 70)), (12, "wall", 3, (102, 102, 156)), (13, "fence", 4, (190, 153, 153)),
    (14, "guard rail", 255, (180, 165, 180)), (15, "bridge", 255, (150, 100, 100)),
    (16, "tunnel", 255, (150, 120, 90)), (17, "pole", 5, (153, 153, 153)), (18, "polegroup", 255, (153, 153, 153)),
    (19, "traffic light", 6, (250, 170, 30)), (20, "traffic sign", 7, (220, 220, 0)),
    (21, "vegetation", 8, (107, 142, 35)), (22, "terrain", 9, (152, 251, 152)), (23, "sky", 10, (70, 130, 180)),
    (24, "person", 11, (220, 20, 60)), (25, "rider", 12, (255, 0, 0)), (26, "car", 13, (0, 0, 142)),
    (27, "truck", 14, (0, 0, 70)), (28, "bus", 15, (0, 60, 100)), (29, "caravan", 255, (0, 0, 90)),
    (30, "trailer", 255, (0, 0, 110)), (31, "train", 16, (0, 80, 100)), (32, "motorcycle", 17, (0, 0, 230)),
    (33, "bicycle", 18, (119, 11, 32)),
]


def test_the_whole_cityscapes_label_table_is_pinned():
    from dalab.data.cityscapes_labels import KNOWN_IDS, NUM_CLASSES, TRAIN_COLOURS, TRAIN_ID

    assert [tuple(row) for row in LABELS] == OFFICIAL                # all 34 ids, in order
    assert KNOWN_IDS == frozenset(range(34)) and -1 not in KNOWN_IDS
    assert ID_TO_TRAIN_ID.tolist() == [t for _, _, t, _ in OFFICIAL] + [IGNORE] * (256 - 34)
    trained = sorted((t, n, c) for _, n, t, c in OFFICIAL if t != 255)
    assert NUM_CLASSES == 19 and [t for t, _, _ in trained] == list(range(19))
    assert TRAIN_NAMES == tuple(n for _, n, _ in trained) and TRAIN_ID == {n: t for t, n, _ in trained}
    assert TRAIN_COLOURS.tolist() == [list(c) for _, _, c in trained]
