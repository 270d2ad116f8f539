"""Cityscapes' label table: the 34 label ids, the 19 train ids used by every GTA5 -> Cityscapes
paper, their names and colours.

Segmentation label maps in dalab hold **train ids** 0..18 as uint8, with :data:`IGNORE` (255)
for every pixel that is not scored (unlabelled, ego vehicle, parking, ...). The real
loaders map the label ids found in GTA5 and Cityscapes PNGs through :data:`ID_TO_TRAIN_ID`;
the procedural street scenes draw train ids directly.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

# (label id, name, train id, colour) as in cityscapesscripts' helpers/labels.py
LABELS: tuple[tuple[int, str, int, tuple[int, int, int]], ...] = (
    (0, "unlabeled", IGNORE, (0, 0, 0)),
    (1, "ego vehicle", IGNORE, (0, 0, 0)),
    (2, "rectification border", IGNORE, (0, 0, 0)),
    (3, "out of roi", IGNORE, (0, 0, 0)),
    (4, "static", IGNORE, (0, 0, 0)),
    (5, "dynamic", IGNORE, (111, 74, 0)),
    (6, "ground", IGNORE, (81, 0, 81)),
    (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 1, (244, 35, 232)),
    (9, "parking", IGNORE, (250, 170, 160)),
    (10, "rail track", IGNORE, (230, 150, 140)),
    (11, "building", 2, (70, 70, 70)),
    (12, "wall", 3, (102, 102, 156)),
    (13, "fence", 4, (190, 153, 153)),
    (14, "guard rail", IGNORE, (180, 165, 180)),
    (15, "bridge", IGNORE, (150, 100, 100)),
    (16, "tunnel", IGNORE, (150, 120, 90)),
    (17, "pole", 5, (153, 153, 153)),
    (18, "polegroup", IGNORE, (153, 153, 153)),
    (19, "traffic light", 6, (250, 170, 30)),
    (20, "traffic sign", 7, (220, 220, 0)),
    (21, "vegetation", 8, (107, 142, 35)),
    (22, "terrain", 9, (152, 251, 152)),
    (23, "sky", 10, (70, 130, 180)),
    (24, "person", 11, (220, 20, 60)),
    (25, "rider", 12, (255, 0, 0)),
    (26, "car", 13, (0, 0, 142)),
    (27, "truck", 14, (0, 0, 70)),
    (28, "bus", 15, (0, 60, 100)),
    (29, "caravan", IGNORE, (0, 0, 90)),
    (30, "trailer", IGNORE, (0, 0, 110)),
    (31, "train", 16, (0, 80, 100)),
    (32, "motorcycle", 17, (0, 0, 230)),
    (33, "bicycle", 18, (119, 11, 32)),
)

NUM_CLASSES = 19
#: the 19 class names, indexed by train id
TRAIN_NAMES: tuple[str, ...] = tuple(n for _, n, t, _ in sorted(LABELS, key=lambda r: r[2]) if t != IGNORE)
#: (19, 3) uint8 colours, indexed by train id
TRAIN_COLOURS = np.array([c for _, _, t, c in sorted(LABELS, key=lambda r: r[2]) if t != IGNORE], np.uint8)
#: label id -> train id lookup table of 256 entries (every id outside the table maps to IGNORE)
ID_TO_TRAIN_ID = np.full(256, IGNORE, np.uint8)
for _id, _name, _train, _colour in LABELS:
    ID_TO_TRAIN_ID[_id] = _train
#: label ids that the Cityscapes/GTA5 label table defines (0..33); any other value in a label PNG is an error
KNOWN_IDS = frozenset(i for i, _, _, _ in LABELS)
TRAIN_ID = {n: i for i, n in enumerate(TRAIN_NAMES)}


def colorize(labels: np.ndarray) -> np.ndarray:
    """Train-id map (..., H, W) uint8 -> colour image (..., H, W, 3) uint8; ignored pixels are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:NUM_CLASSES] = TRAIN_COLOURS
    return lut[np.asarray(labels, np.uint8)]
