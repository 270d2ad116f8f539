r"""Procedural street scenes: an offline, code-built stand-in for GTA5 -> Cityscapes.

**These are not GTA5 or Cityscapes images.** Every report names them for what they are:
procedural street scenes, drawn by this module from a seed. They share Cityscapes' label
table (train ids, names, colours; :mod:`dalab.data.cityscapes_labels`), using ten of its 19
classes: road, sidewalk, building, pole, traffic sign, vegetation, terrain, sky, person, car.

One scene *layout* generator draws label maps (N, H, W) of train ids, vectorised over the
images (a handful of array operations per object slot, no per-pixel Python). Each domain
renders its own layouts its own way:

- ``scenes-game`` (the source, a stand-in for a game engine): flat class colours from a
  "game" palette with a vertical shading ramp and small per-object colour jitter, clean
  edges, camera at one height (horizon near 45 % of the image height), few cars and people.
- ``scenes-photo`` (the target, a stand-in for street photos): each region textured with
  crops of the colour photos shipped in installed wheels (scikit-image, scikit-learn,
  matplotlib; the photos MNIST-M is rebuilt from), another palette (hazy sky, warmer
  buildings, darker foliage, lighter road), random global lighting (gain, colour cast,
  gamma), blur and sensor noise, a lower camera (horizon near 35 %) and another class
  frequency (more cars and people, fewer trees).

The label maps of both domains follow the same rules, so the task is the same; what shifts
is appearance (texture, colour, lighting, noise), geometry (camera height) and the class
frequencies, the three kinds of shift between GTA5 and Cityscapes.

The build is deterministic from ``seed``: each split and each chunk of images gets its own
derived generator. It takes a few seconds for thousands of images and is cached atomically
(``scenes-game.npz``, ``scenes-photo.npz``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cityscapes_labels import TRAIN_ID
from .io import atomic_save_npz, file_lock
from .mnistm import load_backgrounds, random_patches

H, W = 48, 96
SIZES = {"train": 3000, "val": 500, "test": 500}
CHUNK = 500
FORMAT = 2  # bump when the generator changes: the cache is rebuilt

ROAD, SIDEWALK, BUILDING = TRAIN_ID["road"], TRAIN_ID["sidewalk"], TRAIN_ID["building"]
POLE, SIGN, VEG = TRAIN_ID["pole"], TRAIN_ID["traffic sign"], TRAIN_ID["vegetation"]
TERRAIN, SKY, PERSON, CAR = TRAIN_ID["terrain"], TRAIN_ID["sky"], TRAIN_ID["person"], TRAIN_ID["car"]
CLASSES_USED = (ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEG, TERRAIN, SKY, PERSON, CAR)


@dataclass(frozen=True)
class Style:
    """What differs between the two domains' scenes (layout statistics and rendering)."""

    name: str
    horizon: tuple[float, float]    # horizon row as a fraction of H (camera height / pitch)
    p_car: float                    # chance that each car slot is used
    p_person: float                 # chance that each person slot is used
    p_veg_block: float              # chance that a skyline block is trees rather than a building
    textured: bool                  # photo textures, lighting, blur and noise
    stands_for: str = ""            # the real dataset this domain imitates (and is not)


GAME = Style("game", (0.40, 0.50), p_car=0.35, p_person=0.25, p_veg_block=0.40, textured=False,
             stands_for="GTA5")
PHOTO = Style("photo", (0.28, 0.40), p_car=0.65, p_person=0.55, p_veg_block=0.20, textured=True,
              stands_for="Cityscapes")

# base colours (RGB) per class; each object jitters around them. The photo palette keeps each class's
# hue family (grey road, blue-ish sky, green trees, as in both GTA5 and Cityscapes) but is duller and
# shifted: paler hazy sky, darker foliage, greyer buildings, darker clothes and cars
GAME_PALETTE = {ROAD: (88, 88, 96), SIDEWALK: (168, 160, 150), BUILDING: (150, 110, 80), POLE: (110, 110, 110),
                SIGN: (230, 200, 40), VEG: (50, 140, 40), TERRAIN: (120, 180, 70), SKY: (120, 180, 250),
                PERSON: (200, 60, 60), CAR: (40, 60, 200)}
PHOTO_PALETTE = {ROAD: (112, 108, 112), SIDEWALK: (150, 144, 138), BUILDING: (128, 116, 104), POLE: (80, 80, 86),
                 SIGN: (205, 170, 55), VEG: (62, 96, 46), TERRAIN: (118, 136, 78), SKY: (176, 196, 216),
                 PERSON: (130, 60, 72), CAR: (55, 62, 130)}


