"""Photos read from their files at their own size: the benchmarks and your own folders, streamed.

``load_domain("office31:/data/office31/amazon")`` (and ``officehome:``, ``visda:``,
``domainnet:``, ``imagelist:``, see :mod:`dalab.data.photo_layouts` for the names, layouts and
protocols) returns a classification :class:`~dalab.data.domains.Domain` whose splits are
:class:`PhotoSplit` lists of (file, label) items, read by a ``DataLoader`` with workers and the
standard transforms (:mod:`dalab.data.photo_transforms`). Nothing is cached or converted.

``folder:PATH`` chooses between two paths (:func:`plan_folder`, the choice and its reason go into
the domain's description):

- **resident** (the digits path, unchanged): every image decoded once to 28 x 28 RGB and held in
  memory (``data/folder.py``, cached as an ``.npz``), when ``image_size`` is 28, or when it is
  not given and the folder's images are small (median shorter side of up to 64 sampled files at
  most :data:`SMALL_SIDE` = 64 px: digits, SVHN-like crops, icons); and only while the 28 x 28
  copy takes at most :data:`RESIDENT_MAX_BYTES` (2 GiB, about 900,000 images);
- **streamed** otherwise: photos at their own size, read from the files by worker processes and
  transformed per item (random resized crop and flip for training, centre crop for evaluation)
  at ``image_size`` (224 when not given).

**Unreadable files never crash a run.** Before anything trains, :func:`load_photo_domain` opens
the header of every file (:func:`dalab.data.images.check_headers`: no decoding; a progress bar
for more than 2,000 files). Files that cannot be opened are left out of every split and listed
in ``Domain.skipped`` as (file, reason), for a log file and the run summary; with
``strict=True`` the first of them is one DataError instead. A split with no readable file left
is a DataError. A file whose header reads but whose pixels do not (a truncated JPEG) is caught
when it is read: :class:`PhotoFiles` then returns a **substitute**, the next item of the split
(in index order, wrapping around) that decodes, with that item's own label and the crop and flip
the failed item would have had, so the batch keeps its size and the run its determinism. The
loader counts these (:attr:`PhotoLoader.decode_failures`: file -> reason;
:attr:`PhotoLoader.substituted`: how many items were replaced), across worker processes. In
evaluation a substitute is scored in place of the unreadable image, and the count says so.

Items: ``(image (3, S, S) uint8, label int64)``, label -1 for an unlabelled item. Item ``i`` of
epoch ``e`` draws from ``np.random.default_rng([seed, e, i])``; :class:`PhotoLoader` passes the
epoch with each index (as the segmentation loader does), so a batch does not depend on the
worker that made it or on the number of workers.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .images import check_headers, decode_photo, open_image
from .photo_layouts import PhotoIndex, index_photos
from .photo_transforms import RATIO, SCALE, check_transform_args, eval_transform, train_transform
from .streaming import FileSplit, StreamLoader

__all__ = ["PhotoFiles", "PhotoLoader", "PhotoSplit", "FolderPlan", "plan_folder", "load_photo_domain",
           "load_folder", "collate_photos", "SMALL_SIDE", "RESIDENT_MAX_BYTES", "DEFAULT_IMAGE_SIZE"]

DEFAULT_IMAGE_SIZE = 224     # ImageNet's crop, the backbones' native input
SMALL_SIDE = 64              # images up to this shorter side (median) are digit-like: resident at 28 x 28
RESIDENT_MAX_BYTES = 2 << 30  # the largest resident copy (28 * 28 * 3 bytes per image)
SAMPLE = 64                  # files whose headers decide a folder's plan


# ------------------------------------------------------------------------ the dataset

class _Fetched(list):
    """A batch's items plus the decode failures met while reading them (see :meth:`PhotoFiles.__getitems__`)."""

    failed: list


