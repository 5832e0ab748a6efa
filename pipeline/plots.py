"""Figures shared by a model bundle's plots and the catalog report (matplotlib, files only)."""

from __future__ import annotations

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(matrix, classes: list[str], title: str | None = None, *,
                     scale: float = 1.0):
    """A confusion matrix [n_classes, n_classes] (rows: truth, columns: predicted) with its
    counts written in the cells; ``scale`` < 1 draws a small multiple."""
    import matplotlib

    plt = pyplot()
    values = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(scale * (1.2 * len(classes) + 2),
                                    scale * (1.2 * len(classes) + 1.5)))
    shade = matplotlib.colors.Normalize()(values)
    ax.imshow(shade, cmap="Blues")
    for (i, j), count in np.ndenumerate(values):  # white on the dark cells, to be read
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if shade[i, j] > 0.55 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return fig


def save(fig, path: str) -> None:
    """Write ``fig`` as a PNG to ``path`` and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