def _u(rng, lo, hi, shape):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def draw_layouts(n: int, style: Style, rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    """Label maps (n, h, w) uint8 of train ids for ``n`` random street scenes."""
    yy = np.arange(h, dtype=np.float32)[None, :, None]
    xx = np.arange(w, dtype=np.float32)[None, None, :]
    hz = _u(rng, *style.horizon, (n, 1, 1)) * h                      # horizon row
    xv = w / 2 + _u(rng, -0.15, 0.15, (n, 1, 1)) * w                  # vanishing point
    lab = np.full((n, h, w), SKY, np.uint8)
    # skyline: K blocks across the width, each a building or a stand of trees
    k = 8
    widths = _u(rng, 0.5, 1.5, (n, k))
    bounds = np.cumsum(widths / widths.sum(1, keepdims=True), 1) * w   # right edge of each block
    block = np.minimum((xx[:, 0, :][:, :, None] >= bounds[:, None, :]).sum(-1), k - 1)  # (n, w)
    tops = hz[:, 0, :] - _u(rng, 0.08, 0.45, (n, k)) * h               # block tops
    is_veg = rng.random((n, k)) < style.p_veg_block
    top_col = np.take_along_axis(tops, block, 1)                       # (n, w)
    veg_col = np.take_along_axis(is_veg, block, 1)
    wobble = 2.5 * np.sin(xx[:, 0, :] * _u(rng, 0.3, 0.9, (n, 1)) + _u(rng, 0, 6.3, (n, 1)))
    top_col = np.where(veg_col, top_col + wobble, top_col)[:, None, :]
    above = yy < hz
    skyline = above & (yy >= top_col)
    lab[skyline & veg_col[:, None, :]] = VEG
    lab[skyline & ~veg_col[:, None, :]] = BUILDING
    # ground: road and sidewalk in perspective, then facades (buildings) or grass (terrain)
    depth = np.maximum(yy - hz, 0.0)                                   # 0 at the horizon
    s_road = _u(rng, 0.9, 1.6, (n, 1, 1))
    s_walk = s_road + _u(rng, 0.5, 1.2, (n, 1, 1))
    dx = np.abs(xx - xv)
    below = ~above
    lab[below & (veg_col[:, None, :] | (dx > depth * s_walk + 6))] = TERRAIN
    lab[below & ~veg_col[:, None, :] & (dx > depth * s_walk + 6)] = BUILDING
    lab[below & (dx <= depth * s_walk + 6)] = SIDEWALK
    lab[below & (dx <= depth * s_road + 1)] = ROAD
    scale_h = h - hz                                                   # rows between horizon and bottom
    ks = h / 64.0                                                      # object sizes were set for h = 64

    def slot_depth(count):
        """Sorted depths in (0, 1] (far objects first, so near ones are drawn over them)."""
        return np.sort(_u(rng, 0.08, 1.0, (n, count)), 1)

    # poles with a traffic sign on top, on the sidewalks
    for d in slot_depth(3).T:
        d = d[:, None, None]
        used = rng.random((n, 1, 1)) < 0.5
        yb = hz + d * scale_h
        side = np.where(rng.random((n, 1, 1)) < 0.5, -1.0, 1.0)
        xp = xv + side * (yb - hz) * (s_road + s_walk) / 2
        ph = (0.35 + 0.5 * d) * h * 0.6
        pw = np.maximum(1.0, 2.0 * d * ks)
        pole = used & (np.abs(xx - xp) <= pw / 2) & (yy <= yb) & (yy >= yb - ph)
        lab[pole] = POLE
        sz = np.maximum(1.5, 5.0 * d * ks)
        sign = used & (np.abs(xx - xp) <= sz) & (yy < yb - ph + sz) & (yy >= yb - ph - sz * 0.6)
        lab[sign] = SIGN
    # people on the sidewalks and cars on the road, nearer ones over farther ones
    for d in slot_depth(4).T:
        d = d[:, None, None]
        used = rng.random((n, 1, 1)) < style.p_person
        yb = hz + d * scale_h
        side = np.where(rng.random((n, 1, 1)) < 0.5, -1.0, 1.0)
        xp = xv + side * (yb - hz) * (s_road + (s_walk - s_road) * _u(rng, 0.2, 0.8, (n, 1, 1)))
        ph = np.maximum(4.0, 26.0 * d * ks)
        body = ((xx - xp) / (0.16 * ph)) ** 2 + ((yy - (yb - 0.45 * ph)) / (0.45 * ph)) ** 2 <= 1.0
        head = ((xx - xp) ** 2 + (yy - (yb - 0.95 * ph)) ** 2) <= (0.11 * ph) ** 2
        lab[used & (body | head)] = PERSON
    for d in slot_depth(4).T:
        d = d[:, None, None]
        used = rng.random((n, 1, 1)) < style.p_car
        yb = hz + d * scale_h + 2
        xc = xv + _u(rng, -0.8, 0.8, (n, 1, 1)) * (yb - hz) * s_road
        cw, ch = np.maximum(4.0, 44.0 * d * ks), np.maximum(2.5, 20.0 * d * ks)
        box = (np.abs(xx - xc) <= cw / 2) & (yy <= yb) & (yy >= yb - 0.6 * ch)
        cabin = (np.abs(xx - xc) <= cw * 0.3) & (yy < yb - 0.6 * ch) & (yy >= yb - ch)
        lab[used & (box | cabin)] = CAR
    return lab


def _instance_colours(lab: np.ndarray, palette: dict, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """(n, h, w, 3) float colours: each class's base colour, jittered once per image and class."""
    n = len(lab)
    lut = np.zeros((n, 256, 3), np.float32)
    for c, rgb in palette.items():
        lut[:, c] = np.asarray(rgb, np.float32) * (1 + _u(rng, -jitter, jitter, (n, 1)))
    return lut[np.arange(n)[:, None, None], lab]


def render(lab: np.ndarray, style: Style, rng: np.random.Generator, photos=None) -> np.ndarray:
    """Images (n, h, w, 3) uint8 for label maps ``lab`` in the domain's ``style``."""
    n, h, w = lab.shape
    ramp = np.linspace(1.08, 0.9, h, dtype=np.float32)[None, :, None, None]   # light from above
    if not style.textured:
        img = _instance_colours(lab, GAME_PALETTE, rng, 0.12) * ramp
        return np.clip(img, 0, 255).astype(np.uint8)
    img = _instance_colours(lab, PHOTO_PALETTE, rng, 0.25)
    # textures: grey-level detail of two photo crops per image, one for the sky, one for the rest
    tex = random_patches(photos, 2 * n, rng, size=w)[:, :h].astype(np.float32).mean(-1)  # (2n, h, w)
    tex = (tex - tex.mean((1, 2), keepdims=True)) / (tex.std((1, 2), keepdims=True) + 1e-3)
    t = np.where(lab == SKY, 0.3 * tex[:n], tex[n:])[..., None]
    img = img * (1 + 0.28 * t) * ramp
    # global lighting: gain, colour cast, gamma
    gain = _u(rng, 0.55, 1.25, (n, 1, 1, 1))
    cast = 1 + _u(rng, -0.12, 0.12, (n, 1, 1, 3))
    img = np.clip(img * gain * cast, 0, 255) / 255.0
    img = img ** _u(rng, 0.7, 1.4, (n, 1, 1, 1))
    # a 3-tap blur on both axes, then sensor noise
    img = (img + np.roll(img, 1, 1) + np.roll(img, -1, 1)) / 3
    img = (2 * img + np.roll(img, 1, 2) + np.roll(img, -1, 2)) / 4
    img = img * 255 + rng.normal(0, 1, img.shape).astype(np.float32) * _u(rng, 3, 12, (n, 1, 1, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def build_scenes(style: Style, seed: int, sizes: dict[str, int] = SIZES, photos=None) -> dict[str, np.ndarray]:
    """Arrays ``{split}_x`` (N, H, W, 3) uint8 and ``{split}_y`` (N, H, W) uint8 train ids."""
    if style.textured and photos is None:
        photos, _ = load_backgrounds(None, min_size=W)
    out = {}
    for si, (split, count) in enumerate(sizes.items()):
        xs, ys = [], []
        for ci, start in enumerate(range(0, count, CHUNK)):
            m = min(CHUNK, count - start)
            # one generator per (domain, seed, split, chunk): any chunk can be rebuilt alone
            rng = np.random.default_rng([seed, 0 if style is GAME else 1, si, ci])
            lab = draw_layouts(m, style, rng)
            xs.append(render(lab, style, rng, photos))
            ys.append(lab)
        out[f"{split}_x"], out[f"{split}_y"] = np.concatenate(xs), np.concatenate(ys)
    return out


STYLES = {"scenes-game": GAME, "scenes-photo": PHOTO}
DESCRIPTIONS = {"scenes-game": "flat-shaded 'game' rendering", "scenes-photo": "photo-textured rendering"}


def cache_name(domain: str) -> str:
    return f"{domain}.npz"


def prepare_scenes(root: Path, domain: str, seed: int = 0, force: bool = False) -> Path:
    """Build and cache one of the two scene domains (atomic; a second caller waits for the first)."""
    from .mnist import load_npz_checked

    path = root / cache_name(domain)
    with file_lock(root / f".{domain}.lock"):
        if path.is_file() and not force:
            a = load_npz_checked(path, domain)
            if int(a.get("meta_format", -1)) == FORMAT and int(a.get("meta_seed", -1)) == seed:
                return path
        arrays = build_scenes(STYLES[domain], seed)
        arrays["meta_seed"] = np.array(seed)
        arrays["meta_format"] = np.array(FORMAT)
        atomic_save_npz(path, **arrays)
    return path