class PhotoFiles(Dataset):
    """``(image (3, S, S) uint8, label int64)`` for each (file, label) item.

    ``train=True``: :func:`~dalab.data.photo_transforms.train_transform` (resize the shorter side
    to ``resize``, random resized crop to ``image_size``, random flip); ``train=False``:
    :func:`~dalab.data.photo_transforms.eval_transform` (resize, centre crop). An index is ``i``
    (the epoch of :meth:`set_epoch`) or ``(i, epoch)``. A file that fails to decode is replaced as
    the module docstring says; :attr:`failures` holds (file index -> reason) for this process.
    """

    def __init__(self, items, train: bool, image_size: int = DEFAULT_IMAGE_SIZE, resize: int | None = None,
                 scale=SCALE, ratio=RATIO, flip: bool = True, resize_mode: str = "shorter", seed: int = 0):
        self.items = [(Path(f), int(y)) for f, y in items]
        self.train = bool(train)
        self.image_size, self.resize = check_transform_args(image_size, resize, resize_mode, scale, ratio)
        self.scale, self.ratio = tuple(float(v) for v in scale), tuple(float(v) for v in ratio)
        self.flip, self.resize_mode, self.seed = bool(flip), resize_mode, int(seed)
        self.epoch = 0
        self.failures: dict[int, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, index: int, epoch: int) -> tuple[tuple[torch.Tensor, torch.Tensor], list[tuple[int, int, str]]]:
        """(sample, [(item index, failed file index, reason)])."""
        failed = []
        n = len(self.items)
        for step in range(n):
            j = (index + step) % n
            if j in self.failures:
                failed.append((index, j, self.failures[j]))
                continue
            try:
                img = decode_photo(self.items[j][0], min_side=self.resize)
                break
            except DataError as e:
                self.failures[j] = str(e)
                failed.append((index, j, str(e)))
        else:
            raise DataError(f"{self.items[index][0]}: not readable, and no other file of its split ({n}) is either")
        if self.train:
            x = train_transform(img, np.random.default_rng([self.seed, epoch, index]), self.image_size, self.resize,
                                self.scale, self.ratio, self.flip, self.resize_mode)
        else:
            x = eval_transform(img, self.image_size, self.resize, self.resize_mode)
        return (torch.from_numpy(x), torch.tensor(self.items[j][1], dtype=torch.int64)), failed

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        return self._read(int(index), int(epoch))[0]

    def __getitems__(self, keys) -> _Fetched:
        """A batch's samples (what a ``DataLoader`` fetches in one go), with its decode failures attached
        for :func:`collate_photos` (which runs in the same worker)."""
        out = _Fetched()
        out.failed = []
        for key in keys:
            index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
            sample, failed = self._read(int(index), int(epoch))
            out.append(sample)
            out.failed.extend(failed)
        return out


def collate_photos(batch) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(images (B, 3, S, S) uint8, labels (B,) int64, [(item, failed file, reason)])."""
    xs, ys = zip(*batch)
    return torch.stack(xs), torch.stack(ys), list(getattr(batch, "failed", []))


class PhotoLoader(StreamLoader):
    """A ``DataLoader`` of (images (B, 3, S, S) uint8, labels (B,) int64) batches.

    Each pass is one epoch; :meth:`set_epoch`, :meth:`forever` and the saved position as for every
    :class:`~dalab.data.streaming.StreamLoader`.
    Counts what the workers met: :attr:`decode_failures` (file -> one-line reason, each file once)
    and :attr:`substituted` (items replaced by the next readable one, every time it happened).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decode_failures: dict[Path, str] = {}
        self.substituted = 0

    def __iter__(self):
        items = self.dataset.items
        for x, y, failed in super().__iter__():
            if failed:
                self.substituted += len({item for item, _, _ in failed})
                for _, j, reason in failed:
                    self.decode_failures.setdefault(items[j][0], reason)
            yield x, y


# ------------------------------------------------------------------------ a split

