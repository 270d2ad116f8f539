r"""The real segmentation datasets, GTA5 -> Cityscapes, read from their files.

``load_domain("gta5:PATH")`` and ``load_domain("cityscapes:PATH")`` return a
:class:`~dalab.data.domains.Domain` with ``task="segmentation"``, 19 classes (the Cityscapes
train ids, :data:`~dalab.data.cityscapes_labels.TRAIN_NAMES`) and :class:`StreamSplit`
splits: tens of thousands of full-resolution images do not fit in memory, so a split is a
sorted list of (image file, label file) pairs, read by a ``DataLoader``.

Layouts (the datasets as distributed; nothing is converted or cached):

- **GTA5** (Playing for Data): ``PATH/images/00001.png ...`` and ``PATH/labels/00001.png ...``,
  paired by file name (24,966 pairs, mostly 1914x1052, some of other sizes). A label is a
  palette ('P') PNG whose pixel *indices* are Cityscapes label ids (read with PIL:
  ``np.array(Image.open(f))``; its palette colours are not looked at). GTA5 has no official
  validation set. Here ``val`` is a fixed held-out set of ``min(500, N // 10)`` pairs (500
  for any full copy): those whose file names have the smallest SHA-1 hashes, so the choice
  depends on the names alone, not on their order, and a copy that lacks some files keeps
  every other held-out pair; ``train`` is every other pair, for source validation that is
  not trained on. (The papers train on all 24,966 images; 500 fewer is 2 %.)
- **Cityscapes**: ``PATH/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
  and ``PATH/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``
  (single-channel 8-bit label ids; the ``_instanceIds``, ``_color`` and ``_polygons.json``
  files are ignored). ``train`` (2975) is the unlabelled target of adaptation (its labels
  are only for the oracle), ``val`` (500) is the scored split. ``test`` is left out: its
  public labels are all "unlabeled".

- **SYNTHIA-RAND-CITYSCAPES**: ``PATH/RGB/0000000.png ...`` and ``PATH/GT/LABELS/0000000.png ...``,
  paired by file name (9,400 pairs, 1280x760). A label is a 16-bit PNG whose first (red)
  channel holds SYNTHIA's class (0..22; the second channel holds instance ids). Pillow reads
  16-bit colour PNGs truncated to their high bytes, which turns every class into 0, so these
  labels are read with OpenCV (an optional extra: ``pip install opencv-python-headless``); an
  8-bit copy (grey, palette or RGB with the class in red) is read with PIL. SYNTHIA's classes
  map to the 19 train ids (:data:`SYNTHIA_TO_TRAIN_ID`); void, parking slot, road work and lane
  marking become 255, and terrain, truck and train do not occur in the renders, so papers
  score SYNTHIA -> Cityscapes on 16 (or 13) classes (``dalab evaluate --classes``). ``val`` is
  held out as for GTA5.

Label ids are mapped to train ids 0..18 through
:data:`~dalab.data.cityscapes_labels.ID_TO_TRAIN_ID`; every other id of the table
(0..33) becomes :data:`~dalab.data.cityscapes_labels.IGNORE` (255). A value outside the
table (say 200), a label that is neither palette nor grey (an RGB colour label), an
unreadable file, or an image and label of different sizes is a one-line
:class:`~dalab.errors.DataError` naming the file(s), raised when the item is read (also
from a ``DataLoader`` worker: :class:`SegLoader` turns torch's multi-line worker report
back into the one line). :func:`size_mismatches` lists every pair of different sizes from
the PNG headers alone, to find them before a run.

:class:`SegFiles` yields ``(image, label)``: image (3, H, W) uint8, label (H, W) uint8 train
ids. Training: resize to ``size`` (if given) times a random factor from ``scale`` (image
bilinear, label nearest), pad to ``crop`` where smaller (image 0, label 255, bottom/right),
random crop, random horizontal flip. Evaluation: the image is resized to ``size`` (the
evaluation resolution, e.g. (512, 1024)); with ``score_at="full"`` (the default) the label
keeps its full resolution and the model's logits are upsampled to it before scoring
(:func:`dalab.tasks.upsample_to`; the DeepLab-v2 convention: input 1024x512, scored at
2048x1024); ``score_at="input"`` resizes the label (nearest) to ``size`` instead, which is
cheaper but not the papers' protocol. All Cityscapes labels are 1024x2048, so full-size
labels batch; images of different sizes in one batch are a DataError (use ``size`` /
``crop`` or batch size 1).

Randomness: every item draws from ``np.random.default_rng([seed, epoch, index])``, so a
batch does not depend on the worker that made it or on the number of workers. A
:class:`SegLoader` counts its passes: pass *k* is epoch *k* for the shuffle and the
augmentations (``set_epoch(k)`` sets the next pass, e.g. to resume); the epoch travels with
each index to the workers, so persistent workers see it too.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from ..errors import DalabError, DataError
from .cityscapes_labels import ID_TO_TRAIN_ID, IGNORE, KNOWN_IDS, NUM_CLASSES, TRAIN_NAMES

__all__ = ["gta5_pairs", "gta5_split", "cityscapes_pairs", "synthia_pairs", "read_label", "read_synthia_label",
           "read_pair", "size_mismatches", "SegFiles", "SegLoader", "StreamSplit", "collate", "load_seg_domain",
           "GTA5_VAL", "SYNTHIA_TO_TRAIN_ID", "SYNTHIA_ABSENT", "SYNTHIA_13_LEFT_OUT"]

CITYSCAPES_SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
GTA5_VAL = 500  # held-out GTA5 pairs for source validation (fewer in a copy of under 5000)
SHOW = 3  # unpaired files named in an error

# SYNTHIA-RAND-CITYSCAPES class (its README's table) -> Cityscapes train id; 0 void, 13 parking slot,
# 14 road work and 22 lane marking -> IGNORE
SYNTHIA_TO_TRAIN_ID = np.full(23, IGNORE, np.uint8)
for _synthia, _train in {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
                         8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}.items():
    SYNTHIA_TO_TRAIN_ID[_synthia] = _train
SYNTHIA_ABSENT = ("terrain", "truck", "train")  # never in the renders: the 16-class score leaves them out
SYNTHIA_13_LEFT_OUT = SYNTHIA_ABSENT + ("wall", "fence", "pole")  # the 13-class score (mIoU*) leaves these out

_KNOWN = np.zeros(256, bool)
_KNOWN[sorted(KNOWN_IDS)] = True
_ID_RANGE = f"{min(KNOWN_IDS)}..{max(KNOWN_IDS)}"

Pair = tuple[Path, Path]


# ------------------------------------------------------------------------ indexing

def _root(root, what: str) -> Path:
    p = Path(root).expanduser().resolve()
    if not p.is_dir():
        raise DataError(f"{p}: {what} folder not found")
    return p


def _pngs(d: Path) -> dict[str, Path]:
    """Visible ``*.png`` files of one folder by stem."""
    return {e.name[:-4]: Path(e.path) for e in os.scandir(d)
            if e.name.lower().endswith(".png") and not e.name.startswith(".") and e.is_file()}


def _pair_up(images: dict[str, Path], labels: dict[str, Path], what: str, label_dir: str,
             image_dir: str) -> list[Pair]:
    """Pairs by key, or a DataError naming the first few unpaired files and their count."""
    for have, lack, where in ((images, labels, label_dir), (labels, images, image_dir)):
        alone = sorted(k for k in have if k not in lack)
        if alone:
            kind = "image" if have is images else "label"
            names = ", ".join(str(have[k]) for k in alone[:SHOW]) + (", ..." if len(alone) > SHOW else "")
            raise DataError(f"{what}: {len(alone)} {kind}{'s' if len(alone) > 1 else ''} without "
                            f"{'a label' if kind == 'image' else 'an image'} in {where} ({names})")
    return [(images[k], labels[k]) for k in sorted(images)]


def gta5_pairs(root) -> list[Pair]:
    """Every (image, label) pair of a GTA5 folder ``root/images/*.png`` + ``root/labels/*.png``, sorted."""
    r = _root(root, "GTA5")
    missing = [d for d in ("images", "labels") if not (r / d).is_dir()]
    if missing:
        raise DataError(f"{r}: not a GTA5 (Playing for Data) folder: expected images/ and labels/ "
                        f"(images/00001.png, labels/00001.png), no {' or '.join(d + '/' for d in missing)}")
    images, labels = _pngs(r / "images"), _pngs(r / "labels")
    if not images and not labels:
        raise DataError(f"{r}: images/ and labels/ hold no PNG files")
    return _pair_up(images, labels, f"GTA5 at {r}", f"{r / 'labels'}/", f"{r / 'images'}/")


def gta5_split(pairs: list[Pair], n_val: int | None = None) -> tuple[list[Pair], list[Pair]]:
    """(train, val): the ``n_val`` pairs whose image file names have the lowest SHA-1 hashes are
    held out (default ``min(500, N // 10)``); the order of ``pairs`` does not matter."""
    if n_val is None:
        n_val = min(GTA5_VAL, len(pairs) // 10)
    ranked = sorted(pairs, key=lambda p: hashlib.sha1(p[0].name.encode()).hexdigest())
    held = set(ranked[:n_val])
    return [p for p in pairs if p not in held], [p for p in pairs if p in held]


def _city_files(d: Path, suffix: str) -> dict[str, Path]:
    out = {}
    for city in sorted(os.scandir(d), key=lambda e: e.name):
        if city.is_dir() and not city.name.startswith("."):
            for e in os.scandir(city.path):
                if e.name.endswith(suffix) and e.is_file():
                    out[f"{city.name}/{e.name[:-len(suffix)]}"] = Path(e.path)
    return out


def cityscapes_pairs(root, split: str) -> list[Pair]:
    """Every (leftImg8bit image, gtFine labelIds) pair of one Cityscapes split, sorted."""
    if split not in CITYSCAPES_SPLITS:
        raise DataError(f"Cityscapes has no split {split!r} (train, val, test)")
    r = _root(root, "Cityscapes")
    img_dir, lab_dir = r / "leftImg8bit" / split, r / "gtFine" / split
    for d, pattern in ((img_dir, f"<city>/<city>_<seq>_<frame>{IMAGE_SUFFIX}"),
                       (lab_dir, f"<city>/<city>_<seq>_<frame>{LABEL_SUFFIX}")):
        if not d.is_dir():
            raise DataError(f"{r}: not a Cityscapes folder: expected {d.relative_to(r)}/{pattern}, "
                            f"no {d.relative_to(r)}/")
    images, labels = _city_files(img_dir, IMAGE_SUFFIX), _city_files(lab_dir, LABEL_SUFFIX)
    if not images:
        raise DataError(f"{img_dir}: no <city>/*{IMAGE_SUFFIX} images (an empty split)")
    return _pair_up(images, labels, f"Cityscapes {split} at {r}", f"{lab_dir}/", f"{img_dir}/")


def synthia_pairs(root) -> list[Pair]:
    """Every (image, label) pair of a SYNTHIA-RAND-CITYSCAPES folder ``root/RGB/*.png`` +
    ``root/GT/LABELS/*.png``, sorted."""
    r = _root(root, "SYNTHIA")
    img_dir, lab_dir = r / "RGB", r / "GT" / "LABELS"
    missing = [str(d.relative_to(r)) + "/" for d in (img_dir, lab_dir) if not d.is_dir()]
    if missing:
        raise DataError(f"{r}: not a SYNTHIA-RAND-CITYSCAPES folder: expected RGB/ and GT/LABELS/ "
                        f"(RGB/0000000.png, GT/LABELS/0000000.png), no {' or '.join(missing)}")
    images, labels = _pngs(img_dir), _pngs(lab_dir)
    if not images and not labels:
        raise DataError(f"{r}: RGB/ and GT/LABELS/ hold no PNG files")
    return _pair_up(images, labels, f"SYNTHIA at {r}", f"{lab_dir}/", f"{img_dir}/")


# ------------------------------------------------------------------------ reading one pair

def _open(path: Path) -> Image.Image:
    """Open an image file (its header only), DataError naming it when it cannot be."""
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (removed since the folder was indexed?)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def _decode(img: Image.Image, path: Path) -> Image.Image:
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return img


def read_label(path: Path, img: Image.Image | None = None) -> np.ndarray:
    """A label-id PNG ('P' or 'L') -> (H, W) uint8 train ids; DataError for anything else."""
    if img is None:
        with _open(path) as lab:
            return read_label(path, lab)
    if img.mode not in ("P", "L"):
        raise DataError(f"{path}: a {img.mode}-mode image, not a palette or grey PNG of label ids "
                        "(coloured labels must be converted to label ids first)")
    ids = np.asarray(_decode(img, path), dtype=np.uint8)
    ok = _KNOWN[ids]
    if not ok.all():
        bad = np.unique(ids[~ok])
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise DataError(f"{path}: label id {shown} outside the Cityscapes label table ({_ID_RANGE})")
    return ID_TO_TRAIN_ID[ids]


def _png_depth(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's header, or None when the file is not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(29)
    except OSError as e:
        raise DataError(f"{path}: not readable ({type(e).__name__}: {e})") from None
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def read_synthia_label(path: Path, img: Image.Image | None = None) -> np.ndarray:
    """A SYNTHIA label PNG (class in the first channel, 16-bit or 8-bit) -> (H, W) uint8 train ids.
    ``img``: the file already opened with PIL (its header read), used for an 8-bit file."""
    path = Path(path)
    depth = _png_depth(path)
    if depth is not None and depth[0] == 16:
        try:
            import cv2
        except ImportError:
            raise DalabError(f"{path}: SYNTHIA's labels are 16-bit PNGs, which Pillow reads truncated to 8 bits; "
                             "reading them needs OpenCV: pip install opencv-python-headless") from None
        a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if a is None:
            raise DataError(f"{path}: not a readable image (OpenCV could not decode it)")
        ids = a[:, :, 2] if a.ndim == 3 else a  # OpenCV orders channels B, G, R(, A): red is index 2
    elif img is None:
        with _open(path) as lab:
            return read_synthia_label(path, lab)
    else:
        if img.mode not in ("P", "L", "RGB", "RGBA", "I;16", "I"):
            raise DataError(f"{path}: a {img.mode}-mode image, not a SYNTHIA label PNG")
        a = np.asarray(_decode(img, path))
        ids = a[:, :, 0] if a.ndim == 3 else a
    bad = np.unique(ids[ids >= len(SYNTHIA_TO_TRAIN_ID)])
    if len(bad):
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise DataError(f"{path}: class {shown} outside SYNTHIA's label table (0..{len(SYNTHIA_TO_TRAIN_ID) - 1})")
    return SYNTHIA_TO_TRAIN_ID[ids.astype(np.intp)]


def size_mismatches(pairs) -> list[tuple[Path, Path, tuple[int, int], tuple[int, int]]]:
    """Every (image, label, image (W, H), label (W, H)) whose sizes differ, from the PNG headers
    only (no pixel is decoded), to find such pairs before a run rather than in the middle."""
    out = []
    for image_path, label_path in pairs:
        with _open(Path(image_path)) as a, _open(Path(label_path)) as b:
            if a.size != b.size:
                out.append((Path(image_path), Path(label_path), a.size, b.size))
    return out


# how label files are read, by format: (path, the file opened with PIL) -> (H, W) uint8 train ids
LABEL_READERS = {"cityscapes": read_label,  # Cityscapes label ids: GTA5 and Cityscapes
                 "synthia": read_synthia_label}


def read_pair(image_path: Path, label_path: Path, label_format: str = "cityscapes") -> tuple[Image.Image, np.ndarray]:
    """(RGB PIL image, (H, W) uint8 train ids), checked to be of the same size; the label is read
    by ``LABEL_READERS[label_format]``."""
    with _open(image_path) as img, _open(label_path) as lab:
        if img.size != lab.size:
            raise DataError(f"{image_path} is {img.size[0]}x{img.size[1]} but its label {label_path} is "
                            f"{lab.size[0]}x{lab.size[1]}")
        return _decode(img, image_path).convert("RGB"), LABEL_READERS[label_format](label_path, lab)


# ------------------------------------------------------------------------ the dataset

def _hw(v, what: str) -> tuple[int, int] | None:
    if v is None:
        return None
    try:
        h, w = (int(a) for a in v)
    except (TypeError, ValueError):
        raise DalabError(f"{what} must be (height, width), got {v!r}") from None
    if h < 1 or w < 1:
        raise DalabError(f"{what} must be positive, got {v!r}")
    return h, w


def _resize(img: Image.Image, lab: np.ndarray, hw: tuple[int, int], label_too: bool = True):
    h, w = hw
    if (img.height, img.width) != (h, w):
        img = img.resize((w, h), Image.BILINEAR)
    if label_too and lab.shape != (h, w):
        lab = np.asarray(Image.fromarray(lab).resize((w, h), Image.NEAREST))
    return img, lab


class SegFiles(Dataset):
    """(image (3, H, W) uint8, label (H, W) uint8 train ids) for each (image file, label file).

    ``train=True``: resize to ``size`` (default: the file's size) times a factor drawn from
    ``scale`` (None: 1), pad to ``crop`` (image 0, label 255) and crop at random, flip
    horizontally with probability 0.5 when ``flip``. ``train=False``: resize the image to
    ``size``; the label stays at full size (``score_at="full"``) or is resized to ``size``
    (``score_at="input"``). Item ``i`` of epoch ``e`` draws from
    ``np.random.default_rng([seed, e, i])``; an index may be ``i`` (the epoch of
    :meth:`set_epoch`) or ``(i, e)`` (what :class:`SegLoader`'s sampler yields).
    """

    def __init__(self, pairs, train: bool, crop=None, scale=(0.5, 1.5), flip: bool = True, size=None,
                 seed: int = 0, score_at: str = "full", label_format: str = "cityscapes"):
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        if label_format not in LABEL_READERS:
            raise DalabError(f"label_format must be one of {', '.join(map(repr, LABEL_READERS))}, got {label_format!r}")
        self.label_format = label_format
        self.train = bool(train)
        self.crop = _hw(crop, "crop")
        self.size = _hw(size, "size")
        if scale is not None:
            lo, hi = (float(s) for s in scale)
            if not 0 < lo <= hi:
                raise DalabError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
            scale = (lo, hi)
        self.scale = scale
        self.flip = bool(flip)
        self.seed = int(seed)
        if score_at not in ("full", "input"):
            raise DalabError(f"score_at must be 'full' or 'input', got {score_at!r}")
        self.score_at = score_at
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        img, lab = read_pair(*self.pairs[index], label_format=self.label_format)
        if self.train:
            img, lab = self._augment(img, lab, np.random.default_rng([self.seed, epoch, index]))
        elif self.size is not None:
            img, lab = _resize(img, lab, self.size, label_too=self.score_at == "input")
        x = np.asarray(img, np.uint8).transpose(2, 0, 1)
        return (torch.from_numpy(np.require(x, requirements=["C", "W"])),
                torch.from_numpy(np.require(lab, requirements=["C", "W"])))

    def _augment(self, img: Image.Image, lab: np.ndarray, rng: np.random.Generator):
        h, w = self.size or (img.height, img.width)
        s = rng.uniform(*self.scale) if self.scale else 1.0
        img, lab = _resize(img, lab, (max(1, round(h * s)), max(1, round(w * s))))
        a = np.asarray(img, np.uint8)
        if self.crop is not None:
            ch, cw = self.crop
            ph, pw = max(ch - a.shape[0], 0), max(cw - a.shape[1], 0)
            if ph or pw:
                a = np.pad(a, ((0, ph), (0, pw), (0, 0)), constant_values=0)
                lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=IGNORE)
            y0 = int(rng.integers(0, a.shape[0] - ch + 1))
            x0 = int(rng.integers(0, a.shape[1] - cw + 1))
            a, lab = a[y0:y0 + ch, x0:x0 + cw], lab[y0:y0 + ch, x0:x0 + cw]
        if self.flip and rng.random() < 0.5:
            a, lab = a[:, ::-1], lab[:, ::-1]
        return a, lab


def collate(batch):
    """Stack (image, label) items; items of different sizes are a DataError saying what to set."""
    xs, ys = zip(*batch)
    for what, ts, fix in (("images", xs, "set crop= (training) or size= (evaluation)"),
                          ("labels", ys, "use score_at='input' or batch size 1")):
        shapes = {tuple(t.shape[-2:]) for t in ts}
        if len(shapes) > 1:
            sizes = " and ".join(f"{h}x{w}" for h, w in sorted(shapes)[:2])
            raise DataError(f"{what} of different sizes in one batch ({sizes}): {fix}")
    return torch.stack(xs), torch.stack(ys)


# ------------------------------------------------------------------------ samplers and the loader

class _SeededShuffle(RandomSampler):
    """A RandomSampler whose order in epoch ``e`` is seeded by ``seed + e`` (as DistributedSampler)."""

    def __init__(self, data, seed: int):
        super().__init__(data, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


class _Shard(Sampler):
    """Items ``rank, rank + world_size, ...`` in order: the ranks cover the set once, no padding."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = range(rank, n, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _Epoched(Sampler):
    """Yields ``(index, epoch)``: pass k over the loader is epoch k unless set_epoch says otherwise."""

    def __init__(self, base: Sampler):
        self.base = base
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
        return ((i, epoch) for i in self.base)

    def __len__(self) -> int:
        return len(self.base)


def _one_line(e: DataError) -> str:
    """torch re-raises a worker's exception with its whole traceback; keep the original message."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    for prefix in (f"{type(e).__module__}.{type(e).__qualname__}: ", f"{type(e).__qualname__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last


class SegLoader(DataLoader):
    """A ``DataLoader`` of (images (B, 3, H, W) uint8, labels (B, H, W) uint8) batches.

    Each pass is one epoch (see the module notes); :meth:`set_epoch` sets the next one and
    :meth:`forever` cycles epochs for a step-based training loop. A DataError raised in a
    worker comes back as the same one-line DataError.
    """

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next pass will be."""
        return self.sampler.epoch

    def __iter__(self):
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except DataError as e:
                raise type(e)(_one_line(e)) from None
            yield batch

    def forever(self, start_epoch: int | None = None):
        """Batches without end, epoch after epoch (from ``start_epoch`` when given)."""
        if start_epoch is not None:
            self.set_epoch(start_epoch)
        while True:
            yield from self


@dataclass(eq=False)
class StreamSplit:
    """A split too large for memory: (image file, label file) pairs, read by :meth:`loader`.

    ``streamed`` is True (a :class:`~dalab.data.domains.Split` has False); ``tensors()``,
    ``x`` and ``y`` raise a DataError rather than read every image into memory.
    """

    pairs: list
    labelled: bool = True
    name: str = "split"
    label_format: str = "cityscapes"  # how label files are read (SegFiles)

    streamed = True

    def __len__(self) -> int:
        return len(self.pairs)

    def _refuse(self, what: str):
        raise DataError(f"{self.name}: a streamed split ({len(self)} images read from files), so it has "
                        f"no {what}; read it with .loader(batch_size, train=...)")

    def tensors(self, *args, **kwargs):
        self._refuse("in-memory tensors")

    @property
    def x(self):
        self._refuse("image array x")

    @property
    def y(self):
        self._refuse("label array y")

    def dataset(self, train: bool, crop=None, scale=(0.5, 1.5), flip: bool = True, size=None, seed: int = 0,
                score_at: str = "full", limit: int | None = None) -> SegFiles:
        """The :class:`SegFiles` over this split (its first ``limit`` pairs when given)."""
        pairs = self.pairs if limit is None else self.pairs[:max(int(limit), 0)]
        return SegFiles(pairs, train, crop=crop, scale=scale, flip=flip, size=size, seed=seed, score_at=score_at,
                        label_format=self.label_format)

    def loader(self, batch_size: int, train: bool, workers: int = 2, seed: int = 0, rank: int = 0,
               world_size: int = 1, crop=None, scale=(0.5, 1.5), flip: bool = True, size=None,
               score_at: str = "full", limit: int | None = None, pin_memory: bool | None = None) -> SegLoader:
        """A :class:`SegLoader` over this split.

        Training: shuffled (DistributedSampler(shuffle=True, seed, drop_last=True) over
        ``world_size`` ranks, else a RandomSampler seeded by ``seed`` + epoch), only full
        batches. Evaluation: in order, every item once; with ``world_size`` > 1 rank r gets
        items r, r + world_size, ... (no padding, so no image is scored twice; ranks may get
        one item more or less, so reduce the confusion matrices after the loop).
        ``pin_memory`` defaults to whether CUDA is available.
        """
        if int(batch_size) < 1:
            raise DalabError(f"batch_size must be positive, got {batch_size}")
        if int(workers) < 0:
            raise DalabError(f"workers must be 0 or more, got {workers}")
        if not (int(world_size) >= 1 and 0 <= int(rank) < int(world_size)):
            raise DalabError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        data = self.dataset(train, crop=crop, scale=scale, flip=flip, size=size, seed=seed,
                            score_at=score_at, limit=limit)
        if train:
            base = (DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                       drop_last=True) if world_size > 1 else _SeededShuffle(data, seed))
            if len(base) < batch_size:
                raise DataError(f"{self.name}: {len(base)} images per rank, fewer than one batch of "
                                f"{batch_size} (training keeps full batches only)")
        else:
            base = _Shard(len(data), rank, world_size)
        workers = int(workers)
        return SegLoader(data, batch_size=int(batch_size), sampler=_Epoched(base), num_workers=workers,
                         collate_fn=collate, drop_last=bool(train),
                         pin_memory=torch.cuda.is_available() if pin_memory is None else bool(pin_memory),
                         persistent_workers=workers > 0)


# ------------------------------------------------------------------------ the domains

def load_seg_domain(spec: str):
    """``gta5:PATH``, ``cityscapes:PATH`` or ``synthia:PATH`` -> a segmentation
    :class:`~dalab.data.domains.Domain`."""
    from .base import Domain

    kind, _, path = spec.partition(":")
    if not path:
        raise DataError(f"{kind}: needs a path, e.g. --source {kind}:/data/{kind.upper()}")
    if kind == "gta5":
        r = _root(path, "GTA5")
        train, val = gta5_split(gta5_pairs(r))
        n = len(train) + len(val)
        desc = (f"GTA5 (Playing for Data) at {r}, {n} images: {len(train)} train, {len(val)} held out "
                f"for source validation; labels mapped to the {NUM_CLASSES} Cityscapes train ids")
        splits = {"train": StreamSplit(train, True, f"{spec} train"), "val": StreamSplit(val, True, f"{spec} val")}
    elif kind == "synthia":
        r = _root(path, "SYNTHIA")
        train, val = gta5_split(synthia_pairs(r))
        desc = (f"SYNTHIA-RAND-CITYSCAPES at {r}, {len(train) + len(val)} images: {len(train)} train, {len(val)} "
                f"held out for source validation; classes mapped to the {NUM_CLASSES} Cityscapes train ids "
                f"({', '.join(SYNTHIA_ABSENT)} never occur)")
        splits = {s: StreamSplit(p, True, f"{spec} {s}", label_format="synthia")
                  for s, p in (("train", train), ("val", val))}
    elif kind == "cityscapes":
        r = _root(path, "Cityscapes")
        splits = {s: StreamSplit(cityscapes_pairs(r, s), True, f"{spec} {s}") for s in ("train", "val")}
        desc = (f"Cityscapes (leftImg8bit + gtFine) at {r}, {len(splits['train'])} train images "
                f"(the adaptation target; labels only for the oracle), {len(splits['val'])} val images "
                f"(scored); {NUM_CLASSES} train ids")
    else:
        raise DataError(f"unknown segmentation dataset {kind!r} (gta5:PATH, cityscapes:PATH or synthia:PATH)")
    return Domain(spec, desc, splits, NUM_CLASSES, TRAIN_NAMES, task="segmentation")
