"""Photo datasets in their distributed layouts: which files, which labels, which protocol.

Each ``KIND:PATH`` name below is indexed from the files as they are distributed (nothing is
converted, copied or downloaded) into a :class:`PhotoIndex`: the (file, label) items of each
split, the class names and a one-line protocol for run summaries. Reading the pixels is
:mod:`dalab.data.photos`' job; this module imports neither torch nor PIL.

- ``office31:/data/office31/amazon`` (also ``dslr``, ``webcam``): ``amazon/images/<class>/*.jpg``;
- ``officehome:/data/OfficeHome/Art`` (also ``Clipart``, ``Product``, ``Real_World``): ``Art/<class>/*.jpg``;
- ``visda:/data/visda/train`` (synthetic renderings) and ``visda:/data/visda/validation`` (real photos):
  ``train/image_list.txt`` + ``train/<class>/...``;
- ``domainnet:/data/domainnet/clipart`` (also ``infograph``, ``painting``, ``quickdraw``, ``real``,
  ``sketch``): ``clipart/<class>/*.jpg`` with ``domainnet/clipart_train.txt`` and
  ``domainnet/clipart_test.txt`` beside the folder;
- ``imagelist:/data/x/list.txt``: one list, every listed image trains and is scored;
  ``imagelist:/data/x/train.txt,test.txt``: two lists (the second a path, or a name beside the
  first), the first trains and the second is scored;
- ``folder:PATH``: your own image folder in one of ``data/folder.py``'s three layouts.

Image lists (VisDA's ``image_list.txt``, DomainNet's ``<domain>_train.txt`` /
``<domain>_test.txt``, TLlib's ``image_list/*.txt``) hold one ``relative/path label`` per line
(the label an integer from 0; blank lines and lines starting with ``#`` are skipped; a path
may hold spaces, the label is the last field). Paths are relative to: VisDA's split folder;
DomainNet's root (the folder holding the domain folders); for ``imagelist:``, the list's own
folder, or its parent when the first listed file is found there and not beside the list
(TLlib's ``ROOT/image_list/amazon.txt`` naming ``amazon/images/...``).

Labels and class names: class folders are sorted by name and numbered 0..K-1. In image
lists the label is the number given; the class names are the folder names the paths show
(VisDA: the first folder, DomainNet: the second, other lists: the file's parent folder) when
each label has one folder name and each name one label, else the numbers themselves.

Protocols (each benchmark's usual one, written into :attr:`PhotoIndex.protocol`):

- Office-31, Office-Home (Saenko et al. 2010; Venkateswara et al. 2017; as DANN, CDAN and
  TLlib run them): a domain's ``train`` and ``test`` splits both hold every image. As a source,
  all labelled images train; as a target, all images train unlabelled and all are scored.
  No image is held out, so there is no ``val`` split.
- VisDA-2017 classification (Peng et al. 2017): ``visda:PATH/train`` (152,397 synthetic
  renderings) is the source, ``visda:PATH/validation`` (55,388 real photos) the target, which
  trains unlabelled and is scored: its ``train`` and ``test`` splits both hold every listed image.
- DomainNet (Peng et al. 2019): ``train`` is the domain's training list, ``test`` its test
  list; the target trains (unlabelled) on its training list and is scored on its test list.
- ``imagelist:``: as stated in the list above.

Errors, each one line naming the file or folder: a layout that is not the expected one, an
empty class folder, a list line that is not ``path label``, a listed file that does not
exist (the first few and the count), no images at all.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .mnistm import IMAGE_EXTS

Item = tuple[Path, int]
SHOW = 3  # files named in an error

__all__ = ["PhotoIndex", "PHOTO_KINDS", "index_photos", "office31", "officehome", "visda", "domainnet",
           "imagelist", "read_image_list"]

# the distributed domains' sizes (images, classes), to say when a copy differs
EXPECTED = {
    ("office31", "amazon"): (2817, 31), ("office31", "dslr"): (498, 31), ("office31", "webcam"): (795, 31),
    ("officehome", "Art"): (2427, 65), ("officehome", "Clipart"): (4365, 65),
    ("officehome", "Product"): (4439, 65), ("officehome", "Real_World"): (4357, 65),
    ("visda", "train"): (152397, 12), ("visda", "validation"): (55388, 12),
}
BENCHMARK = {"office31": "Office-31", "officehome": "Office-Home", "visda": "VisDA-2017", "domainnet": "DomainNet",
             "imagelist": "image list"}
OFFICE_PROTOCOL = ("{bench} protocol: every image of the domain trains (labelled as a source, unlabelled as a "
                   "target) and, as a target, every image is scored; no image is held out")


@dataclass
class PhotoIndex:
    """One domain's files: ``splits[name]`` is a list of (file, label) items (label -1: unlabelled)."""

    kind: str                          # office31, officehome, visda, domainnet, imagelist, folder
    root: Path                         # the folder (or list file) the name points to
    splits: dict[str, list[Item]]
    classes: tuple[str, ...] | None    # None: the labels are digits 0..9 themselves (folder: only)
    num_classes: int
    protocol: str                      # one line for the run summary
    summary: str = ""                  # one line: what was found
    notes: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return all(y >= 0 for items in self.splits.values() for _, y in items) and bool(self.splits.get("train"))

    def files(self) -> list[Path]:
        """Every file once, in order of first appearance."""
        return list(dict.fromkeys(f for items in self.splits.values() for f, _ in items))