@dataclass(eq=False)
class PhotoSplit(FileSplit):
    """A split read from image files: (file, label) ``items``, read by :meth:`loader` (see
    :class:`~dalab.data.streaming.FileSplit`: training batches shuffled per epoch and seed, evaluation
    batches in order, every item once over the ranks; the position saved and restored).

    ``tensors()``, ``x`` and ``y`` raise a DataError rather than decode every image into memory
    (:attr:`labels` gives the labels without reading any image).
    """

    items: list
    labelled: bool = True
    name: str = "split"

    collate_fn = staticmethod(collate_photos)
    loader_class = PhotoLoader

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels from the index (-1: unlabelled); no image is read."""
        return np.array([y for _, y in self.items], np.int64)

    @property
    def files(self) -> list[Path]:
        return [f for f, _ in self.items]

    def dataset(self, train: bool, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE, resize: int | None = None,
                scale=SCALE, ratio=RATIO, flip: bool = True, resize_mode: str = "shorter",
                limit: int | None = None) -> PhotoFiles:
        """The :class:`PhotoFiles` over this split (its first ``limit`` items when given)."""
        items = self.items if limit is None else self.items[:max(int(limit), 0)]
        return PhotoFiles(items, train, image_size=image_size, resize=resize, scale=scale, ratio=ratio, flip=flip,
                          resize_mode=resize_mode, seed=seed)


# ------------------------------------------------------------------------ domains

def _domain(spec: str, index: PhotoIndex, strict: bool, progress: bool | None, note: str = ""):
    """A Domain of PhotoSplits from an index, after the header check of every file."""
    from .base import Domain

    skipped = check_headers(index.files(), strict=strict, progress=progress, what=f"{index.kind} images")
    bad = {p for p, _ in skipped}
    splits = {}
    for name, items in index.splits.items():
        kept = [(f, y) for f, y in items if f not in bad]
        if items and not kept:
            raise DataError(f"{spec}: none of the {len(items)} files of its {name} split can be read "
                            f"(first: {skipped[0][1]})")
        splits[name] = PhotoSplit(kept, labelled=bool(kept) and all(y >= 0 for _, y in kept), name=f"{spec} {name}")
    parts = [index.summary, index.protocol]
    if skipped:
        parts.append(f"{len(skipped)} unreadable file{'s' if len(skipped) > 1 else ''} left out "
                     f"(first: {skipped[0][0]})")
    if note:
        parts.append(note)
    d = Domain(spec, "; ".join(parts), splits, index.num_classes, index.classes, task="classification",
               protocol=index.protocol, skipped=skipped)
    return d


def load_photo_domain(spec: str, data_root=None, strict: bool = False, progress: bool | None = None,
                      image_size: int | None = None, stream: bool = False):
    """``office31:PATH``, ``officehome:PATH``, ``visda:PATH``, ``domainnet:PATH``, ``imagelist:LIST``
    or ``folder:PATH`` -> a classification Domain (``folder:`` as :func:`load_folder` decides).

    ``strict``: an unreadable file is a DataError instead of a skipped file; ``progress``: the
    header check's progress bar (default: for more than 2,000 files).
    """
    if spec.startswith("folder:"):
        return load_folder(spec, data_root, image_size=image_size, strict=strict, progress=progress, stream=stream)
    return _domain(spec, index_photos(spec), strict, progress)


@dataclass(frozen=True)
class FolderPlan:
    """How ``folder:PATH`` is read: ``streamed`` or resident, at ``image_size``, and why (one line)."""

    streamed: bool
    image_size: int
    reason: str
    sizes: tuple = field(default=(), compare=False)  # (width, height) of the sampled files


def plan_folder(index: PhotoIndex, image_size: int | None = None, sample: int = SAMPLE) -> FolderPlan:
    """The resident-or-streamed rule of the module docstring, for an indexed image folder."""
    from .imageops import SIZE

    n = len(index.files())
    resident_bytes = n * SIZE * SIZE * 3
    too_big = resident_bytes > RESIDENT_MAX_BYTES
    big_note = (f"{n:,} images would take {resident_bytes / 2**30:.1f} GiB resident at {SIZE}x{SIZE} "
                f"(more than {RESIDENT_MAX_BYTES / 2**30:.0f} GiB)")
    if image_size is not None:
        size = int(image_size)
        if size != SIZE:
            return FolderPlan(True, size, f"streamed at {size} px (--image-size {size}; images are held in "
                                          f"memory only at {SIZE}x{SIZE})")
        if too_big:
            return FolderPlan(True, size, f"streamed at {size} px: {big_note}")
        return FolderPlan(False, size, f"held in memory at {SIZE}x{SIZE} (--image-size {size})")
    files = index.files()
    picks = [files[int(i)] for i in np.unique(np.linspace(0, n - 1, min(sample, n)).round())] if n else []
    sizes = []
    for f in picks:
        try:
            with open_image(f) as img:
                sizes.append(img.size)
        except DataError:
            continue  # the header check reports it
    if not sizes:
        return FolderPlan(True, DEFAULT_IMAGE_SIZE, f"streamed at {DEFAULT_IMAGE_SIZE} px (no sampled file "
                                                    "could be opened)")
    side = statistics.median(min(w, h) for w, h in sizes)
    seen = f"median shorter side {side:g} px over {len(sizes)} sampled files"
    if side > SMALL_SIDE:
        return FolderPlan(True, DEFAULT_IMAGE_SIZE, f"streamed at {DEFAULT_IMAGE_SIZE} px: photos ({seen}; "
                                                    f"images of at most {SMALL_SIDE} px stay in memory at "
                                                    f"{SIZE}x{SIZE})", tuple(sizes))
    if too_big:
        return FolderPlan(True, SIZE, f"streamed at {SIZE} px: small images ({seen}), but {big_note}", tuple(sizes))
    return FolderPlan(False, SIZE, f"held in memory at {SIZE}x{SIZE}: small images ({seen}; at most "
                                   f"{SMALL_SIDE} px), the digits path", tuple(sizes))


def load_folder(spec: str, data_root=None, image_size: int | None = None, strict: bool = False,
                progress: bool | None = None, stream: bool = False):
    """``folder:PATH`` -> a Domain, resident or streamed as :func:`plan_folder` decides (and says);
    ``stream`` streams it whatever its size."""
    from .folder import PREFIX, load_folder_domain
    from .photo_layouts import folder

    path = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    if not path:
        raise DataError("folder: needs a path, e.g. --target folder:my_images")
    index = folder(path)
    plan = plan_folder(index, image_size)
    if stream and not plan.streamed:
        plan = FolderPlan(True, plan.image_size, f"streamed at {plan.image_size} px (--stream)")
    if plan.streamed:
        return _domain(spec, index, strict, progress, note=plan.reason)
    d = load_folder_domain(spec, data_root)
    d.description = f"{d.description}; {plan.reason}"
    d.protocol = index.protocol
    return d
