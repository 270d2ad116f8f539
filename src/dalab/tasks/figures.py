"""Figures of examples that a task draws (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

import io

import numpy as np

from ..data.io import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def image_grid(x: np.ndarray, cols: int = 8) -> np.ndarray:
    """(N,H,W[,C]) uint8 -> one (rows*H, cols*W, 3) uint8 mosaic with 1-pixel gaps."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    n, h, w, _ = x.shape
    rows = int(np.ceil(n / cols))
    out = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = x[i]
    return out


def save_image_grid(split, path, n: int = 64, seed: int = 0, title: str | None = None, cols: int = 8) -> None:
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(split), size=min(n, len(split)), replace=False))
    grid = image_grid(split.x[idx], cols=cols)
    fig, ax = _plt().subplots(figsize=(cols * 0.6, np.ceil(len(idx) / cols) * 0.6 + 0.4))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title if len(title) < 70 else title[:67] + "...", fontsize=7)
    save_figure(fig, path)


def save_segmentation_grid(split, path, n: int = 16, seed: int = 0, title: str | None = None, cols: int = 4) -> None:
    """Random images of a segmentation split, each beside its colour-coded label map (Cityscapes colours)."""
    from ..data.cityscapes_labels import colorize

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(split), size=min(n, len(split)), replace=False))
    pairs = np.stack([split.x[idx], colorize(split.y[idx])], 1).reshape(-1, *split.x.shape[1:])
    grid = image_grid(pairs, cols=2 * cols)
    h, w = split.x.shape[1:3]
    fig, ax = _plt().subplots(figsize=(2 * cols * w / 60, np.ceil(len(idx) / cols) * h / 60 + 0.4))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title if len(title) < 110 else title[:107] + "...", fontsize=7)
    save_figure(fig, path)
