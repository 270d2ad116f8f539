"""Your own images as a domain: ``--source folder:PATH --target folder:PATH``.

Three layouts are understood (hidden files and files that are not images are ignored):

- ``PATH/class_name/*.png`` -- labelled. Split 70 / 10 / 20 % into train / val / test,
  class-stratified with seed 0 (deterministic).
- ``PATH/{train,val,test}/class_name/*.png`` -- labelled with your own splits (``val``
  optional: 10 % of ``train`` is held out when it is missing).
- ``PATH/*.png`` (flat) -- unlabelled, every label is -1. Usable as a *target* only:
  train = test = every image (the transductive setting of unsupervised domain
  adaptation), val is empty, and target accuracy is reported as n/a.

Class names that are all integers (``0`` ... ``9``) are used as the labels themselves, so
a folder of digits lines up with MNIST; other names are sorted and numbered 0..K-1
(then the source and a labelled target must have the same class names).

Every image is read with PIL, converted to RGB (grey is repeated, alpha dropped) and
resized to 28x28 (bilinear, antialiased). An unreadable image file stops everything
with a one-line error naming it, before a run starts. The decoded arrays are cached in
``DATA_DIR/folders/<name>-<key>.npz``, where the key hashes the resolved path and the
relative name, size and mtime of every image: change, add or remove a file and the
cache is rebuilt; leave the folder alone and the next run starts at once.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import IMAGE_EXTS, load_image
from .imageops import SIZE, stratified_split
from .io import atomic_save_npz, file_lock

SPLIT_DIRS = ("train", "val", "test")
PREFIX = "folder:"


def _visible(p: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(base).parts)


def _images_in(d: Path, recursive: bool) -> list[Path]:
    it = d.rglob("*") if recursive else d.iterdir()
    return sorted(p for p in it if p.suffix.lower() in IMAGE_EXTS and p.is_file() and _visible(p, d))


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(d: Path) -> tuple[list[Path], list[str] | None]:
    """Files of one folder and their class names (``None`` for a flat, unlabelled folder)."""
    loose = _images_in(d, recursive=False)
    classes = [c for c in _subdirs(d) if _images_in(c, recursive=True)]
    if loose and classes:
        raise DataError(f"{d}: mixes loose images ({loose[0].name}, ...) with class folders "
                        f"({classes[0].name}/, ...); use one layout")
    if classes:
        files, names = [], []
        for c in classes:
            for f in _images_in(c, recursive=True):
                files.append(f)
                names.append(c.name)
        return files, names
    if not loose:
        raise DataError(f"{d}: no images ({', '.join(sorted(IMAGE_EXTS))}) found")
    return loose, None


def _layout(root: Path) -> dict[str, tuple[list[Path], list[str] | None]]:
    subs = {p.name for p in _subdirs(root)}
    if {"train", "test"} <= subs:
        out = {s: _scan(root / s) for s in SPLIT_DIRS if s in subs}
        kinds = {s: v[1] is None for s, v in out.items()}
        if len(set(kinds.values())) > 1:
            raise DataError(f"{root}: some of train/val/test have class folders and some do not")
        return out
    return {"all": _scan(root)}


def _fingerprint(root: Path, layout) -> str:
    h = hashlib.sha256(str(root).encode())
    for files, _ in layout.values():
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _label_map(names: set[str]) -> tuple[dict[str, int], tuple[str, ...] | None, int]:
    """Class name -> label; ``classes`` is None when the names are the digits themselves."""
    if all(re.fullmatch(r"\d+", n) for n in names):
        labels = {n: int(n) for n in names}
        return labels, None, max(10, max(labels.values()) + 1)
    ordered = tuple(sorted(names))
    return {n: i for i, n in enumerate(ordered)}, ordered, len(ordered)


def folder_index(root: Path) -> tuple[dict[str, tuple[list[Path], np.ndarray]], tuple[str, ...] | None, int, bool]:
    """The files of an image folder and their labels by split, without reading any image.

    Returns ({"train"|"val"|"test": (files, labels (N,) int64, -1 = unlabelled)}, class names
    (None for digit names), number of classes, labelled). The splits are the ones described in
    the module docstring; the resident and the streamed path (``dalab.data.photos``) share them.
    """
    layout = _layout(root)
    labelled = next(iter(layout.values()))[1] is not None
    names = set()
    for _, cls in layout.values():
        names.update(cls or ())
    labels, classes, num_classes = _label_map(names) if labelled else ({}, None, 10)
    parts = {}
    for part, (files, cls) in layout.items():
        y = (np.array([labels[c] for c in cls], np.int64) if labelled else np.full(len(files), -1, np.int64))
        parts[part] = (list(files), y)

    def take(part, idx):
        files, y = parts[part]
        return [files[i] for i in idx], y[idx]

    if "all" in parts:
        files, y = parts["all"]
        if labelled:
            te, va, tr = stratified_split(y, (0.2, 0.1), seed=0)
            out = {"train": take("all", tr), "val": take("all", va), "test": take("all", te)}
        else:  # transductive target: adapt to every image, "test" on the same images (no labels)
            out = {"train": (files, y), "val": ([], y[:0]), "test": (files, y)}
    else:
        if "val" in parts:
            out = {"train": parts["train"], "val": parts["val"]}
        else:  # 10 % of train held out (class-stratified; one group when unlabelled)
            va, tr = stratified_split(parts["train"][1], (0.1,), seed=0)
            out = {"train": take("train", tr), "val": take("train", va)}
        out["test"] = parts["test"]
    return out, classes, num_classes, labelled


def _decode(root: Path) -> dict[str, np.ndarray]:
    index, classes, num_classes, _ = folder_index(root)
    arrays = {}
    for part, (files, y) in index.items():
        arrays[f"{part}_x"] = (np.stack([load_image(f, SIZE) for f in files]) if files
                               else np.zeros((0, SIZE, SIZE, 3), np.uint8))
        arrays[f"{part}_y"] = y
    arrays["meta_num_classes"] = np.array(num_classes)
    arrays["meta_classes"] = np.array(list(classes) if classes else [], dtype=str)
    arrays["meta_origin"] = np.array(str(root))
    return arrays


def folder_cache_path(path: str | os.PathLike, data_root: Path) -> Path:
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (folder:PATH needs a directory)")
    key = _fingerprint(root, _layout(root))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name)[:40] or "folder"
    return data_root / "folders" / f"{slug}-{key}.npz"


def load_folder_arrays(path: str | os.PathLike, data_root: Path | None) -> dict[str, np.ndarray]:
    """Decode (or reuse the cache of) an image folder into split arrays."""
    from .mnist import load_npz_checked

    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (folder:PATH needs a directory)")
    if data_root is None:
        return _decode(root)
    cache = folder_cache_path(root, data_root)
    if cache.is_file():
        try:
            return load_npz_checked(cache, f"folder:{root}")
        except DataError:
            pass  # a damaged cache is rebuilt from the images, which are the truth
    arrays = _decode(root)
    try:
        with file_lock(cache.parent / ".folders.lock"):
            atomic_save_npz(cache, **arrays)
    except OSError:
        pass  # a read-only data dir only costs the decoding time next run
    return arrays


def load_folder_domain(spec: str, data_root: Path | None):
    """``folder:PATH`` (or a bare PATH) -> :class:`dalab.data.domains.Domain`."""
    from .base import Domain, Split

    path = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    if not path:
        raise DataError("folder: needs a path, e.g. --target folder:my_images")
    a = load_folder_arrays(path, data_root)
    labelled = bool(len(a["train_y"])) and bool((a["train_y"] >= 0).all())
    classes = tuple(str(c) for c in a.get("meta_classes", np.array([], str)).tolist())
    kind = (f"{len(classes)} classes" if classes else "digit classes") if labelled else "unlabelled"
    desc = f"image folder {a.get('meta_origin', path)} ({kind}, resized to 28x28 RGB)"
    splits = {s: Split(a[f"{s}_x"], a[f"{s}_y"]) for s in SPLIT_DIRS}
    return Domain(f"{PREFIX}{path}", desc, splits, int(a.get("meta_num_classes", 10)), classes or None)


def check_pair(src, tgt, needs_target_labels: bool = False) -> None:
    """Refuse pairs that cannot be trained: unlabelled source, mismatched class names."""
    def split_labelled(s) -> bool:
        if getattr(s, "streamed", False):  # read from files: its pairs say whether labels exist
            return bool(s.labelled)
        return len(s.y) == 0 or bool((np.asarray(s.y) >= 0).all())

    def labelled(d) -> bool:
        return all(split_labelled(s) for s in d.splits.values()) and len(d["train"]) > 0

    if not labelled(src):
        raise DataError(f"--source {src.name}: has no labels (a flat image folder); a source must be "
                        "labelled: put its images in class_name/ sub-folders")
    if needs_target_labels and not labelled(tgt):
        raise DataError(f"--target {tgt.name}: has no labels, so target-only (the oracle) cannot train on it")
    sc, tc = src.classes, tgt.classes
    if labelled(tgt) and (sc or tc) and sc != tc:
        raise DataError(f"--source {src.name} and --target {tgt.name} have different classes "
                        f"({', '.join(sc or ('0..9',))} vs {', '.join(tc or ('0..9',))})")


def export_folder(domain, out, limit: int | None = None, overwrite: bool = False) -> dict[str, int]:
    """Write an in-memory classification domain as image files in the ``train/val/test`` layout that
    ``folder:PATH`` reads: ``out/<split>/<class>/<index>.png`` (class folders named by the domain's class
    names, or the digits). The whole tree is written to a temporary folder beside ``out`` and renamed
    onto it at the end, so ``out`` is either absent, or complete; an existing ``out`` is replaced only
    with ``overwrite``. ``limit``: the first N images of each split. Returns the images per split."""
    import shutil
    import tempfile

    from PIL import Image

    out = Path(out)
    if any(np.asarray(s.y).ndim != 1 for s in domain.splits.values() if not getattr(s, "streamed", False)):
        raise DataError(f"{domain.name} has label maps, not a class per image; export writes image folders of "
                        "class labels")
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    counts = {}
    try:
        for split in SPLIT_DIRS:
            s = domain.splits.get(split)
            if s is None or getattr(s, "streamed", False) or len(s) == 0:
                continue
            x, y = np.asarray(s.x), np.asarray(s.y)
            n = len(y) if limit is None else min(len(y), int(limit))
            for i in range(n):
                name = domain.classes[int(y[i])] if domain.classes else str(int(y[i]))
                d = tmp / split / name
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(x[i]).save(d / f"{i:06d}.png")
            counts[split] = n
        if not counts:
            raise DataError(f"{domain.name}: no in-memory images to export")
        if out.exists():  # overwrite: the old tree goes only once the new one is complete
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts
