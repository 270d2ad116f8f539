r"""Rare-class sampling (RCS; Hoyer, Dai & Van Gool, DAFormer, CVPR 2022): source images drawn so
that rare classes are trained on as often as frequent ones.

**Frequencies** are counted once from the source labels: :math:`n_{ic}` pixels of class
:math:`c` in label map :math:`i` (the ignore label 255 and ids :math:`\ge K` not counted), and
over the classes :math:`C = \{c : \sum_i n_{ic} > 0\}` that occur at all,

.. math::

    f_c = \frac{\sum_i n_{ic}}{\sum_{c' \in C} \sum_i n_{ic'}}, \qquad
    P(c) = \frac{\exp\big((1 - f_c)/T\big)}{\sum_{c' \in C} \exp\big((1 - f_{c'})/T\big)},

so that with :math:`T = 0.01` a class 1 % rarer than another is drawn :math:`e \approx 2.7`
times as often. **Eligible images**: per class, the images with more than :math:`m_i` of its
pixels, :math:`I_c = \{i : n_{ic} > m_i\}`. A class with no eligible image is left out and the
others' probabilities renormalised (DAFormer stops with an assertion there). **A draw** is
:math:`c \sim P`, then an image uniformly from :math:`I_c`. **A crop** of the drawn image (for
images read from files and cropped, :func:`crop_with_class`) is drawn again, up to 10 more times,
until it holds more than :math:`m^{crop}` pixels of :math:`c`; the last crop is kept either way.

**Pixel counts follow the image** (:mod:`dalab.data.pixel_scale`, counts scale with the area):

- :math:`m_i = 3000 \cdot (\min(H_i, W_i) / 1052)^2`, with :math:`(H_i, W_i)` the size of label
  map :math:`i` as it is counted. DAFormer counts its ``min_pixels = 3000`` on GTA5's label files
  as distributed, 1914x1052 (``tools/convert_datasets/gta.py`` writes the per-file class counts
  that ``mmseg/datasets/uda_dataset.py`` compares with ``rcs_min_pixels``), so 1052 is the
  reference side: 3000 on GTA5's files, 6.2 on the 48x96 scenes.
- :math:`m^{crop} = 0.5 \cdot 3000 \cdot (\min(h, w) / 512)^2` for an :math:`h \times w` crop:
  ``rcs_min_crop_ratio = 0.5`` of ``min_pixels`` on DAFormer's 512x512 crops, 1500 pixels there.
  MIC scales the same threshold by the area when the crop doubles (``min_crop_ratio=2.0`` on
  HRDA's 1024x1024 crops, "as HRDA is trained with twice the input resolution, which means that
  the inputs have 4 times more pixels": lhoyer/MIC ``seg/configs/mic/gtaHR2csHR_mic_hrda.py``).

Values and their source (lhoyer/DAFormer
``configs/daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py``:
``rare_class_sampling=dict(min_pixels=3000, class_temp=0.01, min_crop_ratio=0.5)``; the draw, the
strict ``>`` comparisons and the 10 re-crops in ``mmseg/datasets/uda_dataset.py``). The target
image stays a uniform draw, independent of the source draw, as in DAFormer.

Three ways in:

- in memory (:class:`RareClassSampler`, :meth:`RareClassSampler.from_labels`): ``draw(n,
  generator)`` returns ``n`` image indices (and the classes they were drawn for) from a
  ``torch.Generator``, in place of a random permutation of the source set;
- from files (:func:`count_class_pixels_files`): the per-file counts of a list of label files,
  read once with a progress bar and cached atomically in the data cache, keyed by a fingerprint
  of the files, then :meth:`RareClassSampler.from_counts`;
- a streamed loader (:class:`RareClassDataSampler`): a ``torch.utils.data.Sampler`` that yields
  ``(index, epoch, class)``; the dataset reads image ``index`` and crops it with
  :func:`crop_with_class` for ``class`` (see that sampler's docstring).

Shapes: label maps (N, H, W) uint8 train ids; counts (N, K) int64; probabilities (K,) float64
(0 for a class never drawn); images (H, W, 3) and labels (H, W) numpy arrays for a crop.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import DataError
from .pixel_scale import scale_count, shorter_side

#: DAFormer's rare-class sampling settings (see the module docstring for the sources)
TEMPERATURE = 0.01
MIN_PIXELS = 3000
MIN_PIXELS_SIDE = 1052      # GTA5's label files, 1914x1052, where DAFormer counts min_pixels
MIN_CROP_RATIO = 0.5
CROP_SIDE = 512             # DAFormer's 512x512 crops, where the crop must hold min_pixels * min_crop_ratio
CROP_RETRIES = 10
IGNORE = 255

CACHE_VERSION = 1


# ------------------------------------------------------------------------------- the maths

def class_counts(labels, num_classes: int, chunk: int = 256) -> np.ndarray:
    """(N, K) int64 pixel counts of each class 0..K-1 in each label map of ``labels`` (N, H, W)
    (a uint8 tensor or array); other values (255) are not counted."""
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 3:
        raise ValueError(f"label maps must be (N, H, W), got shape {tuple(y.shape)}")
    k = int(num_classes)
    out = np.zeros((len(y), k), np.int64)
    for s in range(0, len(y), chunk):
        part = y[s:s + chunk].reshape(len(y[s:s + chunk]), -1).astype(np.int64)
        part = np.where(part < k, part, k)  # every uncounted value into one extra bin
        rows = np.arange(len(part))[:, None] * (k + 1)
        out[s:s + len(part)] = np.bincount((rows + part).ravel(), minlength=len(part) * (k + 1)).reshape(
            len(part), k + 1)[:, :k]
    return out


def class_frequencies(counts: np.ndarray) -> np.ndarray:
    """(K,) float64 share of each class among all counted pixels, :math:`f_c` (0 for absent classes)."""
    total = np.asarray(counts, np.int64).sum(0).astype(np.float64)
    if total.sum() <= 0:
        raise DataError("rare-class sampling: the source labels hold no pixel of any class")
    return total / total.sum()


def class_probabilities(freq: np.ndarray, temperature: float = TEMPERATURE,
                        allowed: np.ndarray | None = None) -> np.ndarray:
    """(K,) float64 :math:`P(c) = \\mathrm{softmax}((1 - f_c) / T)` over the classes with
    :math:`f_c > 0` (and ``allowed``, a (K,) bool mask, where given); 0 elsewhere."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    freq = np.asarray(freq, np.float64)
    keep = freq > 0
    if allowed is not None:
        keep &= np.asarray(allowed, bool)
    if not keep.any():
        raise DataError("rare-class sampling: no class can be drawn (none has an image with enough of its pixels)")
    z = np.where(keep, (1.0 - freq) / float(temperature), -np.inf)
    z = z - z[keep].max()
    p = np.where(keep, np.exp(z), 0.0)
    return p / p.sum()


