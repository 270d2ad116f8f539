"""The real segmentation datasets at their real sizes, with the real copies' flaws (tests/realdata.py):
the pair check and its cache, labels of another size, unpaired files, base sizes, evaluation of mixed
sizes at full resolution, an unlabelled Cityscapes train split, and crops that cannot be cut."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dalab.data import load_domain
from dalab.data import seg_real
from dalab.data.cityscapes_labels import ID_TO_TRAIN_ID, IGNORE, TRAIN_ID
from dalab.data.seg_real import BASE_SIZES, PairCheck, load_seg_domain
from dalab.errors import DalabError, DataError
from realdata import (CITYSCAPES_HW, GTA5_ALONE, GTA5_FULL, GTA5_N, GTA5_SHORT, GTA5_SMALL_HW,
                      SYNTHIA_HW, expected_train_ids, gta5_size, marker, write_gta5)


@pytest.fixture(autouse=True)
def _data_cache(tmp_path, monkeypatch):
    """Header checks are cached in a folder of each test's own, not the user's cache."""
    monkeypatch.setenv("DALAB_DATA", str(tmp_path / "dalab-cache"))


def one_line(e) -> str:
    assert len(str(e.value).splitlines()) == 1
    return str(e.value)


def label_at_image_size(image_path, label_path):
    """The reference: the label file's ids as train ids, resized (nearest) to its image's size by PIL."""
    with Image.open(image_path) as im, Image.open(label_path) as lab:
        return ID_TO_TRAIN_ID[np.asarray(lab.resize(im.size, Image.NEAREST))]


def number(path) -> int:
    return int(path.stem)


# ------------------------------------------------------------------------ the pair check

def test_the_check_counts_resized_and_skipped_files_and_logs_them(real_trees, tmp_path):
    g = load_domain(f"gta5:{real_trees.gta5}")
    c = g.pair_check
    assert isinstance(c, PairCheck) and c.counts() == {"pairs": GTA5_N - 1, "labels_resized": 1,
                                                        "unpaired_skipped": 1, "unreadable_skipped": 0}
    short = real_trees.gta5 / "labels" / f"{GTA5_SHORT:05d}.png"
    alone = real_trees.gta5 / "images" / f"{GTA5_ALONE:05d}.png"
    assert c.resized == [(real_trees.gta5 / "images" / short.name, short, GTA5_FULL, (1050, 1914))]
    assert c.unpaired == [(alone, f"image without a label in {real_trees.gta5 / 'labels'}/")]
    assert {number(p[0]): hw for p, hw in zip(c.pairs, c.image_sizes)} == {
        k: gta5_size(k) for k in range(1, GTA5_N) if k != GTA5_ALONE}
    assert "1 label of another size than the image resized to it (nearest); 1 file without a partner skipped" \
        in g.description and "resized to 1280x720 (WxH)" in g.description
    log = c.write_log(tmp_path / "logs" / "source-check.log").read_text().splitlines()
    assert log == [f"# {c.summary()}",
                   f"resized\t{short}\tlabel 1050x1914, resized (nearest) to its image "
                   f"{real_trees.gta5 / 'images' / short.name} (1052x1914)",
                   f"skipped\t{alone}\timage without a label in {real_trees.gta5 / 'labels'}/"]
    assert not [p for p in (tmp_path / "logs").iterdir() if p.name.startswith(".")]   # written atomically
    assert len(g["train"]) + len(g["val"]) == GTA5_N - 1 and len(g["val"]) == 1


def test_an_unreadable_header_is_skipped_and_counted(tmp_path):
    root = write_gta5(tmp_path / "GTA5")
    (root / "images" / "00004.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png after all")
    (root / "labels" / "00006.png").write_bytes(b"")
    d = load_seg_domain(f"gta5:{root}")
    c = d.pair_check
    assert c.counts() == {"pairs": GTA5_N - 3, "labels_resized": 1, "unpaired_skipped": 1, "unreadable_skipped": 2}
    assert [f.name for f, _ in c.unreadable] == ["00004.png", "00006.png"]
    assert all("not a readable image" in why for _, why in c.unreadable)
    assert {number(p[0]) for p in c.pairs} == {1, 2, 3, 5, 7}
    fields = [line.split("\t") for line in c.log_lines()]          # one line per affected file
    assert [(what, f.split("/")[-2:]) for what, f, _ in fields] == [
        ("resized", ["labels", "00003.png"]), ("skipped", ["images", "00008.png"]),
        ("skipped", ["images", "00004.png"]), ("skipped", ["labels", "00006.png"])]
    assert [why.startswith("unreadable: not a readable image") for _, _, why in fields] == [False, False, True, True]


def test_the_check_is_cached_by_names_sizes_and_mtimes(tmp_path, monkeypatch):
    root = write_gta5(tmp_path / "GTA5")
    cache = tmp_path / "cache"
    first = load_seg_domain(f"gta5:{root}", cache_dir=cache).pair_check
    assert first.opened == 2 * (GTA5_N - 1)                          # 7 pairs (the unpaired image is not read)
    files = list((cache / "seg-checks").iterdir())
    assert len(files) == 1 and files[0].name.startswith("gta5-")
    stored = json.loads(files[0].read_text())
    assert len(stored["headers"]) == 2 * (GTA5_N - 1) and len(stored["fingerprint"]) == 64
    assert stored["headers"]["labels/00003.png"][2:] == [1050, 1914]

    def no_reading(path):
        raise AssertionError(f"{path} opened although its header is cached")

    monkeypatch.setattr(seg_real, "_header", no_reading)
    second = load_seg_domain(f"gta5:{root}", cache_dir=cache).pair_check
    assert second.opened == 0 and second == PairCheck(**{**vars(first), "opened": 0})
    monkeypatch.undo()
    f = root / "labels" / "00007.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))        # one file touched: only it is read again
    third = load_seg_domain(f"gta5:{root}", cache_dir=cache).pair_check
    assert third.opened == 1 and third.pairs == first.pairs
    files[0].write_text("{ damaged")                                 # a damaged cache: checked again, no error
    assert load_seg_domain(f"gta5:{root}", cache_dir=cache).pair_check.opened == 2 * (GTA5_N - 1)
    assert json.loads(files[0].read_text())["format"] == seg_real.CHECK_FORMAT
    assert load_domain(f"gta5:{root}", str(cache)).pair_check.opened == 0   # load_domain caches in its data dir


# ------------------------------------------------------------------------ reading at real sizes

def test_a_short_label_is_resized_to_its_image(real_trees):
    image = real_trees.gta5 / "images" / f"{GTA5_SHORT:05d}.png"
    label = real_trees.gta5 / "labels" / image.name
    img, lab = seg_real.read_pair(image, label)
    assert (img.height, img.width) == GTA5_FULL and lab.shape == GTA5_FULL
    assert np.array_equal(lab, label_at_image_size(image, label))
    # nearest resizing of 1050 rows to 1052 moves a class edge by at most one row
    agree = (lab == expected_train_ids(*GTA5_FULL, GTA5_SHORT)).mean(1)
    assert (agree < 1).sum() <= 2 * 6 and agree.mean() > 0.99


def test_base_sizes_are_the_papers_and_on_the_domain(real_trees):
    assert BASE_SIZES == {"gta5": (720, 1280), "cityscapes": (512, 1024), "synthia": (760, 1280)}
    for spec, hw in ((f"gta5:{real_trees.gta5}", (720, 1280)), (f"cityscapes:{real_trees.cityscapes}", (512, 1024)),
                     (f"synthia:{real_trees.synthia}", (760, 1280))):
        d = load_domain(spec)
        assert d.image_size == hw and all(s.base_size == hw for s in d.splits.values())
    from dalab.data.domains import Domain

    assert Domain("d", "x").image_size is None and Domain("d", "x").pair_check is None


def test_training_crops_come_from_images_at_the_base_size(real_trees):
    split = load_domain(f"gta5:{real_trees.gta5}")["train"]
    ds = split.dataset(train=True, crop=(720, 1280), scale=None, flip=False)   # the whole base-size image
    for i, (image, label) in enumerate(split.pairs):
        x, y = ds[i]
        assert tuple(x.shape) == (3, 720, 1280) and tuple(y.shape) == (720, 1280)
        want = np.asarray(Image.fromarray(label_at_image_size(image, label)).resize((1280, 720), Image.NEAREST))
        assert np.array_equal(y.numpy(), want) and marker(x) == number(image)
    native = split.dataset(train=True, crop=(256, 256), scale=None, size="native")
    assert native.size is None and split.dataset(train=True, size=None).size is None
    assert split.dataset(train=True, size=(360, 640)).size == (360, 640)
    with pytest.raises(DalabError, match="size must be 'base', 'native'"):
        split.dataset(train=True, size="huge")


def test_synthia_16_bit_labels_at_their_real_size(real_trees):
    d = load_domain(f"synthia:{real_trees.synthia}")
    assert d.pair_check.counts()["labels_resized"] == 0
    for split in d.splits.values():
        for x, y in split.loader(1, False, workers=0):
            k = marker(x[0])
            assert tuple(x.shape[-2:]) == SYNTHIA_HW
            assert np.array_equal(y[0].numpy(), expected_train_ids(*SYNTHIA_HW, k))


# ------------------------------------------------------------------------ evaluation at full resolution

class Road(torch.nn.Module):
    """Predicts road (train id 0) everywhere, on a coarse (8, 8) grid of logits for 2 classes."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x):
        return self.bias.view(1, 2, 1, 1).expand(len(x), 2, 8, 8)


