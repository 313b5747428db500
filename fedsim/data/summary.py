"""What a partitioning looks like: per-client label counts, as numbers and as a picture."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsim.config.schema import Experiment
from fedsim.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console


def label_counts(exp: Experiment) -> tuple[np.ndarray, list[str]]:
    """A (clients x classes) count matrix for the experiment's partitioning."""
    from fedsim.assets.datasets import task_of
    from fedsim.data.federated import federated_image_data

    task = task_of(exp.data.dataset)
    if task not in ("image-classification", "text-classification"):
        raise UsageError(
            f"data.dataset: the partition view covers labelled data; '{exp.data.dataset}' is "
            f"{task} data (its split is set by the method's own section)"
        )
    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    y = data.y_train.numpy()
    counts = np.stack([np.bincount(y[p], minlength=data.num_classes) for p in data.partitions])
    return counts, list(data.classes)


def print_label_counts(
    counts: np.ndarray, classes: list[str], title: str, show: int, console: Console
) -> None:
    """Counts per client (rows) and class (columns headed by class index, legend below), in
    80 columns when the terminal has them; else one line per client. Numbers are never cut."""
    from rich.table import Table

    table = Table(title=title, box=None, padding=(0, 0, 0, 1), title_justify="left",
                  header_style="bold underline", pad_edge=False)  # fmt: skip
    for name in ("client", "size", *map(str, range(len(classes)))):
        table.add_column(name, justify="right", no_wrap=True)
    for pid, row in enumerate(counts[:show]):
        table.add_row(str(pid), str(int(row.sum())), *[str(int(v)) for v in row])
    wide = console.options.update_width(10**4)
    if console.measure(table, options=wide).maximum <= console.width:
        console.print(table)
    else:
        console.print(title, markup=False, highlight=False)
        for pid, row in enumerate(counts[:show]):
            parts = " ".join(f"{c}:{int(v)}" for c, v in enumerate(row) if v)
            console.print(f"client {pid} ({int(row.sum())}): {parts}", markup=False)
    legend = "  ".join(f"{i}={name}" for i, name in enumerate(classes))
    console.print(f"classes: {legend}", markup=False, highlight=False)
    if len(counts) > show:
        console.print(f"({len(counts) - show} more clients; --show N lists more)", markup=False)
    sizes = counts.sum(1)
    console.print(
        f"clients: {len(sizes)}  sizes: min {sizes.min()} / mean {sizes.mean():.1f} / "
        f"max {sizes.max()}",
        markup=False,
        highlight=False,
    )


def plot_label_counts(
    counts: np.ndarray, classes: list[str], out: Path, max_clients: int = 100
) -> Path:
    """Stacked bars: one bar per client, one colour per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("samples")
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
