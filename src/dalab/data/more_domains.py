"""Registers the extra domains: ``syndigits``, ``uci-digits``, ``svhn``, ``usps``, the two
segmentation domains of procedural street scenes, ``scenes-game`` and ``scenes-photo``, and the
``KIND:PATH`` prefixes of photos read from their files: ``folder:``, ``office31:``,
``officehome:``, ``visda:``, ``domainnet:`` and ``imagelist:`` (``data/photos.py``).

Imported at the end of :mod:`dalab.data.domains`. ``syndigits`` and ``uci-digits`` are
built offline by ``dalab data prepare``; ``svhn`` and ``usps`` are imported from the
user's files with ``dalab data prepare --svhn PATH --usps PATH``. ``folder:PATH`` (any
image folder) is one of the photo prefixes.
"""

from __future__ import annotations

from pathlib import Path

from .cityscapes_labels import NUM_CLASSES, TRAIN_NAMES
from .base import Domain, DomainSpec, PrefixSpec, from_arrays, register, register_prefix
from .external import SVHN_CACHE, USPS_CACHE
from .mnist import load_npz_checked
from .syndigits import CACHE_NAME as SYN_CACHE
from .syndigits import prepare_syndigits
from .ucidigits import CACHE_NAME as UCI_CACHE
from .ucidigits import prepare_uci_digits


def _loader(name: str, cache: str, default_desc: str):
    def load(root: Path):
        a = load_npz_checked(root / cache, name)
        origin = str(a["meta_origin"]) if "meta_origin" in a else default_desc
        return from_arrays(name, origin, a)

    load.__name__ = f"_load_{name.replace('-', '_')}"
    return load


register(DomainSpec("syndigits", "synthetic digits rendered from matplotlib's fonts (Syn Numbers style; "
                    "built by `dalab data prepare`)", _loader("syndigits", SYN_CACHE, "synthetic digits"),
                    prepare_syndigits, SYN_CACHE))
register(DomainSpec("uci-digits", "scikit-learn's 8x8 UCI handwritten digits upsampled to 28x28 (1,797 images; "
                    "built by `dalab data prepare`)", _loader("uci-digits", UCI_CACHE, "UCI digits"),
                    prepare_uci_digits, UCI_CACHE))
register(DomainSpec("svhn", "SVHN house numbers, imported with `dalab data prepare --svhn DIR` "
                    "(train_32x32.mat, test_32x32.mat)", _loader("svhn", SVHN_CACHE, "SVHN"), None, SVHN_CACHE))
register(DomainSpec("usps", "USPS postal digits, imported with `dalab data prepare --usps usps.h5|usps.bz2`",
                    _loader("usps", USPS_CACHE, "USPS"), None, USPS_CACHE))


def _scene_loader(name: str):
    from . import scenes

    def load(root: Path) -> Domain:
        a = load_npz_checked(root / scenes.cache_name(name), name)
        style = scenes.STYLES[name]
        d = from_arrays(name, f"procedural street scenes, {scenes.DESCRIPTIONS[name]} (seed {int(a['meta_seed'])}, "
                         f"{a['train_x'].shape[1]}x{a['train_x'].shape[2]}; not {style.stands_for})", a)
        d.num_classes, d.classes, d.task = NUM_CLASSES, TRAIN_NAMES, "segmentation"
        return d

    def prepare(root: Path, force: bool = False):
        return scenes.prepare_scenes(root, name, force=force)

    load.__name__ = prepare.__name__ = name.replace("-", "_")
    return load, prepare


for _name, _summary in (("scenes-game", "procedural street scenes, flat-shaded 'game' rendering (segmentation "
                         "source standing in for GTA5; built by `dalab data prepare`)"),
                        ("scenes-photo", "procedural street scenes, photo-textured rendering with lighting, blur and "
                         "noise (segmentation target standing in for Cityscapes; built by `dalab data prepare`)")):
    _load, _prep = _scene_loader(_name)
    register(DomainSpec(_name, _summary, _load, _prep, f"{_name}.npz", task="segmentation"))


def _load_photos(name: str, root: Path, **options) -> Domain:
    from .photos import load_photo_domain  # imports torch: loaded on first use

    return load_photo_domain(name, root, **options)


for _kind, _summary in (
        ("folder", "your own image folder: class folders, train/val/test folders or flat (unlabelled); small images "
                   "held in memory at 28x28, photos streamed"),
        ("office31", "an Office-31 domain folder (amazon, dslr, webcam) holding images/<class>/*.jpg"),
        ("officehome", "an Office-Home domain folder (Art, Clipart, Product, Real_World) holding <class>/*"),
        ("visda", "VisDA-2017's train/ (synthetic) or validation/ (real) folder with its image_list.txt"),
        ("domainnet", "a DomainNet domain folder, with <domain>_train.txt and <domain>_test.txt beside it"),
        ("imagelist", "a 'relative/path label' list (or TRAIN_LIST,TEST_LIST), TLlib's format")):
    register_prefix(PrefixSpec(_kind, _summary, _load_photos))
