"""Curves of a run (or several, side by side) with matplotlib, saved as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedsim.errors import UsageError  # noqa: E402
from fedsim.results.writer import read_metrics  # noqa: E402

# (scope, metric) pairs worth a panel, in display order.
PANELS = [
    ("server-eval", "accuracy"),
    ("server-eval", "loss"),
    ("train", "train_loss"),
    ("client-eval", "eval_accuracy"),
]


X_AXES = {"round": "round", "virtual-time": "virtual time (h)"}


def _series(rows, scope: str, key: str, x_axis: str = "round") -> tuple[list[float], list[float]]:
    """(x, y) of one metric; on the virtual-time axis a round sits at its end (round 0 at 0),
    and rounds without a ``systems`` row (a run without ``[systems]``) are left out."""
    hours = {0: 0.0} | {
        r["round"]: r["virtual-time-s"] / 3600 for r in rows if r["scope"] == "systems"
    }
    pts = [
        (r["round"] if x_axis == "round" else hours.get(r["round"]), r[key])
        for r in rows
        if r["scope"] == scope and isinstance(r.get(key), (int, float))
    ]
    pts = [p for p in pts if p[0] is not None and (x_axis == "round" or len(hours) > 1)]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(
    run_dirs: list[Path], out: Path, labels: list[str] | None = None, x_axis: str = "round"
) -> Path | None:
    """One panel per metric that any run has; one line per run. ``x_axis``: "round", or
    "virtual-time" (runs with ``[systems]``: each round at its virtual end, in hours)."""
    if x_axis not in X_AXES:
        raise UsageError(f"--x {x_axis}: one of {', '.join(X_AXES)}")
    runs = [(Path(d), read_metrics(Path(d))) for d in run_dirs]
    labels = labels or [d.name for d, _ in runs]
    panels = [p for p in PANELS if any(_series(rows, *p, x_axis)[0] for _, rows in runs)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (scope, key) in zip(axes[0], panels):
        for (_, rows), label in zip(runs, labels):
            x, y = _series(rows, scope, key, x_axis)
            if x:
                ax.plot(x, y, marker="o", markersize=3, label=label)
        ax.set_title(f"{scope}: {key}")
        ax.set_xlabel(X_AXES[x_axis])
        if x_axis == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = png_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    except OSError as exc:
        raise UsageError(f"{out}: cannot write the plot ({exc.strerror})") from None
    finally:
        plt.close(fig)
    return out


def check_plot_path(out: Path) -> Path:
    """Where the plot will go, refused before anything is printed or run when matplotlib
    cannot write its suffix (``--plot x.weird``)."""
    path = png_path(out)
    suffix = path.suffix.lstrip(".").lower()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if suffix not in formats:
        known = ", ".join(sorted(formats))
        raise UsageError(f"--plot {out}: matplotlib cannot write .{suffix} files ({known})")
    return path


def png_path(out: Path) -> Path:
    """Where a plot asked for at ``out`` lands: ``out`` itself, ``out.png`` without a suffix,
    or ``out/runs.png`` for an existing folder."""
    out = Path(out)
    if out.is_dir():
        return out / "runs.png"
    return out if out.suffix else out.with_suffix(".png")


def plot_run(run_dir: Path) -> Path | None:
    run_dir = Path(run_dir)
    return plot_runs([run_dir], run_dir / "plots" / "metrics.png", labels=[run_dir.name])