def test_mixed_sizes_are_evaluated_in_batches_of_one_size_at_full_resolution(real_trees):
    from dalab.tasks import evaluate_batches

    d = load_domain(f"gta5:{real_trees.gta5}")
    split = d["train"]
    assert {hw for hw, _ in split.sizes} == {GTA5_FULL, GTA5_SMALL_HW}   # the fixture mixes both in train
    loader = split.loader(4, False, workers=0)                       # the image at the base size
    seen, road, side = [], 0, 0
    for x, y in loader:
        assert tuple(x.shape[-2:]) == (720, 1280)
        assert tuple(y.shape[-2:]) in (GTA5_FULL, GTA5_SMALL_HW)       # every label at its own full size
        for xi, yi in zip(x, y):
            k = marker(xi)
            seen.append(k)
            image = real_trees.gta5 / "images" / f"{k:05d}.png"
            want = label_at_image_size(image, real_trees.gta5 / "labels" / image.name)
            assert np.array_equal(yi.numpy(), want)
            road, side = road + int((want == TRAIN_ID["road"]).sum()), side + int((want == TRAIN_ID["sidewalk"]).sum())
    assert sorted(seen) == sorted(number(p[0]) for p in split.pairs)
    n_full = sum(hw == GTA5_FULL for hw, _ in split.sizes)
    assert len(loader) == -(-n_full // 4) + -(-(len(split) - n_full) // 4)   # batches of 4 within each size
    # scored at full resolution: a model of road everywhere is right on every road pixel of the full labels
    scores = evaluate_batches(Road(), split.loader(4, False, workers=2), "segmentation", 2)
    assert scores["pixel_acc"] == pytest.approx(road / (road + side), abs=1e-12)
    assert scores["per_class_iou"]["0"] == pytest.approx(road / (road + side), abs=1e-12)


def test_evaluation_over_ranks_covers_every_image_once(real_trees):
    split = load_domain(f"gta5:{real_trees.gta5}")["train"]
    shares = [[marker(x) for xb, _ in split.loader(2, False, workers=0, rank=r, world_size=2, size=(72, 128),
                                                   labels=False) for x in xb] for r in (0, 1)]
    again = [[marker(x) for xb, _ in split.loader(2, False, workers=0, rank=r, world_size=2, size=(72, 128),
                                                  labels=False) for x in xb] for r in (0, 1)]
    assert shares == again and not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(number(p[0]) for p in split.pairs)


# ------------------------------------------------------------------------ labels only where needed

def test_cityscapes_train_needs_no_labels(real_trees):
    c = load_domain(f"cityscapes:{real_trees.cityscapes}")
    train, val = c["train"], c["val"]
    assert not (real_trees.cityscapes / "gtFine" / "train").exists()
    assert not train.labelled and val.labelled and len(train) == 4 and len(val) == 2
    assert all(lab is None for _, lab in train.pairs) and "(the adaptation target, unlabelled)" in c.description
    x, y = next(iter(train.loader(2, True, workers=0, crop=(256, 512), seed=0)))
    assert tuple(x.shape) == (2, 3, 256, 512) and y.dtype == torch.uint8 and tuple(y.shape) == (2, 0, 0)
    e = pytest.raises(DataError, train.loader, 2, True, workers=0, crop=(256, 512), labels=True)
    assert "an unlabelled split (no label files)" in one_line(e) and "cityscapes:" in str(e.value)
    e = pytest.raises(DataError, train.loader, 2, False, workers=0)  # scoring needs labels: asked by default
    assert "cannot be scored" in one_line(e)
    x, y = next(iter(train.loader(2, False, workers=0, labels=False)))   # its images alone, e.g. for selection
    assert tuple(x.shape) == (2, 3, 512, 1024) and tuple(y.shape) == (2, 0, 0)
    x, y = next(iter(val.loader(2, False, workers=0)))               # scored at 1024x2048 from a 512x1024 input
    assert tuple(x.shape) == (2, 3, 512, 1024) and tuple(y.shape) == (2, *CITYSCAPES_HW)
    assert np.array_equal(y[0].numpy(), expected_train_ids(*CITYSCAPES_HW, marker(x[0])))
    from dalab.data.folder import check_pair

    g = load_domain(f"gta5:{real_trees.gta5}")
    check_pair(g, c)                                                 # an unlabelled target trains
    with pytest.raises(DataError, match="has no labels, so target-only"):
        check_pair(g, c, needs_target_labels=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_labels_false_never_opens_a_label_file(tmp_path, workers):
    root = write_gta5(tmp_path / "GTA5")
    split = load_seg_domain(f"gta5:{root}")["train"]
    kw = dict(workers=workers, seed=3, crop=(128, 256), scale=(0.5, 1.0))
    with_labels = [(x.clone(), y.clone()) for x, y in split.loader(2, True, **kw)]
    shutil.rmtree(root / "labels")                                   # opening any label now fails
    without = list(split.loader(2, True, labels=False, **kw))
    assert len(without) == len(with_labels) == 3
    for (x0, y0), (x1, y1) in zip(with_labels, without):
        assert torch.equal(x0, x1) and tuple(y0.shape) == (2, 128, 256) and tuple(y1.shape) == (2, 0, 0)
    ev = [x for x, _ in split.loader(3, False, labels=False, workers=workers)]
    assert sum(len(x) for x in ev) == len(split)
    with pytest.raises(DataError, match="file not found"):
        list(split.loader(2, False, workers=workers))                # reading labels does open them


# ------------------------------------------------------------------------ crops

def test_a_crop_larger_than_the_images_is_refused_before_reading(real_trees, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a file was read")

    monkeypatch.setattr(seg_real, "read_pair", no_reading)
    monkeypatch.setattr(seg_real, "read_image", no_reading)
    c = load_domain(f"cityscapes:{real_trees.cityscapes}")
    e = pytest.raises(DalabError, c["train"].loader, 2, True, workers=0, crop=(4000, 9000))
    assert one_line(e) == (f"cityscapes:{real_trees.cityscapes} train: crop 4000x9000 (HxW) is larger than the "
                           "512x1024 images it would be cut from (resized to size 512x1024); use a crop of at most "
                           "512x1024")
    e = pytest.raises(DalabError, c["train"].loader, 2, True, workers=0, crop=(513, 512))
    assert "larger than the 512x1024 images" in one_line(e)
    g = load_domain(f"gta5:{real_trees.gta5}")["train"]
    e = pytest.raises(DalabError, g.loader, 2, True, workers=0, crop=(1000, 1000), size="native")
    n_small = sum(hw == GTA5_SMALL_HW for hw, _ in g.sizes)
    assert f"larger than {n_small} of the 6 images at their own size (the smallest 720x1280)" in one_line(e)
    c["train"].loader(2, True, workers=0, crop=(512, 1024))           # the whole image: allowed
    g.loader(2, True, workers=0, crop=(720, 1280), size=None)


def test_crops_larger_than_a_scaled_down_image_are_padded_with_ignore(real_trees):
    val = load_domain(f"cityscapes:{real_trees.cityscapes}")["val"]
    ds = val.dataset(train=True, crop=(512, 1024), scale=(0.5, 0.5), flip=False)   # 256x512 in a 512x1024 crop
    x, y = ds[0]
    assert tuple(x.shape) == (3, 512, 1024) and (y[256:] == IGNORE).all() and (y[:, 512:] == IGNORE).all()
    assert (x[:, 256:] == 0).all() and not (y[:256, :512] == IGNORE).all()


# ------------------------------------------------------------------------ resuming the stream

@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_training_loader_yields_the_same_crops(real_trees, workers):
    split = load_domain(f"gta5:{real_trees.gta5}")["train"]           # 6 images: 3 batches an epoch
    kw = dict(workers=workers, seed=11, crop=(96, 160), scale=(0.5, 1.0), size=(144, 256))
    ref = split.loader(2, True, **kw).forever()
    stream = [next(ref) for _ in range(5)]
    first = split.loader(2, True, **kw)
    it = first.forever()
    for _ in range(4):
        next(it)
    state = first.state_dict()
    assert state == {"epoch": 1, "batch": 1}
    resumed = split.loader(2, True, **kw)
    resumed.load_state_dict(state)
    x, y = next(resumed.forever())
    assert torch.equal(x, stream[4][0]) and torch.equal(y, stream[4][1])
