r"""The real segmentation datasets, GTA5 / SYNTHIA -> Cityscapes, read from their files.

``load_domain("gta5:PATH")``, ``load_domain("cityscapes:PATH")`` and ``load_domain("synthia:PATH")``
return a :class:`~dalab.data.domains.Domain` with ``task="segmentation"``, 19 classes (the
Cityscapes train ids, :data:`~dalab.data.cityscapes_labels.TRAIN_NAMES`), a base image size
(``Domain.image_size``), the report of the pair check (``Domain.pair_check``) and
:class:`StreamSplit` splits: tens of thousands of full-resolution images do not fit in memory,
so a split is a sorted list of (image file, label file) pairs read by a ``DataLoader``
(:mod:`dalab.data.streaming`).

Layouts (the datasets as distributed; nothing is converted):

- **GTA5** (Playing for Data): ``PATH/images/00001.png ...`` and ``PATH/labels/00001.png ...``,
  paired by file name (24,966 pairs, mostly 1914x1052, some of other sizes). A label is a
  palette ('P') PNG whose pixel *indices* are Cityscapes label ids (read with PIL:
  ``np.array(Image.open(f))``; its palette colours are not looked at). GTA5 has no official
  validation set. Here ``val`` is a fixed held-out set of ``min(500, max(1, N // 10))`` pairs
  (500 for any full copy, 1 for a copy of 2 to 19): those whose file names have the smallest
  SHA-1 hashes, so the choice depends on the names alone, not on their order, and a copy that
  lacks some files keeps every other held-out pair; ``train`` is every other pair, for source
  validation that is not trained on. (The papers train on all 24,966 images; 500 fewer is 2 %.)
- **Cityscapes**: ``PATH/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
  and ``PATH/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``
  (single-channel 8-bit label ids; the ``_instanceIds``, ``_color`` and ``_polygons.json``
  files are ignored). ``train`` (2975) is the unlabelled target of adaptation: without
  ``gtFine/train/`` it is an unlabelled split (``labelled=False``; only the oracle needs its
  labels). ``val`` (500) is the scored split and needs ``gtFine/val/``. ``test`` is left out:
  its public labels are all "unlabeled".
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

**The pair check** (:func:`check_pairs`), run when a domain is loaded, before any training step:
every file's header is opened with PIL (its size read, no pixel decoded), with a progress bar
on stderr (shown when stderr is a terminal). A label whose size differs from its image's is
kept and **resized to the image (nearest)** when read (real GTA5 copies have such pairs); a
file without its partner is **skipped**; a file whose header cannot be read is **skipped**. All
three are counted and named in the :class:`PairCheck` report (:meth:`PairCheck.counts` for
``summary.json``, :meth:`PairCheck.write_log` for a log of one line per file). Only a wrong
layout (a missing folder) or no usable pair at all is an error. The headers are cached in
``DATA_DIR/seg-checks/<dataset>-<hash of the folder>.json`` (written atomically), each with the
file's size and modification time; a whole-set fingerprint (SHA-256 of every file's relative
name, size and mtime) says whether anything changed, and a changed set re-opens only the files
whose size or mtime differ. So a second run over 25,000 pairs only lists and stats them.

**Sizes as the papers run them.** Each dataset has a base size its images are resized to
(``BASE_SIZES``, ``Domain.image_size``, (H, W)): GTA5 720x1280, Cityscapes 512x1024, SYNTHIA
760x1280, as ADVENT (valeoai/ADVENT ``advent/domain_adaptation/config.py``:
``INPUT_SIZE_SOURCE = (1280, 720)``, ``INPUT_SIZE_TARGET = (1024, 512)``, test input
``(1024, 512)`` scored at ``OUTPUT_SIZE_TARGET = (2048, 1024)``) and DAFormer
(lhoyer/DAFormer ``configs/_base_/datasets/uda_gta_to_cityscapes_512x512.py``: ``Resize`` to
(1280, 720) for GTA5 and (1024, 512) for Cityscapes, then ``RandomCrop`` 512x512,
``RandomFlip``, ``Pad`` with ``seg_pad_val=255``; test input (1024, 512);
``uda_synthia_to_cityscapes_512x512.py``: (1280, 760) for SYNTHIA) do. Here the resize is to
exactly that size, as ADVENT's; DAFormer's mmseg ``Resize`` keeps the aspect ratio inside it
(1914x1052 -> 1280x704). The loaders' ``size`` defaults to ``"base"``, the domain's base size;
``None`` or ``"native"`` keeps each file's size; (H, W) is any other size.

:class:`SegFiles` yields ``(image, label)``: image (3, H, W) uint8, label (H, W) uint8 train
ids. Training: resize to ``size`` (the base size by default: crops then come from images at the
scale the network is evaluated at) times a random factor from ``scale`` (image bilinear,
label nearest), pad to ``crop`` where smaller (image 0, label 255, bottom/right; as mmseg's
``Pad(seg_pad_val=255)``, needed when a random factor below 1 makes the image smaller than the
crop), random crop, random horizontal flip. A crop larger than the images at scale 1 (after
the resize to ``size``, or any image's own size when ``size`` is native) cannot be meant and is
a one-line :class:`~dalab.errors.DalabError` when the loader is built, before anything is read.
Evaluation: the image is resized to ``size`` (the evaluation input, by default the base size,
e.g. 512x1024 for Cityscapes); with ``score_at="full"`` (the default) the label keeps its full
resolution and the model's logits are upsampled to it before scoring
(:func:`dalab.tasks.upsample_to`; the DeepLab-v2 convention: input 1024x512, scored at
2048x1024); ``score_at="input"`` resizes the label (nearest) to ``size`` instead, which is
cheaper but not the papers' protocol. Evaluation batches are grouped by (input size, label
size) (:class:`~dalab.data.streaming.SizeGroupedBatches`), so a split that mixes resolutions,
as GTA5 copies do, is scored at every label's own full resolution.

**Labels only where needed.** ``labels=False`` never opens a label file: each item's label is
an empty (0, 0) uint8 tensor, so a batch's label is an empty (B, 0, 0) tensor (it collates, costs
nothing, and cannot be mistaken for a label map); the images are exactly those read with labels.
A split without labels refuses ``labels=True`` with a one-line DataError. ``labels=None`` (the
default) means True for evaluation and, for training, whether the split has labels. The
adaptation target's training images need no labels: only the oracle (target-only) and scoring
read them.

Label ids are mapped to train ids 0..18 through
:data:`~dalab.data.cityscapes_labels.ID_TO_TRAIN_ID`; every other id of the table
(0..33) becomes :data:`~dalab.data.cityscapes_labels.IGNORE` (255). A value outside the
table (say 200), a label that is neither palette nor grey (an RGB colour label) or a file
that cannot be decoded is a one-line :class:`~dalab.errors.DataError` naming the file, raised
when the item is read (also from a ``DataLoader`` worker: the loader turns torch's multi-line
worker report back into the one line).

Randomness: every item draws from ``np.random.default_rng([seed, epoch, index])``, so a
batch does not depend on the worker that made it or on the number of workers, and a loader
restored to a position (``state_dict``) continues the exact stream (see
:mod:`dalab.data.streaming`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DalabError, DataError
from .cityscapes_labels import ID_TO_TRAIN_ID, IGNORE, KNOWN_IDS, NUM_CLASSES, TRAIN_NAMES
from .io import atomic_write_text
from .streaming import FileSplit, StreamLoader

__all__ = ["gta5_pairs", "gta5_split", "cityscapes_pairs", "synthia_pairs", "gta5_listing", "cityscapes_listing",
           "synthia_listing", "Listing", "PairCheck", "check_pairs", "read_label", "read_synthia_label",
           "read_image", "read_pair", "size_mismatches", "SegFiles", "SegLoader", "StreamSplit", "collate",
           "load_seg_domain", "BASE_SIZES", "GTA5_VAL", "SYNTHIA_TO_TRAIN_ID", "SYNTHIA_ABSENT",
           "SYNTHIA_13_LEFT_OUT", "NO_LABEL"]

CITYSCAPES_SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
GTA5_VAL = 500  # held-out GTA5 pairs for source validation (fewer in a copy of under 5000)
SHOW = 3  # files named in a one-line error
#: the size (H, W) each dataset's images are resized to before augmentation and for evaluation
#: (ADVENT's INPUT_SIZE_SOURCE / INPUT_SIZE_TARGET; DAFormer's Resize img_scale; see the module notes)
BASE_SIZES = {"gta5": (720, 1280), "cityscapes": (512, 1024), "synthia": (760, 1280)}
CHECK_FORMAT = 1  # of the cached header check
CHECK_THREADS = 8  # header reads in flight (file systems over a network answer faster in parallel)

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

#: the label of an item read without labels: (0, 0) uint8; a batch of them is (B, 0, 0)
NO_LABEL = (0, 0)

Pair = tuple[Path, "Path | None"]
HW = tuple[int, int]


# ------------------------------------------------------------------------ indexing

@dataclass
class Listing:
    """The files of one dataset folder (or split), paired by name; nothing opened yet.

    ``pairs``: sorted (image, label) pairs, label None for a split without labels; ``unpaired``:
    (file, why) for each file whose partner is missing, skipped."""

    root: Path
    pairs: list
    unpaired: list = field(default_factory=list)
    labelled: bool = True


def _root(root, what: str) -> Path:
    p = Path(root).expanduser().resolve()
    if not p.is_dir():
        raise DataError(f"{p}: {what} folder not found")
    return p


def _pngs(d: Path) -> dict[str, Path]:
    """Visible ``*.png`` files of one folder by stem."""
    return {e.name[:-4]: Path(e.path) for e in os.scandir(d)
            if e.name.lower().endswith(".png") and not e.name.startswith(".") and e.is_file()}


def _pair_up(images: dict[str, Path], labels: dict[str, Path], label_dir: Path, image_dir: Path,
             root: Path) -> Listing:
    """Pairs by key; a file without its partner is listed in ``unpaired`` (skipped), not an error."""
    alone = [(images[k], f"image without a label in {label_dir}/") for k in images if k not in labels]
    alone += [(labels[k], f"label without an image in {image_dir}/") for k in labels if k not in images]
    return Listing(root, [(images[k], labels[k]) for k in sorted(images) if k in labels], sorted(alone))


def gta5_listing(root) -> Listing:
    """The (image, label) pairs and unpaired files of a GTA5 folder ``root/images/*.png`` +
    ``root/labels/*.png``."""
    r = _root(root, "GTA5")
    missing = [d for d in ("images", "labels") if not (r / d).is_dir()]
    if missing:
        raise DataError(f"{r}: not a GTA5 (Playing for Data) folder: expected images/ and labels/ "
                        f"(images/00001.png, labels/00001.png), no {' or '.join(d + '/' for d in missing)}")
    images, labels = _pngs(r / "images"), _pngs(r / "labels")
    if not images and not labels:
        raise DataError(f"{r}: images/ and labels/ hold no PNG files")
    return _pair_up(images, labels, r / "labels", r / "images", r)


def gta5_pairs(root) -> list[Pair]:
    """Every (image, label) pair of a GTA5 folder, sorted (files without a partner left out)."""
    return gta5_listing(root).pairs


def gta5_split(pairs: list[Pair], n_val: int | None = None) -> tuple[list[Pair], list[Pair]]:
    """(train, val): the ``n_val`` pairs whose image file names have the lowest SHA-1 hashes are
    held out (default ``min(500, max(1, N // 10))``, none for a single pair); the order of
    ``pairs`` does not matter."""
    if n_val is None:
        n_val = min(GTA5_VAL, max(1, len(pairs) // 10)) if len(pairs) > 1 else 0
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


def cityscapes_listing(root, split: str) -> Listing:
    """The (leftImg8bit image, gtFine labelIds) pairs of one Cityscapes split; ``train`` without
    ``gtFine/train/`` is unlabelled (every label None)."""
    if split not in CITYSCAPES_SPLITS:
        raise DataError(f"Cityscapes has no split {split!r} (train, val, test)")
    r = _root(root, "Cityscapes")
    img_dir, lab_dir = r / "leftImg8bit" / split, r / "gtFine" / split
    labelled = lab_dir.is_dir() or split != "train"
    for d, pattern in ((img_dir, f"<city>/<city>_<seq>_<frame>{IMAGE_SUFFIX}"),
                       (lab_dir, f"<city>/<city>_<seq>_<frame>{LABEL_SUFFIX}"))[:2 if labelled else 1]:
        if not d.is_dir():
            raise DataError(f"{r}: not a Cityscapes folder: expected {d.relative_to(r)}/{pattern}, "
                            f"no {d.relative_to(r)}/")
    images = _city_files(img_dir, IMAGE_SUFFIX)
    if not images:
        raise DataError(f"{img_dir}: no <city>/*{IMAGE_SUFFIX} images (an empty split)")
    if not labelled:
        return Listing(r, [(images[k], None) for k in sorted(images)], [], labelled=False)
    return _pair_up(images, _city_files(lab_dir, LABEL_SUFFIX), lab_dir, img_dir, r)


def cityscapes_pairs(root, split: str) -> list[Pair]:
    """Every (leftImg8bit image, gtFine labelIds) pair of one Cityscapes split, sorted (label None
    for an unlabelled ``train``; files without a partner left out)."""
    return cityscapes_listing(root, split).pairs


def synthia_listing(root) -> Listing:
    """The (image, label) pairs and unpaired files of a SYNTHIA-RAND-CITYSCAPES folder
    ``root/RGB/*.png`` + ``root/GT/LABELS/*.png``."""
    r = _root(root, "SYNTHIA")
    img_dir, lab_dir = r / "RGB", r / "GT" / "LABELS"
    missing = [str(d.relative_to(r)) + "/" for d in (img_dir, lab_dir) if not d.is_dir()]
    if missing:
        raise DataError(f"{r}: not a SYNTHIA-RAND-CITYSCAPES folder: expected RGB/ and GT/LABELS/ "
                        f"(RGB/0000000.png, GT/LABELS/0000000.png), no {' or '.join(missing)}")
    images, labels = _pngs(img_dir), _pngs(lab_dir)
    if not images and not labels:
        raise DataError(f"{r}: RGB/ and GT/LABELS/ hold no PNG files")
    return _pair_up(images, labels, lab_dir, img_dir, r)


def synthia_pairs(root) -> list[Pair]:
    """Every (image, label) pair of a SYNTHIA-RAND-CITYSCAPES folder, sorted (files without a
    partner left out)."""
    return synthia_listing(root).pairs


# ------------------------------------------------------------------------ the pair check

def _hw_text(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


@dataclass
class PairCheck:
    """What the header check of a dataset found (see the module notes); sizes are (H, W).

    ``pairs``: the usable (image, label) pairs (label None in an unlabelled split), sorted, with
    ``image_sizes`` and ``label_sizes`` (None without a label) from the file headers;
    ``resized``: (image, label, image size, label size) for each label whose size differs from its
    image's (resized to the image, nearest, when read); ``unpaired``: (file, why) for each file
    without its partner (skipped); ``unreadable``: (file, why) for each file whose header could
    not be read (its pair skipped); ``opened``: headers read this time (0: all from the cache).
    """

    name: str
    pairs: list = field(default_factory=list)
    image_sizes: list = field(default_factory=list)
    label_sizes: list = field(default_factory=list)
    resized: list = field(default_factory=list)
    unpaired: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    opened: int = 0

    def counts(self) -> dict:
        """The numbers for ``summary.json``."""
        return {"pairs": len(self.pairs), "labels_resized": len(self.resized),
                "unpaired_skipped": len(self.unpaired), "unreadable_skipped": len(self.unreadable)}

    @property
    def affected(self) -> int:
        """Files named in the log: resized labels, unpaired and unreadable files."""
        return len(self.resized) + len(self.unpaired) + len(self.unreadable)

    def summary(self) -> str:
        """One line: the usable pairs and what was resized or skipped."""
        c = self.counts()
        parts = [f"{c['pairs']} usable pair{'s' * (c['pairs'] != 1)}"]
        if c["labels_resized"]:
            parts.append(f"{c['labels_resized']} label{'s' * (c['labels_resized'] != 1)} of another size than "
                         "the image resized to it (nearest)")
        if c["unpaired_skipped"]:
            parts.append(f"{c['unpaired_skipped']} file{'s' * (c['unpaired_skipped'] != 1)} without a partner "
                         "skipped")
        if c["unreadable_skipped"]:
            parts.append(f"{c['unreadable_skipped']} unreadable file{'s' * (c['unreadable_skipped'] != 1)} skipped")
        return f"{self.name}: " + "; ".join(parts)

    def log_lines(self) -> list[str]:
        """One line per affected file: what it is and what was done."""
        lines = [f"resized\t{lab}\tlabel {_hw_text(lhw)}, resized (nearest) to its image {img} ({_hw_text(ihw)})"
                 for img, lab, ihw, lhw in self.resized]
        lines += [f"skipped\t{f}\t{why}" for f, why in self.unpaired]
        lines += [f"skipped\t{f}\tunreadable: {why}" for f, why in self.unreadable]
        return lines

    def write_log(self, path) -> Path:
        """Write the log (a ``#`` summary line, then :meth:`log_lines`, tab-separated) atomically."""
        path = Path(path)
        atomic_write_text(path, "\n".join([f"# {self.summary()}"] + self.log_lines()) + "\n")
        return path

    @classmethod
    def merge(cls, name: str, checks) -> "PairCheck":
        """One report for several checks (e.g. the splits of one dataset)."""
        out = cls(name)
        for c in checks:
            for f in ("pairs", "image_sizes", "label_sizes", "resized", "unpaired", "unreadable"):
                getattr(out, f).extend(getattr(c, f))
            out.opened += c.opened
        return out

    def sizes_of(self, pairs) -> list:
        """(image size, label size) of each of ``pairs`` (usable pairs of this check)."""
        at = {p: (i, lab) for p, i, lab in zip(self.pairs, self.image_sizes, self.label_sizes)}
        return [at[p] for p in pairs]


def _header(path: Path):
    """(H, W) from an image file's header, or the reason it cannot be read (a str)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
        return int(h), int(w)
    except FileNotFoundError:
        return "file not found"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"not a readable image ({type(e).__name__}: {e})"


def _cache_path(cache_dir, name: str, root: Path) -> Path:
    kind = "".join(c if c.isalnum() else "-" for c in name.split(":", 1)[0]) or "files"
    key = hashlib.sha1(f"{name}\n{root}".encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "seg-checks" / f"{kind}-{key}.json"


def _read_cache(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        c = json.loads(path.read_text())
        return c if isinstance(c, dict) and c.get("format") == CHECK_FORMAT else {}
    except (OSError, ValueError):
        return {}  # no cache, or a damaged one: check again


def check_pairs(pairs, root=None, unpaired=(), name: str = "", cache_dir=None, progress: bool | None = None
                ) -> PairCheck:
    """Read every file's header (size only) and sort the pairs into usable, resized and skipped.

    ``pairs``: (image, label) paths, label None for an unlabelled split; ``root``: the folder the
    cache names files relative to (and the cache's key, with ``name``); ``unpaired``: (file, why)
    already found by the listing, carried into the report; ``cache_dir``: where
    ``seg-checks/`` lives (None: no cache); ``progress``: a tqdm bar on stderr (None: only when
    stderr is a terminal). See the module notes for what is cached.
    """
    root = Path(root) if root is not None else None
    rel = (lambda p: Path(p).relative_to(root).as_posix()) if root is not None else (lambda p: str(p))
    files = sorted({Path(f) for p in pairs for f in p if f is not None})
    stats, headers = {}, {}
    for f in files:
        try:
            st = os.stat(f)
            stats[f] = (st.st_size, st.st_mtime_ns)
        except OSError as e:
            headers[f] = f"not readable ({type(e).__name__}: {e.strerror or e})"
    fingerprint = hashlib.sha256("\n".join(f"{rel(f)}\t{s}\t{m}" for f, (s, m) in stats.items()).encode()
                                 ).hexdigest()
    cache_file = _cache_path(cache_dir, name, root) if cache_dir is not None and root is not None else None
    cache = _read_cache(cache_file)
    known = cache.get("headers", {}) if isinstance(cache.get("headers"), dict) else {}
    to_open = []
    for f, st in stats.items():
        entry = known.get(rel(f))
        if isinstance(entry, list) and len(entry) in (3, 4) and tuple(entry[:2]) == st:
            headers[f] = tuple(entry[2:]) if len(entry) == 4 else entry[2]
        else:
            to_open.append(f)
    if to_open:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(to_open), desc=f"checking {name or 'files'}", unit="file", file=sys.stderr,
                   disable=None if progress is None else not progress, mininterval=0.5, leave=False)
        with ThreadPoolExecutor(min(CHECK_THREADS, len(to_open))) as ex:
            for f, h in zip(to_open, ex.map(_header, to_open)):
                headers[f] = h
                bar.update()
        bar.close()
    if cache_file is not None and (to_open or cache.get("fingerprint") != fingerprint):
        entries = {rel(f): [*st, *(headers[f] if isinstance(headers[f], tuple) else (headers[f],))]
                   for f, st in stats.items()}
        try:
            atomic_write_text(cache_file, json.dumps({"format": CHECK_FORMAT, "root": str(root), "name": name,
                                                      "fingerprint": fingerprint, "headers": entries},
                                                     separators=(",", ":")))
        except (OSError, DalabError):
            pass  # a cache that cannot be written costs the next run a re-check, nothing else
    report = PairCheck(name, unpaired=list(unpaired), opened=len(to_open))
    bad = set()
    for f in files:
        if isinstance(headers[f], str):
            report.unreadable.append((f, headers[f]))
            bad.add(f)
    for img, lab in pairs:
        img, lab = Path(img), None if lab is None else Path(lab)
        if img in bad or lab in bad:
            continue
        ihw, lhw = headers[img], None if lab is None else headers[lab]
        report.pairs.append((img, lab))
        report.image_sizes.append(ihw)
        report.label_sizes.append(lhw)
        if lhw is not None and lhw != ihw:
            report.resized.append((img, lab, ihw, lhw))
    return report


def _require_usable(check: PairCheck, what: str) -> None:
    if check.pairs:
        return
    skipped = check.unpaired + check.unreadable
    names = ", ".join(f"{f} ({why})" for f, why in skipped[:SHOW]) + (", ..." if len(skipped) > SHOW else "")
    raise DataError(f"{what}: no usable pair: {check.summary().split(': ', 1)[1]}"
                    + (f" ({names})" if names else ""))


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
    only (no pixel is decoded). Such labels are resized to their image when read;
    :func:`check_pairs` finds them (and more) for a whole dataset."""
    out = []
    for image_path, label_path in pairs:
        with _open(Path(image_path)) as a, _open(Path(label_path)) as b:
            if a.size != b.size:
                out.append((Path(image_path), Path(label_path), a.size, b.size))
    return out


# how label files are read, by format: (path, the file opened with PIL) -> (H, W) uint8 train ids
LABEL_READERS = {"cityscapes": read_label,  # Cityscapes label ids: GTA5 and Cityscapes
                 "synthia": read_synthia_label}


def _nearest(lab: np.ndarray, hw: HW) -> np.ndarray:
    h, w = hw
    if lab.shape == (h, w):
        return lab
    return np.asarray(Image.fromarray(lab).resize((w, h), Image.NEAREST))


def read_image(image_path: Path) -> Image.Image:
    """An image file as an RGB PIL image (decoded), DataError naming it when it cannot be."""
    with _open(Path(image_path)) as img:
        return _decode(img, Path(image_path)).convert("RGB")


def read_pair(image_path: Path, label_path: Path, label_format: str = "cityscapes") -> tuple[Image.Image, np.ndarray]:
    """(RGB PIL image, (H, W) uint8 train ids at the image's size); the label is read by
    ``LABEL_READERS[label_format]`` and, when its size differs from the image's, resized to it
    (nearest: label ids are not blended)."""
    with _open(Path(image_path)) as img, _open(Path(label_path)) as lab:
        rgb = _decode(img, Path(image_path)).convert("RGB")
        ids = LABEL_READERS[label_format](Path(label_path), lab)
    return rgb, _nearest(ids, (rgb.height, rgb.width))


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


def _size(v, base) -> HW | None:
    """``size``: "base" -> ``base``, None or "native" -> None (each file's size), else (H, W)."""
    if isinstance(v, str):
        if v == "base":
            return base
        if v == "native":
            return None
        raise DalabError(f"size must be 'base', 'native', None or (height, width), got {v!r}")
    return _hw(v, "size")


def _resize(img: Image.Image, lab: np.ndarray | None, hw: tuple[int, int], label_too: bool = True):
    h, w = hw
    if (img.height, img.width) != (h, w):
        img = img.resize((w, h), Image.BILINEAR)
    if label_too and lab is not None:
        lab = _nearest(lab, (h, w))
    return img, lab


def _no_label() -> torch.Tensor:
    return torch.empty(NO_LABEL, dtype=torch.uint8)


class SegFiles(Dataset):
    """(image (3, H, W) uint8, label (H, W) uint8 train ids) for each (image file, label file).

    ``train=True``: resize to ``size`` (None: the file's size) times a factor drawn from
    ``scale`` (None: 1), pad to ``crop`` (image 0, label 255) and crop at random, flip
    horizontally with probability 0.5 when ``flip``. ``train=False``: resize the image to
    ``size``; the label stays at full size (``score_at="full"``) or is resized to ``size``
    (``score_at="input"``). ``labels=False``: no label file is opened and every label is an
    empty (0, 0) tensor; the images are exactly those read with labels. Item ``i`` of epoch
    ``e`` draws from ``np.random.default_rng([seed, e, i])``; an index may be ``i`` (the epoch of
    :meth:`set_epoch`) or ``(i, e)`` (what :class:`~dalab.data.streaming.Epoched` yields).
    ``sizes``: ((H, W) image, (H, W) label or None) of each pair, from the header check, for
    :meth:`batch_key` (read from the headers when not given).
    """

    def __init__(self, pairs, train: bool, crop=None, scale=(0.5, 1.5), flip: bool = True, size=None,
                 seed: int = 0, score_at: str = "full", label_format: str = "cityscapes", labels: bool = True,
                 sizes=None):
        self.pairs = [(Path(a), None if b is None else Path(b)) for a, b in pairs]
        if label_format not in LABEL_READERS:
            raise DalabError(f"label_format must be one of {', '.join(map(repr, LABEL_READERS))}, got {label_format!r}")
        self.label_format = label_format
        self.labels = bool(labels)
        if self.labels:
            missing = [a for a, b in self.pairs if b is None]
            if missing:
                raise DataError(f"{missing[0]}: has no label file ({len(missing)} of {len(self.pairs)} images "
                                "without labels): read them with labels=False")
        self.train = bool(train)
        self.crop = _hw(crop, "crop")
        self.size = _size(size, None)
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
        if sizes is not None and len(sizes) != len(self.pairs):
            raise DalabError(f"sizes: {len(sizes)} entries for {len(self.pairs)} pairs")
        self.sizes = None if sizes is None else list(sizes)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def image_sizes(self) -> list[HW]:
        """(H, W) of each image as stored (from the header check, else read from the headers now)."""
        if self.sizes is None:
            self.sizes = []
            for a, b in self.pairs:
                with _open(a) as im:
                    self.sizes.append(((im.height, im.width), None))
        return [s[0] for s in self.sizes]

    def batch_key(self, i: int) -> tuple:
        """(image size fed, label size) of evaluation item ``i``: items of one key stack into a batch.
        A label has its image's stored size (a label of another size is resized to it when read)."""
        native = self.image_sizes()[i]
        fed = self.size or native
        if not self.labels:
            return fed, NO_LABEL
        return fed, native if self.score_at == "full" else fed

    def __getitem__(self, key):
        # (index, epoch), or (index, epoch, class) from rare-class sampling: the crop must show that class
        index, epoch, cls = (*key, None)[:3] if isinstance(key, tuple) else (key, self.epoch, None)
        image_path, label_path = self.pairs[index]
        if self.labels:
            img, lab = read_pair(image_path, label_path, label_format=self.label_format)
        else:
            img, lab = read_image(image_path), None
        if self.train:
            img, lab = self._augment(img, lab, np.random.default_rng([self.seed, epoch, index]), cls)
        elif self.size is not None:
            img, lab = _resize(img, lab, self.size, label_too=self.score_at == "input")
        x = np.asarray(img, np.uint8).transpose(2, 0, 1)
        y = _no_label() if lab is None else torch.from_numpy(np.require(lab, requirements=["C", "W"]))
        return torch.from_numpy(np.require(x, requirements=["C", "W"])), y

    def _augment(self, img: Image.Image, lab: np.ndarray | None, rng: np.random.Generator, cls: int | None = None):
        h, w = self.size or (img.height, img.width)
        s = rng.uniform(*self.scale) if self.scale else 1.0
        img, lab = _resize(img, lab, (max(1, round(h * s)), max(1, round(w * s))))
        a = np.asarray(img, np.uint8)
        if self.crop is not None:
            ch, cw = self.crop
            ph, pw = max(ch - a.shape[0], 0), max(cw - a.shape[1], 0)
            if ph or pw:
                a = np.pad(a, ((0, ph), (0, pw), (0, 0)), constant_values=0)
                if lab is not None:
                    lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=IGNORE)
            if cls is not None and lab is not None:  # rare-class sampling: re-crop until the class is in the crop
                from .rcs import crop_with_class, min_crop_pixels

                a, lab = crop_with_class(a, lab, (ch, cw), cls, min_crop_pixels((ch, cw)), rng)
            else:
                y0 = int(rng.integers(0, a.shape[0] - ch + 1))
                x0 = int(rng.integers(0, a.shape[1] - cw + 1))
                a = a[y0:y0 + ch, x0:x0 + cw]
                if lab is not None:
                    lab = lab[y0:y0 + ch, x0:x0 + cw]
        if self.flip and rng.random() < 0.5:
            a = a[:, ::-1]
            if lab is not None:
                lab = lab[:, ::-1]
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


# ------------------------------------------------------------------------ the split and its loader

#: the loader of a :class:`StreamSplit` (the generic :class:`~dalab.data.streaming.StreamLoader`)
SegLoader = StreamLoader


@dataclass(eq=False)
class StreamSplit(FileSplit):
    """A split too large for memory: (image file, label file) pairs, read by :meth:`loader`.

    ``labelled``: whether every pair has its label file (a label None makes it False);
    ``base_size``: the (H, W) that ``size="base"`` means (the domain's ``image_size``; None: each
    file's own size); ``sizes``: ((H, W) image, (H, W) label or None) per pair from the header
    check (read from the headers when needed and not given). ``streamed`` is True; ``tensors()``,
    ``x`` and ``y`` raise a DataError rather than read every image into memory.
    """

    pairs: list
    labelled: bool = True
    name: str = "split"
    label_format: str = "cityscapes"  # how label files are read (SegFiles)
    base_size: tuple | None = None
    sizes: list | None = None

    collate_fn = staticmethod(collate)

    def __post_init__(self):
        self.labelled = bool(self.labelled) and all(lab is not None for _, lab in self.pairs)
        self.base_size = _hw(self.base_size, "base_size")

    def __len__(self) -> int:
        return len(self.pairs)

    def class_counts(self, limit: int | None = None, cache_dir=None, progress: bool | None = None):
        """Each class's pixels in each of the first ``limit`` label files (for rare-class sampling:
        :func:`dalab.data.rcs.count_class_pixels_files`, read once and cached in ``cache_dir``)."""
        from .rcs import count_class_pixels_files

        if not self.labelled:
            raise DataError(f"{self.name}: has no labels, so its classes cannot be counted")
        pairs = self.pairs if limit is None else self.pairs[:max(int(limit), 0)]
        return count_class_pixels_files([lab for _, lab in pairs], NUM_CLASSES, LABEL_READERS[self.label_format],
                                        self.label_format, cache_dir=cache_dir,
                                        progress=True if progress is None else progress)

    def _labels(self, labels: bool | None, train: bool) -> bool:
        if labels is None:  # scoring needs labels; training reads them where there are some
            labels = self.labelled if train else True
        if labels and not self.labelled:
            raise DataError(f"{self.name}: an unlabelled split (no label files), so it cannot be scored or train "
                            "the oracle; read its images alone with labels=False")
        return bool(labels)

    def dataset(self, train: bool, crop=None, scale=(0.5, 1.5), flip: bool = True, size="base", seed: int = 0,
                score_at: str = "full", limit: int | None = None, labels: bool | None = None) -> SegFiles:
        """The :class:`SegFiles` over this split (its first ``limit`` pairs when given).

        ``size``: "base" (the default: :attr:`base_size`), None or "native" (each file's size),
        or (H, W); ``labels``: True (read them; a DataError for a split without labels), False
        (never open a label file; each label is an empty (0, 0) tensor) or None (the default:
        for training, whether the split has labels; for evaluation, True)."""
        n = len(self.pairs) if limit is None else max(int(limit), 0)
        return SegFiles(self.pairs[:n], train, crop=crop, scale=scale, flip=flip, size=_size(size, self.base_size),
                        seed=seed, score_at=score_at, label_format=self.label_format,
                        labels=self._labels(labels, train), sizes=None if self.sizes is None else self.sizes[:n])

    def batch_keys(self, data: SegFiles) -> list:
        return [data.batch_key(i) for i in range(len(data))]

    def check_training(self, data: SegFiles, batch_size: int) -> None:
        """A crop larger than the images at scale 1 (after the resize to ``size``) is refused here."""
        if data.crop is None:
            return
        ch, cw = data.crop
        sizes = [data.size] if data.size is not None else sorted(set(data.image_sizes()))
        small = [hw for hw in sizes if ch > hw[0] or cw > hw[1]]
        if not small:
            return
        if data.size is not None:
            raise DalabError(f"{self.name}: crop {ch}x{cw} (HxW) is larger than the {_hw_text(data.size)} images it "
                             f"would be cut from (resized to size {_hw_text(data.size)}); use a crop of at most "
                             f"{_hw_text(data.size)}")
        n = sum(1 for hw in data.image_sizes() if hw in small)
        least = min(small, key=lambda hw: hw[0] * hw[1])
        raise DalabError(f"{self.name}: crop {ch}x{cw} (HxW) is larger than {n} of the {len(data)} images at their "
                         f"own size (the smallest {_hw_text(least)}); use a smaller crop or resize them with size=")

    def loader(self, batch_size: int, train: bool, workers: int = 2, seed: int = 0, rank: int = 0,
               world_size: int = 1, crop=None, scale=(0.5, 1.5), flip: bool = True, size="base",
               score_at: str = "full", limit: int | None = None, pin_memory: bool | None = None,
               labels: bool | None = None, sampler=None) -> StreamLoader:
        """A :class:`~dalab.data.streaming.StreamLoader` of (images (B, 3, H, W) uint8, labels
        (B, H, W) uint8) batches over this split (labels (B, 0, 0) with ``labels=False``).

        Training: shuffled (DistributedSampler(shuffle=True, seed, drop_last=True) over
        ``world_size`` ranks, else a RandomSampler seeded by ``seed`` + epoch), only full
        batches; a crop larger than the images at scale 1 is a DalabError here. Evaluation: every
        item once over the ranks, in batches of one (input size, label size)
        (:class:`~dalab.data.streaming.SizeGroupedBatches`; no padding, so reduce the confusion
        matrices after the loop). ``size``, ``labels``: see :meth:`dataset`. ``pin_memory``
        defaults to whether CUDA is available. ``sampler``: training items drawn by it instead (e.g.
        rare-class sampling, :class:`~dalab.data.rcs.RareClassDataSampler`).
        """
        return super().loader(batch_size, train, workers=workers, seed=seed, rank=rank, world_size=world_size,
                              pin_memory=pin_memory, sampler=sampler, crop=crop, scale=scale, flip=flip, size=size,
                              score_at=score_at, limit=limit, labels=labels)


# ------------------------------------------------------------------------ the domains

def _splits_of(check: PairCheck, parts: dict, spec: str, base: HW, label_format: str = "cityscapes") -> dict:
    return {s: StreamSplit(p, all(lab is not None for _, lab in p), f"{spec} {s}", label_format=label_format,
                           base_size=base, sizes=check.sizes_of(p)) for s, p in parts.items()}


def load_seg_domain(spec: str, cache_dir=None, progress: bool | None = None):
    """``gta5:PATH``, ``cityscapes:PATH`` or ``synthia:PATH`` -> a segmentation
    :class:`~dalab.data.base.Domain`, every pair checked from its headers (:func:`check_pairs`;
    cached under ``cache_dir`` when given; ``progress``: the bar, None = when stderr is a terminal).
    ``Domain.pair_check`` holds the report, ``Domain.image_size`` the base size."""
    from .base import Domain

    kind, _, path = spec.partition(":")
    if not path:
        raise DataError(f"{kind}: needs a path, e.g. --source {kind}:/data/{kind.upper()}")
    if kind not in BASE_SIZES:
        raise DataError(f"unknown segmentation dataset {kind!r} (gta5:PATH, cityscapes:PATH or synthia:PATH)")
    base = BASE_SIZES[kind]
    size_text = f"resized to {base[1]}x{base[0]} (WxH)"
    if kind in ("gta5", "synthia"):
        listing = (gta5_listing if kind == "gta5" else synthia_listing)(path)
        check = check_pairs(listing.pairs, listing.root, listing.unpaired, spec, cache_dir, progress)
        _require_usable(check, spec)
        train, val = gta5_split(check.pairs)
        fmt = "cityscapes" if kind == "gta5" else "synthia"
        splits = _splits_of(check, {"train": train, "val": val}, spec, base, fmt)
        n = len(check.pairs)
        if kind == "gta5":
            desc = (f"GTA5 (Playing for Data) at {listing.root}, {n} images: {len(train)} train, {len(val)} held out "
                    f"for source validation; labels mapped to the {NUM_CLASSES} Cityscapes train ids; {size_text}")
        else:
            desc = (f"SYNTHIA-RAND-CITYSCAPES at {listing.root}, {n} images: {len(train)} train, {len(val)} "
                    f"held out for source validation; classes mapped to the {NUM_CLASSES} Cityscapes train ids "
                    f"({', '.join(SYNTHIA_ABSENT)} never occur); {size_text}")
    else:
        checks = {}
        for s in ("train", "val"):
            listing = cityscapes_listing(path, s)
            checks[s] = check_pairs(listing.pairs, listing.root, listing.unpaired, f"{spec} {s}", cache_dir,
                                    progress)
            _require_usable(checks[s], f"{spec} {s}")
        check = PairCheck.merge(spec, checks.values())
        splits = _splits_of(check, {s: c.pairs for s, c in checks.items()}, spec, base)
        r = listing.root
        train_labels = "labelled; labels only for the oracle" if splits["train"].labelled else "unlabelled"
        desc = (f"Cityscapes (leftImg8bit + gtFine) at {r}, {len(splits['train'])} train images "
                f"(the adaptation target, {train_labels}), {len(splits['val'])} val images "
                f"(scored); {NUM_CLASSES} train ids; {size_text}")
    if check.affected:
        desc += f"; {check.summary().split(': ', 1)[1]}"
    return Domain(spec, desc, splits, NUM_CLASSES, TRAIN_NAMES, task="segmentation", image_size=base,
                  pair_check=check)
