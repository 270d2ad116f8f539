"""The types of the domain registry: :class:`Split`, :class:`Domain`, :class:`DomainSpec` and the
registry itself (:data:`REGISTRY`, :func:`register`).

Every domain gives uint8 images of shape (N, H, W, C) (C = 1 or 3) and int64 labels, or, for a
segmentation domain (``task="segmentation"``), uint8 label maps (N, H, W) of train ids.
:meth:`Split.tensors` turns a split into torch tensors (N, 3, H, W) uint8, the form the trainer
keeps on the device. Normalisation is the model's job (see ``dalab.models``), identical for every
domain. The modules that define domains import this one; :mod:`dalab.data.domains` loads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """One split of a domain: images ``x`` (N, H, W[, C]) uint8 and labels ``y`` (N,) int64.

    ``tensors()`` gives (N, 3, H, W) uint8 torch tensors, ``dataset()`` a ``TensorDataset``.
    """

    x: np.ndarray  # (N, H, W, C) or (N, H, W) uint8
    y: np.ndarray  # (N,) int64, or (N, H, W) uint8 train-id maps for segmentation

    #: held in memory; a split read from files one item at a time is a ``seg_real.StreamSplit``
    streamed = False

    def __len__(self) -> int:
        return len(self.y)

    def tensors(self, device="cpu", limit: int | None = None):
        """(x, y): x (N, 3, H, W) uint8 contiguous, y (N,) int64, on ``device``."""
        import torch

        x, y = self.x, self.y
        if limit is not None:
            x, y = x[:limit], y[:limit]
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        # per-image labels as int64; segmentation label maps (N, H, W) stay uint8 (4 to 8x less memory)
        yt = torch.from_numpy(np.ascontiguousarray(y)) if np.asarray(y).ndim == 3 else \
            torch.from_numpy(np.asarray(y, np.int64))
        return t.contiguous().to(device), yt.to(device)

    def dataset(self, device="cpu", limit: int | None = None):
        """The split as a ``torch.utils.data.TensorDataset`` of (image (3, H, W) uint8, label).

        For a user's own ``DataLoader`` loop; the same tensors as :meth:`tensors`.
        """
        from torch.utils.data import TensorDataset

        return TensorDataset(*self.tensors(device, limit))


@dataclass
class Domain:
    """A named domain with ``splits`` train / val / test; ``domain["train"]`` is a :class:`Split`.

    ``task`` is ``"classification"`` (one label per image) or ``"segmentation"`` (a label map
    per image; the real segmentation domains hold :class:`~dalab.data.seg_real.StreamSplit`
    splits, read from files, instead of in-memory :class:`Split` arrays).
    """

    name: str
    description: str
    splits: dict[str, Split] = field(default_factory=dict)
    num_classes: int = 10
    classes: tuple[str, ...] | None = None  # class names; None = the digits 0..9 (label = digit)
    task: str = "classification"  # or "segmentation": labels are (N, H, W) uint8 maps (see dalab.tasks)
    #: (H, W) the images are resized to before augmentation and for evaluation by default (a dataset's base
    #: size, e.g. GTA5 720x1280, see data/seg_real.py); None: as stored (every in-memory domain)
    image_size: tuple[int, int] | None = None
    #: the check of every file read from disk (a ``seg_real.PairCheck``: usable pairs, resized labels,
    #: skipped files); None for in-memory domains
    pair_check: object | None = None
    #: one line: which images train and which are scored (the photo benchmarks read from files)
    protocol: str = ""
    #: (file, one-line reason) of files left out because they cannot be read (see dalab.data.photos)
    skipped: list = field(default_factory=list)

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise DataError(f"domain {self.name!r} has no split {split!r} (has {', '.join(self.splits)})")
        return self.splits[split]


@dataclass
class DomainSpec:
    name: str
    summary: str
    load: Callable[[Path], Domain]
    prepare: Callable[..., object] | None = None
    cache: str | None = None
    task: str = "classification"  # known before loading, e.g. to pick the task's default recipe


REGISTRY: dict[str, DomainSpec] = {}
SEG_DATASETS = ("gta5", "cityscapes", "synthia")  # KIND:PATH names of segmentation datasets read from files


@dataclass
class PrefixSpec:
    """Data named by path, ``KIND:PATH``: ``load(name, data_root, **options)`` returns its Domain."""

    kind: str
    summary: str
    load: Callable[..., "Domain"]
    task: str = "classification"


PREFIXES: dict[str, PrefixSpec] = {}


def register_prefix(spec: PrefixSpec) -> PrefixSpec:
    """Add (or replace) a ``KIND:PATH`` prefix, so ``load_domain("KIND:PATH")`` calls ``spec.load``."""
    PREFIXES[spec.kind] = spec
    return spec


def domain_task(name: str) -> str:
    """The task of a domain name without loading it: a registered domain's or ``KIND:PATH`` prefix's
    (segmentation for ``gta5:PATH`` / ``cityscapes:PATH`` / ``synthia:PATH``), classification for
    unknown names."""
    kind, sep, _ = name.partition(":")
    if sep and kind in PREFIXES:
        return PREFIXES[kind].task
    spec = REGISTRY.get(name)
    return spec.task if spec is not None else "classification"


def register(spec: DomainSpec) -> DomainSpec:
    """Add (or replace) a domain in the registry, so ``load_domain(spec.name)`` finds it."""
    REGISTRY[spec.name] = spec
    return spec


def from_arrays(name: str, desc: str, arrays: dict) -> Domain:
    """A domain of in-memory splits from ``{split}_x`` / ``{split}_y`` arrays."""
    return Domain(name, desc, {s: Split(arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in SPLIT_NAMES})
