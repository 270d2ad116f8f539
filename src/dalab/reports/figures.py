"""Figures (matplotlib, Agg backend), always written atomically."""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..data.io import atomic_write_bytes  # noqa: E402,F401
from ..tasks.figures import image_grid, save_figure, save_image_grid, save_segmentation_grid  # noqa: E402,F401


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
