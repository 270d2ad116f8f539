"""Trees in the real segmentation datasets' layouts, at their real sizes, with the real copies' flaws.

Not a test module: tests and ``conftest.py`` import :func:`write_real_trees` (or one writer) to get

- **GTA5** (``images/00001.png`` + ``labels/00001.png``, palette PNGs of Cityscapes label ids):
  1914x1052 images mixed with 1280x720 ones (:data:`GTA5_SMALL`), one label 2 rows shorter than its
  image (:data:`GTA5_SHORT`) and one image without its label (:data:`GTA5_ALONE`), as real copies
  have (CRST's README: "GTA-5 contains images with different resolutions"; IAST-ECCV2020 issue #2:
  copies that lack pairs);
- **Cityscapes** at 2048x1024: ``leftImg8bit/{train,val}/<city>/<city>_000000_0000NN_leftImg8bit.png``,
  ``gtFine/val/<city>/..._gtFine_labelIds.png`` and no ``gtFine/train/`` (an unlabelled target);
- **SYNTHIA-RAND-CITYSCAPES** at 1280x760: ``RGB/0000000.png`` + ``GT/LABELS/0000000.png``, 16-bit
  PNGs with the class in the first channel and an instance id above 255 in the second.

Every picture is a few flat regions of known classes (:func:`layout`), so PNG encoding at
``compress_level=1`` is fast (the three trees take a few seconds) and every label can be checked:
:func:`expected_train_ids` is the train-id map any reader must return. An image's colours are the
Cityscapes colours of its classes, except the sky, whose blue channel is ``100 + 10 k`` for image
``k`` (:func:`marker` reads it back).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dalab.data.cityscapes_labels import ID_TO_TRAIN_ID, LABELS

GTA5_FULL = (1052, 1914)        # (H, W) of most GTA5 images
GTA5_SMALL_HW = (720, 1280)     # the other size in real copies
GTA5_N = 8                      # images 00001..00008
GTA5_SMALL = (2, 5)             # images at 720x1280
GTA5_SHORT = 3                  # its label has 1050 rows for a 1052-row image
GTA5_ALONE = 8                  # an image without its label
CITYSCAPES_HW = (1024, 2048)
CITYSCAPES_TRAIN = {"aachen": 2, "bochum": 2}   # 4 images, no labels
CITYSCAPES_VAL = {"frankfurt": 1, "lindau": 1}  # 2 labelled images
SYNTHIA_HW = (760, 1280)
SYNTHIA_N = 3

SKY, BUILDING, VEGETATION, ROAD, SIDEWALK, CAR, EGO = 23, 11, 21, 7, 8, 26, 1   # Cityscapes label ids
# the same regions as SYNTHIA-RAND-CITYSCAPES classes (its README's table): ego vehicle -> void 0
TO_SYNTHIA = {SKY: 1, BUILDING: 2, VEGETATION: 6, ROAD: 3, SIDEWALK: 4, CAR: 8, EGO: 0}
COLOUR = {i: c for i, _, _, c in LABELS}
PALETTE = [v for row in sorted(LABELS) for v in row[3]]


def layout(h: int, w: int, k: int) -> np.ndarray:
    """(h, w) uint8 Cityscapes label ids of picture ``k``: sky, buildings with trees, a road with a
    sidewalk and a car (its place depends on ``k``), the ego vehicle at the bottom (ignored)."""

    def at(f, n):
        return int(round(f * n))

    ids = np.full((h, w), SKY, np.uint8)
    ids[at(0.35, h):at(0.6, h)] = BUILDING
    ids[at(0.35, h):at(0.6, h), at(0.7, w):at(0.9, w)] = VEGETATION
    ids[at(0.6, h):] = ROAD
    ids[at(0.6, h):at(0.9, h), :at(0.1, w)] = SIDEWALK
    x0 = 0.15 + 0.1 * (k % 5)
    ids[at(0.55, h):at(0.75, h), at(x0, w):at(x0 + 0.2, w)] = CAR
    ids[at(0.9, h):] = EGO
    return ids


def expected_train_ids(h: int, w: int, k: int) -> np.ndarray:
    """The (h, w) train-id map a reader must return for picture ``k`` stored at (h, w)."""
    return ID_TO_TRAIN_ID[layout(h, w, k)]


def picture(h: int, w: int, k: int) -> np.ndarray:
    """(h, w, 3) uint8: each region in its class colour, the sky's blue channel 100 + 10 k."""
    ids = layout(h, w, k)
    lut = np.zeros((256, 3), np.uint8)
    for i, c in COLOUR.items():
        lut[i] = c
    img = lut[ids]
    img[ids == SKY, 2] = 100 + 10 * k
    return img


