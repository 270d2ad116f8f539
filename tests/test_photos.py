"""Photos read from their files: decoding any PIL mode, the benchmarks' distributed layouts, the
standard transforms, the header check and the decode-failure substitute.

Every fixture is written here, in the exact layout of the dataset it stands for, with photos of
many sizes and kinds (grey, palette with transparency, RGBA, CMYK and EXIF-rotated JPEGs, a 16-bit
PNG); each class has its own colour, so a label can be checked against the pixels it comes with.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dalab.data import load_domain
from dalab.data.domains import PREFIXES, domain_task
from dalab.data.folder import check_pair
from dalab.data.images import check_headers, decode_photo, load_image, read_photo
from dalab.data.photo_transforms import (center_crop_box, default_resize, eval_transform, random_resized_crop_box,
                                         resized_size, train_transform)
from dalab.data.photos import PhotoFiles, PhotoSplit, load_photo_domain, plan_folder
from dalab.errors import DalabError, DataError

COLOURS = {"bike": (220, 30, 30), "mug": (30, 200, 40), "pen": (40, 50, 230)}
CLASSES = tuple(sorted(COLOURS))
SIZES = [(300, 200), (640, 480), (1200, 900), (200, 300), (500, 375), (900, 1200)]
KINDS = ["rgb", "grey", "cmyk", "exif", "palette", "rgba", "png16"]


def _grey(c) -> int:
    return int(round(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]))


def write_photo(path, colour, size, kind="rgb", seed=0):
    """A photo of ``size`` (width, height) whose centre is ``colour`` (a class), stored as ``kind``."""
    w, h = size
    rng = np.random.default_rng(seed)
    a = np.empty((h, w, 3), np.uint8)
    a[:] = colour
    a = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)  # sensor noise
    a[: h // 10] = 0  # a dark band at the top, so orientation shows
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(a)
    if kind == "rgb":
        img.save(path, quality=90)
    elif kind == "grey":
        img.convert("L").save(path, quality=90)
    elif kind == "cmyk":
        img.convert("CMYK").save(path, "JPEG", quality=90)
    elif kind == "exif":  # stored rotated a quarter turn; the orientation tag (6) turns it back
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=90, exif=exif)
    elif kind == "palette":
        p = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        p.info["transparency"] = 0
        p.save(path, "PNG", transparency=0)
    elif kind == "rgba":
        rgba = np.dstack([a, rng.integers(0, 256, (h, w), dtype=np.uint8)])
        Image.fromarray(rgba, "RGBA").save(path, "PNG")
    elif kind == "png16":
        g = np.asarray(img.convert("L"), np.uint16) * 257
        Image.fromarray(g).save(path, "PNG")
    else:
        raise ValueError(kind)
    return path


def ext(kind: str) -> str:
    return "png" if kind in ("palette", "rgba", "png16") else "jpg"


def label_of(x: torch.Tensor) -> int:
    """The class whose colour (or its grey) is nearest to the centre of a (3, S, S) image."""
    s = x.shape[-1]
    c = x[:, s // 3: 2 * s // 3, s // 3: 2 * s // 3].float().mean((1, 2)).numpy()
    refs = [(i, np.array(col, float)) for i, col in enumerate(COLOURS[k] for k in CLASSES)]
    refs += [(i, np.full(3, _grey(COLOURS[k]), float)) for i, k in enumerate(CLASSES)]
    return min(refs, key=lambda r: np.abs(r[1] - c).sum())[0]


def fill_classes(root, n_per_class=3, kinds=KINDS, offset=0):
    """``root/<class>/<i>.<ext>`` for every class, in a mix of sizes and kinds."""
    files = []
    for k, cls in enumerate(CLASSES):
        for i in range(n_per_class):
            j = offset + k * n_per_class + i
            kind = kinds[j % len(kinds)]
            files.append(write_photo(root / cls / f"{cls}_{i}.{ext(kind)}", COLOURS[cls], SIZES[j % len(SIZES)],
                                     kind, seed=j))
    return files


def check_labels(domain, split="test", size=64):
    """Every item's label matches its pixels' colour; returns the labels."""
    loader = domain[split].loader(4, False, workers=0, image_size=size)
    seen = []
    for x, y in loader:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, size, size)
        for xi, yi in zip(x, y):
            assert label_of(xi) == int(yi)
            seen.append(int(yi))
    assert loader.decode_failures == {} and loader.substituted == 0
    return seen


@pytest.fixture(scope="module")
def office31(tmp_path_factory):
    root = tmp_path_factory.mktemp("office31")
    for n, dom in enumerate(("amazon", "webcam")):
        fill_classes(root / dom / "images", 3, offset=n)
    return root


# ------------------------------------------------------------------------ decoding

@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_photo_decodes_to_rgb_at_its_size(tmp_path, kind):
    f = write_photo(tmp_path / f"x.{ext(kind)}", COLOURS["mug"], (320, 240), kind)
    a = read_photo(f)
    assert a.dtype == np.uint8 and a.shape == (240, 320, 3)  # upright, the EXIF one too
    centre = a[100:140, 140:180].reshape(-1, 3).mean(0)
    want = np.full(3, _grey(COLOURS["mug"])) if kind in ("grey", "png16") else np.array(COLOURS["mug"])
    assert np.abs(centre - want).max() < 12
    assert a[:20].mean() < 20  # the dark band stays at the top: the rotation was undone
    assert load_image(f, 28).shape == (28, 28, 3)  # the digits path reads it too


def test_16_bit_is_scaled_by_its_range_not_truncated_nor_stretched(tmp_path):
    Image.fromarray(np.full((10, 12), 1000, np.uint16)).save(tmp_path / "dark.png")
    a = read_photo(tmp_path / "dark.png")
    assert (a == round(1000 * 255 / 65535)).all()  # 4: not 232 (low byte) nor 255 (its own maximum)
    Image.fromarray(np.full((10, 12), 65535, np.uint16)).save(tmp_path / "white.png")
    assert (read_photo(tmp_path / "white.png") == 255).all()


def test_exif_orientation_turns_the_stored_pixels(tmp_path):
    f = write_photo(tmp_path / "r.jpg", COLOURS["pen"], (300, 200), "exif")
    with Image.open(f) as raw:
        assert raw.size == (200, 300)  # stored on its side
    assert read_photo(f).shape == (200, 300, 3)


def test_unreadable_files_are_one_line_errors_naming_them(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"junk.jpg: not a readable image") as e:
        read_photo(tmp_path / "junk.jpg")
    assert "\n" not in str(e.value)
    good = write_photo(tmp_path / "t.jpg", COLOURS["bike"], (640, 480))
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:2000])
    with pytest.raises(DataError, match="trunc.jpg: not a readable image"):
        decode_photo(tmp_path / "trunc.jpg")
    with pytest.raises(DataError, match="nope.jpg: file not found"):
        read_photo(tmp_path / "nope.jpg")


def test_a_large_jpeg_is_drafted_but_never_below_the_side_asked(tmp_path):
    f = write_photo(tmp_path / "big.jpg", COLOURS["bike"], (1200, 900))
    assert decode_photo(f).size == (1200, 900)
    small = decode_photo(f, min_side=256)
    assert min(small.size) >= 256 and small.size[0] < 1200


def test_header_check_counts_unreadable_files_and_strict_raises(tmp_path):
    ok = [write_photo(tmp_path / f"{i}.jpg", COLOURS["mug"], (300, 200), seed=i) for i in range(3)]
    (tmp_path / "junk.png").write_bytes(b"\x89PNG but not")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(ok[0].read_bytes()[:1500])  # its header is fine: caught when decoded, not here
    bad = check_headers([*ok, tmp_path / "junk.png", trunc, tmp_path / "gone.jpg"])
    assert [p.name for p, _ in bad] == ["junk.png", "gone.jpg"]
    assert all("\n" not in why for _, why in bad)
    with pytest.raises(DataError, match=r"junk.png: not a readable image .* \(and 1 more unreadable images\)"):
        check_headers([*ok, tmp_path / "junk.png", tmp_path / "gone.jpg"], strict=True)
    assert check_headers(ok, strict=True) == []


# ------------------------------------------------------------------------ transforms

def test_transform_sizes_and_the_resize_rule():
    assert default_resize(224) == 256 and default_resize(64) == 73
    assert resized_size(300, 200, 256) == (384, 256) and resized_size(200, 300, 256) == (256, 384)
    assert resized_size(300, 200, 256, "square") == (256, 256)
    assert center_crop_box(384, 256, 224) == (80, 16, 224, 224)
    img = Image.fromarray(np.zeros((480, 640, 3), np.uint8))
    for size in (64, 224):
        assert train_transform(img, np.random.default_rng(0), size).shape == (3, size, size)
        assert eval_transform(img, size).shape == (3, size, size)
    with pytest.raises(DalabError, match="resize .* must be at least the image size"):
        eval_transform(img, 224, resize=200)


def test_random_resized_crop_box_follows_torchvisions_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y, w, h = random_resized_crop_box(384, 256, rng)
        assert 0 <= x and 0 <= y and x + w <= 384 and y + h <= 256
        assert 0.08 * 384 * 256 * 0.9 <= w * h <= 384 * 256
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # nothing fits a 1000 x 10 strip: the centre crop clamped to the largest ratio
    assert random_resized_crop_box(1000, 10, rng, scale=(0.9, 1.0)) == (493, 0, 13, 10)


def test_eval_transform_is_resize_then_centre_crop():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    img = Image.fromarray(a).resize((400, 300), Image.BILINEAR)  # smooth content: resamplings agree
    out = eval_transform(img, 64).transpose(1, 2, 0).astype(int)
    two_step = img.resize((97, 73), Image.BILINEAR)  # shorter side 300 -> 73, 400 -> int(73 * 400 / 300)
    l, t, _, _ = center_crop_box(97, 73, 64)
    ref = np.asarray(two_step, int)[t:t + 64, l:l + 64]
    assert np.abs(out - ref).mean() < 4


def test_train_transform_is_seeded_per_item_and_flips_half_the_time():
    a = np.zeros((100, 100, 3), np.uint8)
    a[:, :50] = (255, 0, 0)  # red left half, blue right half
    a[:, 50:] = (0, 0, 255)
    img = Image.fromarray(a)
    outs = [train_transform(img, np.random.default_rng([0, 0, i]), 32, scale=(1, 1), ratio=(1, 1))
            for i in range(40)]
    again = [train_transform(img, np.random.default_rng([0, 0, i]), 32, scale=(1, 1), ratio=(1, 1))
             for i in range(40)]
    assert all(np.array_equal(o, g) for o, g in zip(outs, again))
    flipped = [bool(o[2, :, 0].mean() > o[0, :, 0].mean()) for o in outs]  # blue on the left
    assert 10 <= sum(flipped) <= 30
    other_epoch = train_transform(img, np.random.default_rng([0, 1, 0]), 32)
    assert other_epoch.shape == (3, 32, 32)


# ------------------------------------------------------------------------ the layouts

def test_office31_layout_labels_and_protocol(office31):
    d = load_domain(f"office31:{office31 / 'amazon'}")
    assert d.task == "classification" and d.classes == CLASSES and d.num_classes == 3
    assert set(d.splits) == {"train", "test"} and len(d["train"]) == len(d["test"]) == 9
    assert isinstance(d["train"], PhotoSplit) and d["train"].streamed and d["train"].labelled
    assert "every image of the domain trains" in d.protocol and d.protocol in d.description
    assert "the distributed amazon has 2,817 images in 31 classes" in d.description
    assert sorted(check_labels(d)) == [0] * 3 + [1] * 3 + [2] * 3
    w = load_domain(f"office31:{office31 / 'webcam'}")
    check_pair(d, w)  # same classes
    with pytest.raises(DataError, match="tensors"):
        d["train"].tensors()


def test_officehome_layout(tmp_path):
    fill_classes(tmp_path / "OfficeHome" / "Art", 2, kinds=["palette", "rgba", "png16", "rgb"])
    d = load_domain(f"officehome:{tmp_path / 'OfficeHome' / 'Art'}")
    assert d.classes == CLASSES and len(d["train"]) == 6
    assert sorted(check_labels(d)) == [0, 0, 1, 1, 2, 2]


def test_visda_layout(tmp_path):
    for split, kinds in (("train", ["png16", "rgb"]), ("validation", ["rgb", "cmyk", "exif"])):
        d = tmp_path / "visda" / split
        files = fill_classes(d, 2, kinds=kinds)
        lines = [f"{f.relative_to(d).as_posix()} {CLASSES.index(f.parent.name)}" for f in files]
        (d / "image_list.txt").write_text("\n".join(lines[::-1]) + "\n\n")
    src = load_domain(f"visda:{tmp_path / 'visda' / 'train'}")
    tgt = load_domain(f"visda:{tmp_path / 'visda' / 'validation'}")
    assert src.classes == tgt.classes == CLASSES
    assert "synthetic renderings" in src.description and "real photos" in tgt.description
    assert sorted(check_labels(tgt)) == [0, 0, 1, 1, 2, 2]
    check_pair(src, tgt)


def test_domainnet_layout_and_its_split_lists(tmp_path):
    root = tmp_path / "domainnet"
    for n, dom in enumerate(("clipart", "real")):
        files = fill_classes(root / dom, 3, offset=n)
        rel = [f"{f.relative_to(root).as_posix()} {CLASSES.index(f.parent.name)}" for f in files]
        (root / f"{dom}_train.txt").write_text("\n".join(rel[i] for i in range(len(rel)) if i % 3) + "\n")
        (root / f"{dom}_test.txt").write_text("\n".join(rel[i] for i in range(len(rel)) if i % 3 == 0) + "\n")
    d = load_domain(f"domainnet:{root / 'real'}")
    assert d.classes == CLASSES and len(d["train"]) == 6 and len(d["test"]) == 3
    assert {f.name for f in d["train"].files}.isdisjoint({f.name for f in d["test"].files})
    assert sorted(check_labels(d, "test")) == [0, 1, 2] and sorted(check_labels(d, "train")) == [0, 0, 1, 1, 2, 2]
    assert "scored on its test list" in d.protocol


def test_image_lists_tllib_layout_and_two_lists(office31, tmp_path):
    lst = office31 / "image_list"
    lst.mkdir(exist_ok=True)
    files = sorted((office31 / "amazon" / "images").rglob("*.*"))
    lines = [f"{f.relative_to(office31).as_posix()} {CLASSES.index(f.parent.name)}" for f in files]
    (lst / "amazon.txt").write_text("\n".join(lines) + "\n")
    d = load_domain(f"imagelist:{lst / 'amazon.txt'}")
    assert d.classes == CLASSES and len(d["train"]) == len(d["test"]) == 9  # paths from the list's parent
    assert sorted(check_labels(d)) == [0] * 3 + [1] * 3 + [2] * 3
    (lst / "a_train.txt").write_text("\n".join(lines[:6]) + "\n")
    (lst / "a_test.txt").write_text("\n".join(lines[6:]) + "\n")
    two = load_domain(f"imagelist:{lst / 'a_train.txt'},a_test.txt")
    assert len(two["train"]) == 6 and len(two["test"]) == 3 and "a_test.txt" in two.protocol


def test_bad_layouts_are_one_line_errors(office31, tmp_path):
    cases = []
    with pytest.raises(DataError, match="not an Office-31 domain folder: expected images/<class>") as e:
        load_domain(f"office31:{office31}")
    cases.append(e)
    with pytest.raises(DataError, match="Office-31's layout") as e:
        load_domain(f"officehome:{office31 / 'amazon'}")
    cases.append(e)
    empty = tmp_path / "oh" / "Art"
    fill_classes(empty, 1)
    (empty / "zebra").mkdir()
    with pytest.raises(DataError, match=r"Art/zebra: an empty class folder") as e:
        load_domain(f"officehome:{empty}")
    cases.append(e)
    with pytest.raises(DataError, match="expected image_list.txt") as e:
        load_domain(f"visda:{empty}")
    cases.append(e)
    with pytest.raises(DataError, match="expected Art_train.txt and Art_test.txt") as e:
        load_domain(f"domainnet:{empty}")
    cases.append(e)
    lst = tmp_path / "list.txt"
    lst.write_text("bike/bike_0.jpg 0\nbike/missing.jpg 0\n")
    (tmp_path / "bike").mkdir()
    write_photo(tmp_path / "bike" / "bike_0.jpg", COLOURS["bike"], (300, 200))
    with pytest.raises(DataError, match=r"list.txt: 1 listed file missing under .*bike/missing.jpg") as e:
        load_domain(f"imagelist:{lst}")
    cases.append(e)
    lst.write_text("bike/bike_0.jpg zero\n")
    with pytest.raises(DataError, match=r"list.txt:1: expected 'relative/path label'") as e:
        load_domain(f"imagelist:{lst}")
    cases.append(e)
    with pytest.raises(DataError, match="office31: needs a path") as e:
        load_domain("office31:")
    cases.append(e)
    assert all("\n" not in str(c.value) for c in cases)


def test_source_and_target_classes_must_match(office31, tmp_path):
    other = tmp_path / "webcam" / "images"
    fill_classes(other, 1)
    (other / "mug").rename(other / "cup")
    src = load_domain(f"office31:{office31 / 'amazon'}")
    tgt = load_domain(f"office31:{tmp_path / 'webcam'}")
    with pytest.raises(DataError, match="different classes"):
        check_pair(src, tgt)


def test_prefixes_are_registered_with_their_task():
    for kind in ("folder", "office31", "officehome", "visda", "domainnet", "imagelist"):
        assert kind in PREFIXES and domain_task(f"{kind}:/x") == "classification"
    assert domain_task("gta5:/x") == "segmentation" and domain_task("mnist") == "classification"


# ------------------------------------------------------------------------ unreadable files

def test_unreadable_files_are_skipped_counted_or_refused(tmp_path):
    root = tmp_path / "office31" / "dslr"
    fill_classes(root / "images", 3)
    (root / "images" / "pen" / "junk.jpg").write_bytes(b"garbage")
    d = load_domain(f"office31:{root}")
    assert [p.name for p, _ in d.skipped] == ["junk.jpg"] and len(d["train"]) == 9
    assert "1 unreadable file left out" in d.description
    with pytest.raises(DataError, match="junk.jpg: not a readable image"):
        load_domain(f"office31:{root}", strict=True)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_that_fails_mid_run_is_replaced_and_counted(tmp_path, workers):
    files = [write_photo(tmp_path / f"{i}.jpg", list(COLOURS.values())[i % 3], (320, 240), seed=i) for i in range(6)]
    files[2].write_bytes(files[2].read_bytes()[:1500])  # truncated after the header was checked
    split = PhotoSplit([(f, i % 3) for i, f in enumerate(files)], True, "six")
    loader = split.loader(3, False, workers=workers, image_size=32)
    ys = [y.tolist() for _, y in loader]
    assert ys == [[0, 1, 0], [0, 1, 2]]  # item 2 became item 3 (label 0), with that item's label
    assert list(loader.decode_failures) == [files[2]] and loader.substituted == 1
    list(loader)  # the next epoch meets it again: counted again, named once
    assert loader.substituted == 2 and len(loader.decode_failures) == 1
    train = split.loader(2, True, workers=workers, image_size=32, seed=3)
    batches = [b for b in train]
    assert len(batches) == 3 and train.substituted == 1


def test_nothing_readable_is_an_error(tmp_path):
    f = write_photo(tmp_path / "a.jpg", COLOURS["bike"], (300, 200))
    f.write_bytes(f.read_bytes()[:1000])
    data = PhotoFiles([(f, 0)], train=False, image_size=32)
    with pytest.raises(DataError, match="no other file of its split"):
        data[0]


def test_batches_do_not_depend_on_the_workers(office31):
    d = load_domain(f"office31:{office31 / 'amazon'}")
    a = [(x.clone(), y.clone()) for x, y in d["train"].loader(3, True, workers=0, image_size=48, seed=5)]
    b = [(x.clone(), y.clone()) for x, y in d["train"].loader(3, True, workers=2, image_size=48, seed=5)]
    assert len(a) == 3 and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    loader = d["train"].loader(3, True, workers=0, image_size=48, seed=5)
    first, second = next(iter(loader))[0], next(iter(loader))[0]  # epoch 0, then epoch 1
    assert not torch.equal(first, second)


# ------------------------------------------------------------------------ folder: resident or streamed

def test_folder_of_photos_is_streamed_and_small_images_stay_resident(tmp_path):
    photos = tmp_path / "shop"
    fill_classes(photos, 3)
    d = load_domain(f"folder:{photos}", tmp_path / "data")
    assert d["train"].streamed and "streamed at 224 px: photos (median shorter side" in d.description
    assert sum(len(d[s]) for s in ("train", "val", "test")) == 9
    check_labels(d, "train")
    small = tmp_path / "digits"
    for k in range(10):
        for i in range(3):
            (small / str(k)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((28, 28), 20 * k, np.uint8)).save(small / str(k) / f"{i}.png")
    r = load_domain(f"folder:{small}", tmp_path / "data")
    assert not r["train"].streamed and r["train"].x.shape[1:] == (28, 28, 3)
    assert "held in memory at 28x28: small images (median shorter side 28 px" in r.description
    # the same split either way: streamed at a size asked for, resident at 28
    s = load_photo_domain(f"folder:{small}", tmp_path / "data", image_size=64)
    assert s["train"].streamed and "--image-size 64" in s.description
    for split in ("train", "val", "test"):
        assert s[split].labels.tolist() == r[split].y.tolist()
    from dalab.data.photo_layouts import folder

    assert not plan_folder(folder(photos), image_size=28).streamed


def test_flat_folder_is_an_unlabelled_streamed_target(tmp_path):
    flat = tmp_path / "phone"
    for i in range(5):
        write_photo(flat / f"IMG_{i:04d}.jpg", COLOURS["pen"], SIZES[i], "exif" if i % 2 else "rgb", seed=i)
    d = load_domain(f"folder:{flat}", tmp_path / "data")
    assert d["train"].streamed and not d["train"].labelled and len(d["train"]) == len(d["test"]) == 5
    x, y = next(iter(d["test"].loader(5, False, workers=0, image_size=32)))
    assert x.shape == (5, 3, 32, 32) and (y == -1).all()
