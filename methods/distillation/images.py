"""An image grid of a synthetic set: one row per class, as many columns as images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def save_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    classes: tuple[str, ...] | None = None,
    max_per_class: int = 20,
    dpi: int = 100,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = sorted(set(labels.tolist()))
    rows = [images[labels == c][:max_per_class] for c in present]
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(cols * 0.6 + 0.8, len(rows) * 0.6 + 0.2), squeeze=False
    )
    for r, (cls, row) in enumerate(zip(present, rows)):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                img = row[c].detach().clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(np.squeeze(img), cmap="gray" if img.shape[-1] == 1 else None)
        name = classes[cls] if classes and cls < len(classes) else str(cls)
        axes[r][0].text(
            -0.1, 0.5, name, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7
        )
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0.15, right=0.99, top=0.99, bottom=0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
