"""The two-moons figure (after Ganin et al., JMLR 2016, Fig. 2).

Top row: the decision boundary of each model over the plane, source points coloured by
class, target points (rotated moons) as dark crosses. Bottom row: the 15 hidden units
of each model projected on their first two principal components (PCA of source and
target features together): with the GRL the two domains overlap.
"""

from __future__ import annotations

import numpy as np

from .figures import plt, save_figure

TITLES = {"standard": "Standard NN (no adaptation)", "dann": "DANN (with gradient reversal)"}
CLASS_COLOURS = ("#d62728", "#1f77b4")


def plot_moons(result, path) -> None:
    """Write the figure for a :class:`dalab.toy.moons.MoonsResult` to ``path`` (PNG, atomic)."""
    models = result.models
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models), 9.6), squeeze=False)
    ns = len(result.xs)
    for j, m in enumerate(models):
        ax = axes[0, j]
        ax.contourf(result.xx, result.yy, m.prob, levels=np.linspace(0, 1, 11), cmap="RdBu", alpha=0.35)
        ax.contour(result.xx, result.yy, m.prob, levels=[0.5], colors="k", linewidths=1.5)
        for c in (0, 1):
            s = result.ys == c
            ax.scatter(result.xs[s, 0], result.xs[s, 1], s=14, c=CLASS_COLOURS[c], marker="o" if c else "s",
                       edgecolors="white", linewidths=0.3, label=f"source, class {c}")
        ax.scatter(result.xt[:, 0], result.xt[:, 1], s=14, c="k", marker="x", linewidths=0.8,
                   label=f"target (rotated {result.config.angle:g} deg, unlabelled)")
        ax.set_title(f"{TITLES.get(m.name, m.name)}\nsource acc {100 * m.source_acc:.1f}%  |  "
                     f"target acc {100 * m.target_acc:.1f}%", fontsize=10)
        ax.set_xlim(result.xx.min(), result.xx.max())
        ax.set_ylim(result.yy.min(), result.yy.max())
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.legend(loc="lower left", fontsize=7, framealpha=0.85)

        ax = axes[1, j]
        f = m.feats_2d
        for c in (0, 1):
            s = np.flatnonzero(result.ys == c)
            ax.scatter(f[s, 0], f[s, 1], s=14, c=CLASS_COLOURS[c], marker="o" if c else "s",
                       edgecolors="white", linewidths=0.3, label=f"source, class {c}")
        ax.scatter(f[ns:, 0], f[ns:, 1], s=14, c="k", marker="x", linewidths=0.8, label="target")
        ax.set_title(f"hidden layer ({result.config.hidden} units), PCA\n"
                     f"source vs target told apart by an RBF SVM: {100 * m.domain_acc:.1f}% (50% = aligned)", fontsize=10)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.legend(loc="best", fontsize=7, framealpha=0.85)
    fig.suptitle(f"Two moons: source vs target rotated by {result.config.angle:g} degrees "
                 f"(seed {result.config.seed})", fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)