def min_pixels_for(label_side: int, min_pixels: float = MIN_PIXELS, ref_side: float = MIN_PIXELS_SIDE) -> float:
    """:math:`m_i`: ``min_pixels`` counted on label maps of shorter side ``ref_side``, scaled by the
    area to a label map of shorter side ``label_side``."""
    return scale_count(min_pixels, ref_side, label_side)


def min_crop_pixels(crop, min_pixels: float = MIN_PIXELS, ratio: float = MIN_CROP_RATIO,
                    ref_side: float = CROP_SIDE) -> float:
    """:math:`m^{crop}`: ``ratio * min_pixels`` on ``ref_side``-px crops, scaled by the area to a
    crop of size ``crop`` = (h, w)."""
    return scale_count(ratio * min_pixels, ref_side, min(int(crop[0]), int(crop[1])))


# ------------------------------------------------------------------------------- the sampler

class RareClassSampler:
    """Draws source image indices by rare-class sampling (see the module docstring).

    ``counts`` (N, K) per-image class pixel counts; ``label_sides`` the shorter side of each label
    map as counted, (N,) or one int for all. Attributes: ``probs`` (K,) the class probabilities
    (0 for a class never drawn), ``freq`` (K,) the frequencies, ``images_with[c]`` the eligible
    images of class c (an int64 tensor, empty for a class never drawn), ``min_pixels`` (N,) the
    per-image thresholds :math:`m_i`.
    """

    def __init__(self, counts, label_sides, temperature: float = TEMPERATURE, min_pixels: float = MIN_PIXELS,
                 min_pixels_side: float = MIN_PIXELS_SIDE):
        counts = np.asarray(counts, np.int64)
        if counts.ndim != 2 or len(counts) == 0:
            raise ValueError(f"counts must be (N, K) with N > 0, got shape {counts.shape}")
        n, k = counts.shape
        sides = np.broadcast_to(np.asarray(label_sides, np.float64), (n,))
        self.temperature = float(temperature)
        self.num_classes = k
        self.min_pixels = np.array([min_pixels_for(s, min_pixels, min_pixels_side) for s in sides])
        eligible = counts > self.min_pixels[:, None]                    # (N, K): strictly more, as DAFormer
        self.freq = class_frequencies(counts)
        self.probs = class_probabilities(self.freq, self.temperature, allowed=eligible.any(0))
        self.images_with = [torch.from_numpy(np.flatnonzero(eligible[:, c] & (self.probs[c] > 0)).astype(np.int64))
                            for c in range(k)]
        # flat layout for a vectorised draw: class c's images at [offset[c], offset[c] + length[c])
        self._flat = torch.cat(self.images_with)
        self._length = torch.tensor([len(v) for v in self.images_with], dtype=torch.int64)
        self._offset = torch.cumsum(self._length, 0) - self._length
        self._probs_t = torch.from_numpy(self.probs)

    @classmethod
    def from_labels(cls, labels, num_classes: int, **kwargs) -> "RareClassSampler":
        """From resident label maps (N, H, W) (e.g. a domain's ``train`` split ``y``)."""
        return cls(class_counts(labels, num_classes), shorter_side(tuple(labels.shape)), **kwargs)

    @classmethod
    def from_counts(cls, stats: "ClassPixelCounts", **kwargs) -> "RareClassSampler":
        """From :func:`count_class_pixels_files`' counts of label files."""
        return cls(stats.counts, stats.shapes.min(1), **kwargs)

    def __len__(self) -> int:
        return len(self.min_pixels)

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(image indices (n,) int64, classes (n,) int64): per item a class ``c ~ P``, then an
        image uniformly among the eligible images of ``c``; every draw from ``generator`` (CPU)."""
        n = int(n)
        classes = torch.multinomial(self._probs_t, n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.int64)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        length = self._length[classes]
        pick = torch.minimum((u * length).long(), length - 1)
        return self._flat[self._offset[classes] + pick], classes

    def class_table(self, names: Sequence[str] | None = None) -> dict:
        """``{class name: [frequency, probability, eligible images]}`` for the classes that occur,
        to record in a run's summary."""
        names = list(names) if names is not None else [str(c) for c in range(self.num_classes)]
        return {names[c]: [round(float(self.freq[c]), 6), round(float(self.probs[c]), 6), len(self.images_with[c])]
                for c in range(self.num_classes) if self.freq[c] > 0}


