"""Property-based tests (hypothesis) of the data transforms and the MNIST-M builder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dalab.data.domains import Split
from dalab.data.images import load_image, to_model_input
from dalab.data.mnistm import blend, build_mnistm, random_patches

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sizes = st.integers(1, 6)
u8 = st.integers(0, 255)


@st.composite
def digits_and_patches(draw):
    n, h, w = draw(sizes), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    d = draw(arrays(np.uint8, (n, h, w), elements=u8))
    p = draw(arrays(np.uint8, (n, h, w, 3), elements=u8))
    return d, p


@st.composite
def photos(draw, min_size=28):
    k = draw(st.integers(1, 3))
    out = []
    for _ in range(k):
        h, w = draw(st.integers(min_size, min_size + 12)), draw(st.integers(min_size, min_size + 12))
        seed = draw(st.integers(0, 2**31 - 1))
        out.append(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return out


@FAST
@given(digits_and_patches())
def test_blend_is_patch_off_the_digit_and_its_inverse_on_it(dp):
    d, p = dp
    out = blend(d, p)
    assert out.shape == p.shape and out.dtype == np.uint8
    on = d > 0
    assert np.array_equal(out[~on], p[~on])
    assert np.array_equal(out[on], 255 - p[on])


@FAST
@given(photos(), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_random_patches_are_windows_of_the_photos(ph, n, seed):
    out = random_patches(ph, n, np.random.default_rng(seed), size=28)
    assert out.shape == (n, 28, 28, 3) and out.dtype == np.uint8
    for patch in out:
        found = False
        for photo in ph:
            h, w = photo.shape[:2]
            for y in range(h - 27):
                for x in range(w - 27):
                    if np.array_equal(photo[y:y + 28, x:x + 28], patch):
                        found = True
                        break
                if found:
                    break
            if found:
                break
        assert found, "a patch is not a 28x28 window of any photo"


@FAST
@given(st.integers(1, 6), photos(), st.integers(0, 2**32 - 1), st.integers(0, 2**31 - 1))
def test_build_mnistm_is_deterministic_and_a_blend(n, ph, seed, dseed):
    d = np.random.default_rng(dseed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    d[d < 128] = 0
    a = build_mnistm(d, ph, seed)
    assert a.shape == (n, 28, 28, 3) and a.dtype == np.uint8
    assert np.array_equal(a, build_mnistm(d.copy(), ph, seed))  # same seed -> same images
    bg = build_mnistm(np.zeros_like(d), ph, seed)  # the crops chosen do not depend on the digits
    on = d > 0
    assert np.array_equal(a[~on], bg[~on]) and np.array_equal(a[on], 255 - bg[on])


def test_build_mnistm_depends_on_the_seed():
    d = np.zeros((50, 28, 28), np.uint8)
    ph = [np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    assert not np.array_equal(build_mnistm(d, ph, 0), build_mnistm(d, ph, 1))


@FAST
@given(st.integers(0, 5), st.integers(1, 9), st.integers(1, 9), st.sampled_from([None, 1, 3]),
       st.integers(0, 2**31 - 1), st.one_of(st.none(), st.integers(1, 7)))
def test_split_tensors_shape_dtype_and_grey_repeat(n, h, w, c, seed, limit):
    shape = (n, h, w) if c is None else (n, h, w, c)
    x = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % 10
    tx, ty = Split(x, y).tensors(limit=limit)
    m = n if limit is None else min(n, limit)
    assert tuple(tx.shape) == (m, 3, h, w) and str(tx.dtype) == "torch.uint8" and tx.is_contiguous()
    assert ty.tolist() == y[:m].tolist()
    xs = x if c is not None else x[..., None]
    for ch in range(3):
        src = xs[:m, :, :, 0 if xs.shape[-1] == 1 else ch]
        assert np.array_equal(tx[:, ch].numpy(), src)


@FAST
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from([None, 1, 3, 4]),
       st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64]), st.integers(0, 2**31 - 1))
def test_to_model_input_any_array_becomes_28x28_rgb_uint8(h, w, c, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (h, w) if c is None else (h, w, c)
    if np.issubdtype(dtype, np.floating):
        a = (rng.random(shape) * rng.choice([1.0, 1000.0])).astype(dtype)
    else:
        a = rng.integers(0, min(np.iinfo(dtype).max, 70000), shape).astype(dtype)
    out = to_model_input(a)
    assert out.shape == (28, 28, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(to_model_input(a), out)  # deterministic


@FAST
@given(arrays(np.uint8, (28, 28, 3), elements=u8))
def test_to_model_input_leaves_a_model_sized_rgb_image_unchanged(a):
    assert np.array_equal(to_model_input(a), a)


@FAST
@given(u8, st.integers(1, 50), st.integers(1, 50))
def test_constant_images_stay_constant(v, h, w):
    out = to_model_input(np.full((h, w), v, np.uint8))
    assert (out == v).all()


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MODES), st.integers(1, 64), st.integers(1, 64), st.sampled_from(["png", "tiff", "bmp", "jpeg"]),
       st.integers(0, 2**31 - 1))
def test_any_image_file_loads_as_model_input(mode, w, h, fmt, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        arr = rng.integers(0, 60000, (h, w))
        im = Image.fromarray(arr.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"img.{fmt}"
        try:
            im.save(p)
        except (OSError, ValueError, KeyError):
            reject()  # this format cannot store this mode: not an example (hypothesis fails if all are)
        out = load_image(p)
    assert out.shape == (28, 28, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("bad_shape", [(0, 5), (5, 0), (3, 3, 2), (2, 2, 2, 2), (7,)])
def test_to_model_input_rejects_non_images(bad_shape):
    from dalab.errors import DataError

    with pytest.raises(DataError, match="image array"):
        to_model_input(np.zeros(bad_shape, np.uint8))
