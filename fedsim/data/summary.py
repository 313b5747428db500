"""What a partitioning looks like: per-client label counts, as numbers and as a picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsim.config.schema import Experiment


def label_counts(exp: Experiment) -> tuple[np.ndarray, list[str]]:
    """A (clients x classes) count matrix for the experiment's partitioning."""
    from fedsim.data.federated import federated_image_data
    from fedsim.data.registry import task_of

    if task_of(exp.data.dataset) != "image-classification":
        raise NotImplementedError(f"partition view for {task_of(exp.data.dataset)} data")
    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    y = data.y_train.numpy()
    counts = np.stack([np.bincount(y[p], minlength=data.num_classes) for p in data.partitions])
    return counts, list(data.classes)


def plot_label_counts(
    counts: np.ndarray, classes: list[str], out: Path, max_clients: int = 100
) -> Path:
    """Stacked bars: one bar per client, one colour per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = counts[:max_clients]
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(shown) + 2), 3.6))
    bottom = np.zeros(len(shown))
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    for c, name in enumerate(classes):
        ax.bar(
            range(len(shown)),
            shown[:, c],
            bottom=bottom,
            color=cmap(c % cmap.N),
            label=str(name),
            width=0.9,
        )
        bottom += shown[:, c]
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