# ------------------------------------------------------------------------ class folders

def _visible_dirs(d: Path) -> list[Path]:
    return sorted(Path(e.path) for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))


def _images(d: Path) -> list[Path]:
    """Visible image files under ``d`` (any depth), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        out.extend(Path(dirpath) / n for n in filenames
                   if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTS)
    return sorted(out)


def _loose_images(d: Path) -> list[Path]:
    return sorted(Path(e.path) for e in os.scandir(d)
                  if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS)


def _class_folders(d: Path, bench: str, expect: str) -> tuple[list[Item], tuple[str, ...]]:
    """(file, label) items of ``d/<class>/*`` with classes numbered in name order; DataErrors for a
    folder of another layout or an empty class folder."""
    loose = _loose_images(d)
    classes = _visible_dirs(d)
    if loose:
        raise DataError(f"{d}: not a {bench} domain folder: loose images ({loose[0].name}, ...) where {expect} "
                        "expects class folders")
    if not classes:
        raise DataError(f"{d}: not a {bench} domain folder: no class folders (expected {expect})")
    items: list[Item] = []
    for label, c in enumerate(classes):
        files = _images(c)
        if not files:
            raise DataError(f"{c}: an empty class folder (no {', '.join(sorted(IMAGE_EXTS))} images)")
        items.extend((f, label) for f in files)
    return items, tuple(c.name for c in classes)


def _root(path, what: str) -> Path:
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise DataError(f"{p}: {what} folder not found")
    return p


def _count_note(kind: str, name: str, n: int, k: int) -> str:
    exp = EXPECTED.get((kind, name))
    if exp is None or exp == (n, k):
        return ""
    return f" (the distributed {name} has {exp[0]:,} images in {exp[1]} classes)"


def office31(path) -> PhotoIndex:
    """``office31:PATH``: PATH is an Office-31 domain folder holding ``images/<class>/*.jpg``."""
    d = _root(path, "Office-31 domain")
    img = d / "images"
    if not img.is_dir():
        kids = ", ".join(p.name for p in _visible_dirs(d)[:3])
        hint = (" (these look like Office-31's domains: name one of them, e.g. office31:" + str(d / "amazon") + ")"
                if (d / "amazon").is_dir() or (d / "webcam").is_dir() else "")
        raise DataError(f"{d}: not an Office-31 domain folder: expected images/<class>/*.jpg, no images/ folder"
                        f"{' (found ' + kids + ')' if kids and not hint else ''}{hint}")
    items, classes = _class_folders(img, "Office-31", "images/<class>/*.jpg")
    bench = BENCHMARK["office31"]
    return PhotoIndex("office31", d, {"train": items, "test": items}, classes, len(classes),
                      OFFICE_PROTOCOL.format(bench=bench),
                      f"Office-31 {d.name} at {d}: {len(items):,} images, {len(classes)} classes"
                      + _count_note("office31", d.name, len(items), len(classes)))


def officehome(path) -> PhotoIndex:
    """``officehome:PATH``: PATH is an Office-Home domain folder holding ``<class>/*.jpg``."""
    d = _root(path, "Office-Home domain")
    if (d / "images").is_dir() and not _loose_images(d):
        raise DataError(f"{d}: holds images/<class>/, Office-31's layout; Office-Home's domain folders hold "
                        f"<class>/ directly (use office31:{d})")
    items, classes = _class_folders(d, "Office-Home", "<class>/*.jpg")
    return PhotoIndex("officehome", d, {"train": items, "test": items}, classes, len(classes),
                      OFFICE_PROTOCOL.format(bench=BENCHMARK["officehome"]),
                      f"Office-Home {d.name} at {d}: {len(items):,} images, {len(classes)} classes"
                      + _count_note("officehome", d.name, len(items), len(classes)))


# ------------------------------------------------------------------------ image lists

def read_image_list(list_path: Path, base: Path) -> list[Item]:
    """The (base / path, label) items of a ``path label`` list, in file order; DataErrors for a
    malformed line, an empty list or listed files that do not exist."""
    try:
        text = Path(list_path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(f"{list_path}: image list not found") from None
    except OSError as e:
        raise DataError(f"{list_path}: image list not readable ({type(e).__name__}: {e})") from None
    items: list[Item] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not re.fullmatch(r"\d+", parts[1]):
            raise DataError(f"{list_path}:{n}: expected 'relative/path label' (an integer label from 0), "
                            f"got {line[:80]!r}")
        items.append((base / parts[0], int(parts[1])))
    if not items:
        raise DataError(f"{list_path}: an empty image list")
    missing = [f for f, _ in items if not f.is_file()]
    if missing:
        shown = ", ".join(str(f) for f in missing[:SHOW]) + (", ..." if len(missing) > SHOW else "")
        raise DataError(f"{list_path}: {len(missing)} listed file{'s' if len(missing) > 1 else ''} missing under "
                        f"{base} ({shown})")
    return items


def _names_from_paths(items: list[Item], bases: list[Path], folder: int) -> tuple[tuple[str, ...], int]:
    """(class names, number of classes) of list items: the name of folder number ``folder`` of each
    relative path (0 the first, -1 the file's parent) when labels and names pair one to one, else
    the label numbers. ``bases``: the folder each item's path is relative to (one per item)."""
    k = max(y for _, y in items) + 1
    by_label: dict[int, set] = {}
    for (f, y), base in zip(items, bases):
        dirs = f.relative_to(base).parts[:-1]
        by_label.setdefault(y, set()).add(dirs[folder] if -len(dirs) <= folder < len(dirs) else None)
    names = {y: next(iter(s)) for y, s in by_label.items() if len(s) == 1 and None not in s}
    if len(names) == len(by_label) and len(set(names.values())) == len(names):
        return tuple(names.get(i, str(i)) for i in range(k)), k
    return tuple(str(i) for i in range(k)), k


def visda(path) -> PhotoIndex:
    """``visda:PATH``: PATH is VisDA-2017's ``train/`` or ``validation/`` folder with its ``image_list.txt``."""
    d = _root(path, "VisDA-2017 split")
    lst = d / "image_list.txt"
    if not lst.is_file():
        raise DataError(f"{d}: not a VisDA-2017 classification folder: expected image_list.txt "
                        "(lines 'class/file.png label') in it")
    items = read_image_list(lst, d)
    classes, k = _names_from_paths(items, [d] * len(items), 0)
    kind = {"train": "synthetic renderings (the source)", "validation": "real photos (the target)"}.get(d.name, "")
    protocol = ("VisDA-2017 protocol: train/ (synthetic) is the source, validation/ (real) the target; every "
                "listed image trains (labelled as a source, unlabelled as a target) and, as a target, every "
                "one is scored")
    return PhotoIndex("visda", d, {"train": items, "test": items}, classes, k, protocol,
                      f"VisDA-2017 {d.name} at {d}{', ' + kind if kind else ''}: {len(items):,} images, {k} classes"
                      + _count_note("visda", d.name, len(items), k))


def domainnet(path) -> PhotoIndex:
    """``domainnet:PATH``: PATH is a DomainNet domain folder; its lists lie beside it."""
    d = _root(path, "DomainNet domain")
    root, name = d.parent, d.name
    lists = {s: root / f"{name}_{s}.txt" for s in ("train", "test")}
    absent = [p.name for p in lists.values() if not p.is_file()]
    if absent:
        raise DataError(f"{d}: not a DomainNet domain folder: expected {' and '.join(absent)} in {root} "
                        f"(lines '{name}/<class>/<file>.jpg label')")
    splits = {s: read_image_list(p, root) for s, p in lists.items()}
    both = splits["train"] + splits["test"]
    classes, k = _names_from_paths(both, [root] * len(both), 1)
    protocol = ("DomainNet protocol: the domain's training list trains (labelled as a source, unlabelled as a "
                "target); a target is scored on its test list")
    return PhotoIndex("domainnet", d, splits, classes, k, protocol,
                      f"DomainNet {name} at {d}: {len(splits['train']):,} training and {len(splits['test']):,} "
                      f"test images, {k} classes")


def _list_base(lst: Path, first: Path) -> Path:
    """The folder the paths of list ``lst`` are relative to: its own, or its parent (TLlib's image_list/)."""
    if not (lst.parent / first).is_file() and (lst.parent.parent / first).is_file():
        return lst.parent.parent
    return lst.parent


def _first_path(lst: Path) -> Path:
    try:
        for line in lst.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return Path(line.rsplit(None, 1)[0])
    except OSError:
        pass
    return Path("")


def imagelist(spec: str) -> PhotoIndex:
    """``imagelist:LIST`` or ``imagelist:TRAIN_LIST,TEST_LIST`` (see the module docstring)."""
    whole = Path(spec).expanduser()
    if whole.is_file() or "," not in spec:
        paths = [whole]
    else:
        a, b = spec.rsplit(",", 1)
        first = Path(a).expanduser()
        second = Path(b).expanduser()
        if not second.is_absolute() and not second.is_file():
            second = first.parent / second
        paths = [first, second]
    paths = [p.resolve() for p in paths]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: image list not found (imagelist:LIST or imagelist:TRAIN_LIST,TEST_LIST)")
    bases = [_list_base(p, _first_path(p)) for p in paths]
    lists = [read_image_list(p, base) for p, base in zip(paths, bases)]
    train, test = lists[0], lists[-1]
    every = [it for lst in lists for it in lst]
    classes, k = _names_from_paths(every, [base for lst, base in zip(lists, bases) for _ in lst], -1)
    if len(paths) == 1:
        protocol = "image-list protocol: every listed image trains and, as a target, every one is scored"
        summary = f"image list {paths[0]}: {len(train):,} images, {k} classes"
    else:
        protocol = (f"image-list protocol: {paths[0].name} trains (labelled as a source, unlabelled as a target); "
                    f"a target is scored on {paths[1].name}")
        summary = (f"image lists {paths[0]} ({len(train):,} images) and {paths[1]} ({len(test):,} images), "
                   f"{k} classes")
    return PhotoIndex("imagelist", paths[0], {"train": train, "test": test}, classes, k, protocol, summary)


# ------------------------------------------------------------------------ image folders

def folder(path) -> PhotoIndex:
    """``folder:PATH``: an image folder in one of data/folder.py's three layouts, split as it says."""
    from .folder import folder_index

    d = _root(path, "image")
    parts, classes, num_classes, labelled = folder_index(d)
    splits = {s: [(f, int(y)) for f, y in zip(files, ys)] for s, (files, ys) in parts.items()}
    if labelled:
        protocol = ("image-folder protocol: class folders split 70/10/20 into train/val/test (class-stratified, "
                    "seed 0), or the train/val/test folders given; a target is scored on its test split")
    else:
        protocol = ("image-folder protocol: a flat folder is an unlabelled target: every image trains and is "
                    "predicted, none is scored")
    n = len(dict.fromkeys(f for items in splits.values() for f, _ in items))
    kind = (f"{len(classes)} classes" if classes else "digit classes") if labelled else "unlabelled"
    return PhotoIndex("folder", d, splits, classes, num_classes, protocol, f"image folder {d}: {n:,} images, {kind}")


PHOTO_KINDS = {"office31": office31, "officehome": officehome, "visda": visda, "domainnet": domainnet,
               "imagelist": imagelist, "folder": folder}


def index_photos(spec: str) -> PhotoIndex:
    """``KIND:PATH`` -> its :class:`PhotoIndex` (KIND one of :data:`PHOTO_KINDS`)."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in PHOTO_KINDS:
        raise DataError(f"unknown photo dataset {spec!r} (names: {', '.join(k + ':PATH' for k in PHOTO_KINDS)})")
    if not path:
        raise DataError(f"{kind}: needs a path, e.g. {kind}:/data/{kind}")
    return PHOTO_KINDS[kind](path)