def marker(x) -> int:
    """Picture number ``k`` of a (3, H, W) image whose top-left pixel is sky."""
    return (int(np.asarray(x)[2, 0, 0]) - 100) // 10


def save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=1)


def save_palette_label(ids: np.ndarray, path: Path) -> None:
    """A palette ('P') PNG whose indices are the label ids (GTA5's format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids, "L")
    im.putpalette(PALETTE + [0] * (768 - len(PALETTE)))   # an 'L' image with a palette is saved as 'P'
    im.save(path, compress_level=1)


def write_png16(path: Path, rgb16: np.ndarray, level: int = 1) -> None:
    """A 16-bit truecolour PNG (bit depth 16, colour type 2), written byte by byte as SYNTHIA's labels are
    (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    rows = np.empty((h, 1 + w * 6), np.uint8)
    rows[:, 0] = 0                                               # filter type None on every row
    rows[:, 1:] = rgb16.astype(">u2").view(np.uint8).reshape(h, w * 6)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + chunk(b"IEND", b""))


def gta5_size(k: int) -> tuple[int, int]:
    return GTA5_SMALL_HW if k in GTA5_SMALL else GTA5_FULL


def write_gta5(root: Path) -> Path:
    """GTA5 at its real sizes, with a short label and an image without its label (see the module notes)."""
    for k in range(1, GTA5_N + 1):
        h, w = gta5_size(k)
        save_png(picture(h, w, k), root / "images" / f"{k:05d}.png")
        if k == GTA5_ALONE:
            continue
        lh = h - 2 if k == GTA5_SHORT else h
        save_palette_label(layout(lh, w, k), root / "labels" / f"{k:05d}.png")
    return root


def cityscapes_stem(city: str, k: int) -> str:
    return f"{city}_000000_{k:06d}"


def write_cityscapes(root: Path) -> Path:
    """Cityscapes at 2048x1024: 4 train images without labels, 2 labelled val images."""
    h, w = CITYSCAPES_HW
    k = 0
    for split, cities in (("train", CITYSCAPES_TRAIN), ("val", CITYSCAPES_VAL)):
        for city, n in cities.items():
            for _ in range(n):
                k += 1
                stem = cityscapes_stem(city, k)
                save_png(picture(h, w, k), root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                if split == "val":
                    gt = root / "gtFine" / split / city
                    save_png(layout(h, w, k), gt / f"{stem}_gtFine_labelIds.png")   # 8-bit grey label ids
                    (gt / f"{stem}_gtFine_polygons.json").write_text('{"objects": []}')
    return root


def write_synthia(root: Path) -> Path:
    """SYNTHIA-RAND-CITYSCAPES at 1280x760 with 16-bit labels (class in the first channel)."""
    h, w = SYNTHIA_HW
    lut = np.zeros(256, np.uint16)
    for cs_id, synthia_class in TO_SYNTHIA.items():
        lut[cs_id] = synthia_class
    for k in range(SYNTHIA_N):
        ids = layout(h, w, k)
        lab = np.zeros((h, w, 3), np.uint16)
        lab[..., 0], lab[..., 1] = lut[ids], 300 + k   # an instance id above 255: 16 bits in use
        write_png16(root / "GT" / "LABELS" / f"{k:07d}.png", lab)
        save_png(picture(h, w, k), root / "RGB" / f"{k:07d}.png")
    return root


@dataclass(frozen=True)
class RealTrees:
    gta5: Path
    cityscapes: Path
    synthia: Path


def write_real_trees(root: Path) -> RealTrees:
    """The three trees under ``root`` (``GTA5/``, ``cityscapes/``, ``SYNTHIA/``)."""
    root = Path(root)
    return RealTrees(write_gta5(root / "GTA5"), write_cityscapes(root / "cityscapes"), write_synthia(root / "SYNTHIA"))
