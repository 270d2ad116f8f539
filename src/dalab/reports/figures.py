"""Figures (matplotlib, Agg backend), always written atomically."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..data.io import atomic_write_bytes  # noqa: E402


def save_figure(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
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
    fig, ax = plt.subplots(figsize=(cols * 0.6, np.ceil(len(idx) / cols) * 0.6 + 0.4))
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
    fig, ax = plt.subplots(figsize=(2 * cols * w / 60, np.ceil(len(idx) / cols) * h / 60 + 0.4))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title if len(title) < 110 else title[:107] + "...", fontsize=7)
    save_figure(fig, path)


def save_segmentation_comparison(images: np.ndarray, labels: np.ndarray, predictions: dict, path,
                                 title: str | None = None, class_names=None) -> None:
    """One row per image: the image, its label map, then each model's predicted map (colour-coded),
    with a legend of the classes present. ``predictions`` maps a column title to (N, H, W) train ids."""
    from ..data.cityscapes_labels import TRAIN_COLOURS, colorize

    cols = [("image", images), ("label", colorize(labels))] + [(k, colorize(v)) for k, v in predictions.items()]
    n, h, w = labels.shape
    fig, axes = plt.subplots(n, len(cols), figsize=(len(cols) * w / 40, n * h / 40 + 0.6), squeeze=False)
    for i in range(n):
        for j, (name, arr) in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(arr[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
    present = sorted({int(c) for c in np.unique(labels) if c < len(TRAIN_COLOURS)})
    if class_names is not None:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color=TRAIN_COLOURS[c] / 255, label=class_names[c]) for c in present],
                   loc="lower center", ncol=min(len(present), 5), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
    if title:
        fig.suptitle(title, fontsize=8)
    save_figure(fig, path)