class RareClassDataSampler(Sampler):
    """A ``torch.utils.data.Sampler`` for a streamed loader: yields ``(index, epoch, cls)`` tuples,
    ``num_samples`` per pass, drawn by ``sampler`` (a :class:`RareClassSampler`).

    Pass *k* is epoch *k* (``set_epoch`` sets the next one, e.g. to resume), like the loader's own
    epoch counting; the draws of epoch *e* come from a generator seeded with ``(seed, e)``, so they
    depend on neither the worker count nor earlier epochs. With ``world_size`` > 1 every rank draws
    the same ``num_samples * world_size`` items and keeps items ``rank, rank + world_size, ...``.

    Hook for a dataset of files (e.g. ``SegFiles``): accept a ``(index, epoch, cls)`` key, read
    pair ``index``, seed its augmentation with ``(seed, epoch, index)`` as for ``(index, epoch)``,
    and in place of its single random crop call :func:`crop_with_class` with ``cls``, the crop
    size and ``min_crop_pixels(crop)`` (after the resize and padding, before the flip).
    """

    def __init__(self, sampler: RareClassSampler, num_samples: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not (int(world_size) >= 1 and 0 <= int(rank) < int(world_size)):
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        self.sampler = sampler
        self.num_samples = int(num_samples)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (indices, classes) of ``epoch``."""
        state = np.random.SeedSequence([self.seed, int(epoch)]).generate_state(2, np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        idx, cls = self.sampler.draw(self.num_samples * self.world_size, gen)
        return idx[self.rank::self.world_size], cls[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch = self.epoch
        self.epoch += 1
        idx, cls = self.draws(epoch)
        return ((int(i), epoch, int(c)) for i, c in zip(idx.tolist(), cls.tolist()))

    def __len__(self) -> int:
        return self.num_samples


# ------------------------------------------------------------------------------- the crop

def crop_with_class(image: np.ndarray, label: np.ndarray, crop, cls: int, min_count: float,
                    rng: np.random.Generator, retries: int = CROP_RETRIES) -> tuple[np.ndarray, np.ndarray]:
    """A random ``crop`` = (h, w) of ``image`` (H, W, 3) and ``label`` (H, W), drawn again up to
    ``retries`` times until it holds more than ``min_count`` pixels of class ``cls``; the last
    crop is returned if none does. Offsets from ``rng`` (``rng.integers``, the top then the left
    offset, as a plain random crop). The arrays must be at least ``crop`` (pad them first)."""
    ch, cw = int(crop[0]), int(crop[1])
    h, w = label.shape[:2]
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
    if h < ch or w < cw:
        raise ValueError(f"a {h}x{w} image is smaller than the {ch}x{cw} crop (pad it first)")
    for attempt in range(int(retries) + 1):
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        lab = label[y0:y0 + ch, x0:x0 + cw]
        if int(np.count_nonzero(lab == cls)) > min_count:
            break
    return image[y0:y0 + ch, x0:x0 + cw], lab


# ------------------------------------------------------------------------------- label files

@dataclass
class ClassPixelCounts:
    """Per-file class pixel counts: ``counts`` (N, K) int64 and ``shapes`` (N, 2) int64 (H, W) of
    each label map, in the order of the files given."""

    counts: np.ndarray
    shapes: np.ndarray


def files_fingerprint(files: Sequence, num_classes: int, reader_name: str) -> str:
    """A hex digest of the files' paths, sizes and modification times, the class count and the
    label reader's name: equal for the same files unchanged, different if any is added, removed,
    renamed or rewritten."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, int(num_classes), str(reader_name)]).encode())
    for f in files:
        p = Path(f)
        try:
            st = p.stat()
        except OSError as e:
            raise DataError(f"{p}: cannot read the label file ({e.strerror or e})") from None
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def count_class_pixels_files(files: Sequence, num_classes: int, read_label: Callable[[Path], np.ndarray],
                             reader_name: str, cache_dir: str | os.PathLike | None = None,
                             progress: bool = True) -> ClassPixelCounts:
    """Count each class's pixels in every label file (``read_label(path)`` -> (H, W) train ids),
    once: the result is cached in ``cache_dir`` (default: the data cache's ``rcs/`` folder) as
    ``class-pixels-<fingerprint>.npz``, written atomically under a file lock, and read back when
    the same files are counted again (see :func:`files_fingerprint`)."""
    from .io import atomic_save_npz, file_lock
    from .paths import data_dir

    files = [Path(f) for f in files]
    if not files:
        raise DataError("rare-class sampling: no label files to count")
    folder = Path(cache_dir) if cache_dir is not None else data_dir() / "rcs"
    key = files_fingerprint(files, num_classes, reader_name)
    path = folder / f"class-pixels-{key[:32]}.npz"

    def _read():
        try:
            with np.load(path) as z:
                if z["counts"].shape == (len(files), num_classes) and str(z["key"]) == key:
                    return ClassPixelCounts(z["counts"].astype(np.int64), z["shapes"].astype(np.int64))
        except (OSError, ValueError, KeyError):  # an unreadable cache file is counted again and replaced
            pass
        return None

    if path.exists() and (got := _read()) is not None:
        return got
    with file_lock(folder / ".class-pixels.lock"):
        if path.exists() and (got := _read()) is not None:  # another process counted them meanwhile
            return got
        counts = np.zeros((len(files), num_classes), np.int64)
        shapes = np.zeros((len(files), 2), np.int64)
        it = files
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(files, desc="counting class pixels (rare-class sampling)", unit="label", mininterval=0.5)
        for i, f in enumerate(it):
            lab = np.asarray(read_label(f))
            counts[i] = class_counts(lab[None], num_classes)[0]
            shapes[i] = lab.shape[:2]
        atomic_save_npz(path, counts=counts, shapes=shapes, key=np.array(key))
    return ClassPixelCounts(counts, shapes)


__all__ = ["TEMPERATURE", "MIN_PIXELS", "MIN_PIXELS_SIDE", "MIN_CROP_RATIO", "CROP_SIDE", "CROP_RETRIES",
           "class_counts", "class_frequencies", "class_probabilities", "min_pixels_for", "min_crop_pixels",
           "RareClassSampler", "RareClassDataSampler", "crop_with_class", "ClassPixelCounts",
           "files_fingerprint", "count_class_pixels_files"]
