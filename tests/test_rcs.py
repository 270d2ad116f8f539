"""Rare-class sampling (dalab.data.rcs): probabilities, eligible images, draws, crops and the cache of
per-file class counts, on hand-made label maps."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from dalab.data import rcs
from dalab.errors import DataError


def test_class_counts_skip_ignore_and_out_of_range_values():
    y = np.array([[[0, 0, 1], [255, 2, 7]], [[1, 1, 1], [1, 255, 255]]], np.uint8)
    c = rcs.class_counts(torch.from_numpy(y), 3)
    assert c.tolist() == [[2, 1, 1], [0, 4, 0]] and c.dtype == np.int64


def test_probabilities_are_a_tempered_softmax_of_one_minus_the_frequencies():
    counts = np.array([[50, 30, 20, 0]])  # f = 0.5, 0.3, 0.2, 0 (class 3 never occurs)
    f = rcs.class_frequencies(counts)
    assert np.allclose(f, [0.5, 0.3, 0.2, 0.0])
    p = rcs.class_probabilities(f, 0.01)
    z = np.exp([50.0, 70.0, 80.0])  # (1 - f) / 0.01
    assert np.allclose(p[:3], z / z.sum()) and p[3] == 0.0
    assert p[2] / p[1] == pytest.approx(math.e ** 10)  # 10 points rarer -> e^10 times as likely at T = 0.01
    flat = rcs.class_probabilities(f, 1e6)  # a huge temperature: uniform over the classes that occur
    assert np.allclose(flat, [1 / 3, 1 / 3, 1 / 3, 0.0])
    only = rcs.class_probabilities(f, 0.01, allowed=np.array([True, True, False, True]))
    assert only[2] == 0 and np.allclose(only[:2], z[:2] / z[:2].sum())
    with pytest.raises(DataError):
        rcs.class_probabilities(np.zeros(3))


def test_thresholds_scale_with_the_area_from_the_published_sizes():
    # 3000 pixels on GTA5's 1052-px label files; 0.5 * 3000 on DAFormer's 512-px crops
    assert rcs.min_pixels_for(1052) == pytest.approx(3000)
    assert rcs.min_pixels_for(48) == pytest.approx(3000 * (48 / 1052) ** 2)  # 6.2 on the scenes
    assert rcs.min_crop_pixels((512, 512)) == pytest.approx(1500)
    # MIC's HRDA config: min_crop_ratio=2.0 on 1024-px crops, i.e. 0.5 * 2^2
    assert rcs.min_crop_pixels((1024, 1024)) == pytest.approx(2.0 * 3000)
    assert rcs.min_crop_pixels((48, 96)) == pytest.approx(1500 * (48 / 512) ** 2)


def test_only_images_with_more_than_min_pixels_of_a_class_are_drawn_for_it():
    counts = np.array([[4000, 3000, 0],     # class 1 exactly at the threshold: not eligible (strictly more)
                       [5000, 3001, 0],
                       [100, 0, 3500],
                       [9000, 0, 2999]])
    s = rcs.RareClassSampler(counts, label_sides=1052)
    assert [v.tolist() for v in s.images_with] == [[0, 1, 3], [1], [2]]
    idx, cls = s.draw(4000, torch.Generator().manual_seed(0))
    assert idx.dtype == torch.int64 and cls.dtype == torch.int64 and len(idx) == 4000
    thr = s.min_pixels[idx.numpy()]
    assert (counts[idx.numpy(), cls.numpy()] > thr).all()
    # the classes come out with their probabilities
    emp = np.bincount(cls.numpy(), minlength=3) / 4000
    assert np.abs(emp - s.probs).max() < 0.03
    # the images of a class come out uniformly (a high temperature draws the frequent class 0 too)
    idx, cls = rcs.RareClassSampler(counts, 1052, temperature=1e6).draw(3000, torch.Generator().manual_seed(2))
    zero = np.bincount(idx[cls == 0].numpy(), minlength=4) / int((cls == 0).sum())
    assert np.abs(zero - [1 / 3, 1 / 3, 0, 1 / 3]).max() < 0.05


def test_a_class_without_an_eligible_image_is_left_out_and_the_rest_renormalised():
    counts = np.array([[900, 5, 0], [800, 0, 2]])  # at side 48 the threshold is 6.2: classes 1, 2 too small
    s = rcs.RareClassSampler(counts, label_sides=48)
    assert s.probs.tolist() == [1.0, 0.0, 0.0]
    _, cls = s.draw(50, torch.Generator().manual_seed(1))
    assert (cls == 0).all()


def test_resident_labels_and_determinism_under_a_seed():
    y = np.zeros((20, 48, 96), np.uint8)
    y[:, 40:] = 1
    y[3, :10, :10] = 2   # a rare class in two images only (100 pixels each)
    y[11, :10, :10] = 2
    y[:, 0, :] = 255
    s = rcs.RareClassSampler.from_labels(torch.from_numpy(y), 3)
    assert s.images_with[2].tolist() == [3, 11]
    assert s.probs[2] > s.probs[1] > s.probs[0]
    a = s.draw(300, torch.Generator().manual_seed(7))
    b = s.draw(300, torch.Generator().manual_seed(7))
    c = s.draw(300, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    # the rare class, 2 % of the images, is drawn most of the time
    assert (a[1] == 2).float().mean() > 0.5 and set(a[0][a[1] == 2].tolist()) <= {3, 11}
    table = s.class_table(["a", "b", "c"])
    assert set(table) == {"a", "b", "c"} and table["c"][2] == 2


def test_streamed_sampler_yields_index_epoch_class_per_pass_and_shards_ranks():
    counts = np.array([[900, 50, 0], [800, 0, 40], [10, 30, 30]])
    s = rcs.RareClassSampler(counts, label_sides=48)
    ds = rcs.RareClassDataSampler(s, num_samples=6, seed=3)
    first, second = list(ds), list(ds)
    assert len(first) == len(ds) == 6 and {e for _, e, _ in first} == {0} and {e for _, e, _ in second} == {1}
    assert all(counts[i, c] > s.min_pixels[i] for i, _, c in first + second)
    ds.set_epoch(0)
    assert list(ds) == first  # an epoch's draws depend on (seed, epoch) alone
    assert list(rcs.RareClassDataSampler(s, 6, seed=4)) != first
    r0 = list(rcs.RareClassDataSampler(s, 6, seed=3, rank=0, world_size=2))
    r1 = list(rcs.RareClassDataSampler(s, 6, seed=3, rank=1, world_size=2))
    both = rcs.RareClassDataSampler(s, 12, seed=3).draws(0)
    assert [i for i, _, _ in r0] == both[0][0::2].tolist() and [i for i, _, _ in r1] == both[0][1::2].tolist()

    class Keys(torch.utils.data.Dataset):  # what a dataset of files receives: (index, epoch, class)
        def __getitem__(self, key):
            return key

    loader = torch.utils.data.DataLoader(Keys(), sampler=rcs.RareClassDataSampler(s, 4, seed=0), batch_size=2,
                                         collate_fn=lambda items: items)
    batches = list(loader)
    assert len(batches) == 2 and all(len(k) == 3 for b in batches for k in b)


def _corner_image(size=64, patch=20, cls=5):
    lab = np.zeros((size, size), np.uint8)
    lab[-patch:, -patch:] = cls
    img = np.stack([lab * 10] * 3, -1).astype(np.uint8)
    return img, lab


def test_crop_retries_bring_the_class_into_the_crop():
    img, lab = _corner_image()
    crop, need = (32, 32), 20  # the 20x20 class patch in a corner: about 31 % of the crops hold > 20 of it
    hits = {}
    for retries in (0, 10):
        rng = np.random.default_rng(0)
        got = [np.count_nonzero(rcs.crop_with_class(img, lab, crop, 5, need, rng, retries)[1] == 5) > need
               for _ in range(300)]
        hits[retries] = np.mean(got)
    assert hits[0] < 0.45 and hits[10] > 0.9  # 1 - 0.69^11 = 0.98 with ten retries
    a_img, a_lab = rcs.crop_with_class(img, lab, crop, 5, need, np.random.default_rng(4))
    b_img, b_lab = rcs.crop_with_class(img, lab, crop, 5, need, np.random.default_rng(4))
    assert a_img.shape == (32, 32, 3) and a_lab.shape == (32, 32)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert np.array_equal(a_img[..., 0], a_lab * 10)  # image and label cropped together
    # a class that no crop can hold: 11 crops drawn, the last one returned
    rng = np.random.default_rng(1)
    out = rcs.crop_with_class(img, lab, crop, 9, 0, rng)
    assert out[1].shape == (32, 32) and rng.integers(0, 10 ** 9) == _nth_draw(1, 22)
    with pytest.raises(ValueError, match="pad it first"):
        rcs.crop_with_class(img, lab, (80, 80), 5, 0, np.random.default_rng(0))


def _nth_draw(seed: int, skip: int) -> int:
    rng = np.random.default_rng(seed)
    for _ in range(skip):
        rng.integers(0, 33)
    return int(rng.integers(0, 10 ** 9))


def test_file_counts_are_cached_and_recounted_when_a_file_changes(tmp_path):
    labels = []
    for i in range(3):
        y = np.full((6, 10), i, np.uint8)
        y[0] = 255
        f = tmp_path / "labels" / f"{i}.npy"
        f.parent.mkdir(exist_ok=True)
        np.save(f, y)
        labels.append(f)
    reads = []

    def reader(p):
        reads.append(p)
        return np.load(p)

    cache = tmp_path / "cache"
    st = rcs.count_class_pixels_files(labels, 4, reader, "npy", cache_dir=cache, progress=False)
    assert st.counts.tolist() == [[50, 0, 0, 0], [0, 50, 0, 0], [0, 0, 50, 0]]
    assert st.shapes.tolist() == [[6, 10]] * 3 and len(reads) == 3
    files = list(cache.glob("class-pixels-*.npz"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    again = rcs.count_class_pixels_files(labels, 4, reader, "npy", cache_dir=cache, progress=False)
    assert len(reads) == 3 and np.array_equal(again.counts, st.counts)  # read from the cache
    np.save(labels[2], np.full((6, 10), 3, np.uint8))
    os.utime(labels[2], ns=(1, 1))  # a rewritten file (a different modification time)
    changed = rcs.count_class_pixels_files(labels, 4, reader, "npy", cache_dir=cache, progress=False)
    assert len(reads) == 6 and changed.counts[2].tolist() == [0, 0, 0, 60]
    # another reader name or class count is another cache entry; a damaged cache file is counted again
    rcs.count_class_pixels_files(labels, 5, reader, "npy", cache_dir=cache, progress=False)
    assert len(reads) == 9
    for f in cache.glob("class-pixels-*.npz"):
        f.write_bytes(b"not an npz")
    rcs.count_class_pixels_files(labels, 4, reader, "npy", cache_dir=cache, progress=False)
    assert len(reads) == 12
    s = rcs.RareClassSampler.from_counts(changed)
    assert s.min_pixels == pytest.approx(rcs.min_pixels_for(6))
    with pytest.raises(DataError, match="cannot read"):
        rcs.count_class_pixels_files([tmp_path / "missing.npy"], 4, reader, "npy", cache_dir=cache, progress=False)
