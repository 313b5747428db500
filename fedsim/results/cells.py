"""From run directories to numbers per cell: mean ± std over seeds, a table, a CSV, plots.

Report scripts of paper reproductions use the same helpers (``scan``, ``mean_std``,
``fmt_mean_std``, ``RunResult.curve``) so they keep only what is specific to their paper.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from fedsim.results.status import run_status
from fedsim.results.writer import SUMMARY, read_metrics, summarise

# (scope, metric, "final" | "best") shown in the table, when any run has them.
TABLE = [
    ("server-eval", "accuracy", "final", "acc"),
    ("server-eval", "accuracy", "best", "best acc"),
    ("server-eval", "loss", "final", "loss"),
]
FALLBACK = ("train", "train_loss", "final", "train loss")  # e.g. no server evaluation
CURVES = [("server-eval", "accuracy"), ("server-eval", "loss"), ("train", "train_loss")]


@dataclass
class RunResult:
    """One run directory of a sweep (or found by ``scan``) and what it holds."""

    cell: str
    seed: int | None
    run_dir: Path
    status: str  # run_status(), or "conflict" when the sweep left a different run alone
    note: str = ""

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        return read_metrics(self.run_dir)

    @cached_property
    def summary(self) -> dict[str, Any]:
        """summary.json when present; final/best recomputed from metrics.jsonl."""
        path = self.run_dir / SUMMARY
        try:
            base = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            base = {}
        return {**base, **summarise(self.rows)}

    def final(self, scope: str, key: str) -> float | None:
        return self.summary["final"].get(scope, {}).get(key)

    def best(self, scope: str, key: str) -> float | None:
        return self.summary["best"].get(scope, {}).get(key)

    def curve(self, scope: str, key: str) -> tuple[list[int], list[float]]:
        """(rounds, values) of one metric, in round order."""
        pts = [
            (r["round"], r[key])
            for r in self.rows
            if r["scope"] == scope and isinstance(r.get(key), (int, float))
        ]
        return [p[0] for p in pts], [p[1] for p in pts]

    @property
    def wall_time_s(self) -> float | None:
        return self.summary.get("wall_time_s")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none). A diverged seed
    (a NaN or infinite loss) gives a NaN spread: ``statistics.stdev`` cannot take it."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    if not all(math.isfinite(v) for v in values):
        return statistics.fmean(values), math.nan if len(values) > 1 else 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt_mean_std(
    values: Iterable[float], digits: int = 3, empty: str = "–", sep: str = " ± "
) -> str:
    """``m ± s`` over seeds, ``m`` for one seed, ``empty`` for none."""
    values = list(values)
    if not values:
        return empty
    m, s = mean_std(values)
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f}{sep}{s:.{digits}f}"


def scan(root: Path, layout: str = "{cell}/seed{seed}") -> list[RunResult]:
    """Every run directory under ``root`` that fits ``layout``, whatever its status."""
    root = Path(root)
    pattern = layout.replace("{cell}", "*").replace("{seed}", "*")
    regex = re.compile(
        re.escape(layout)
        .replace(re.escape("{cell}"), r"(?P<cell>[^/]+?)")
        .replace(re.escape("{seed}"), r"(?P<seed>\d+)")
        + "$"
    )
    found = []
    for path in sorted(root.glob(pattern)):
        match = regex.match(path.relative_to(root).as_posix())
        if match and path.is_dir():
            status = run_status(path)
            if status != "missing":
                found.append(RunResult(match["cell"], int(match["seed"]), path, status))
    return found


def by_cell(results: Iterable[RunResult], status: str | None = "completed") -> dict[str, list]:
    """Results grouped by cell (in first-seen order), only ``status`` ones unless None."""
    cells: dict[str, list[RunResult]] = {}
    for r in results:
        cells.setdefault(r.cell, [])
        if status is None or r.status == status:
            cells[r.cell].append(r)
    return cells


@dataclass
class CellStats:
    cell: str
    planned: int
    completed: int
    statuses: dict[str, int] = field(default_factory=dict)  # not-completed runs by status
    metrics: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    wall_time_s: list[float] = field(default_factory=list)


def cell_stats(results: Iterable[RunResult]) -> list[CellStats]:
    """Per cell: every final and best metric of its completed runs (one value per seed)."""
    out = []
    for cell, runs in by_cell(results, status=None).items():
        done = [r for r in runs if r.status == "completed"]
        stats = CellStats(cell, len(runs), len(done))
        for r in runs:
            if r.status != "completed":
                stats.statuses[r.status] = stats.statuses.get(r.status, 0) + 1
        for r in done:
            for kind in ("final", "best"):
                for scope, values in r.summary[kind].items():
                    for key, value in values.items():
                        stats.metrics.setdefault((scope, key, kind), []).append(value)
            if r.wall_time_s is not None:
                stats.wall_time_s.append(float(r.wall_time_s))
        out.append(stats)
    return out


def _columns(stats: list[CellStats]) -> list[tuple[str, str, str, str]]:
    columns = [c for c in TABLE if any(c[:3] in s.metrics for s in stats)]
    return columns or ([FALLBACK] if any(FALLBACK[:3] in s.metrics for s in stats) else [])


def summary_table(stats: list[CellStats], title: str = "sweep") -> Table:
    """One row per cell; mean ± std over completed seeds; fits 80 columns."""
    columns = _columns(stats)
    title = f"{title}: mean ± std over seeds"
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        min_width=min(len(title) + 2, 80),
    )
    table.add_column("cell", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    for *_, header in columns:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("not done", overflow="fold", min_width=8)
    for s in stats:
        cells = [fmt_mean_std(s.metrics.get(c[:3], []), 3, "-", "±") for c in columns]
        problems = ", ".join(f"{n} {status}" for status, n in sorted(s.statuses.items()))
        problems = f"[red]{problems}[/]" if problems else ""
        table.add_row(escape(s.cell), f"{s.completed}/{s.planned}", *cells, problems)
    return table


def write_csv(stats: list[CellStats], path: Path) -> Path:
    """Per cell: counts, then mean and std of every final and best metric."""
    keys = sorted({k for s in stats for k in s.metrics})
    header = ["cell", "planned", "completed", "not_completed", "wall_time_s_mean"]
    for scope, key, kind in keys:
        header += [f"{scope}/{key}/{kind}_mean", f"{scope}/{key}/{kind}_std"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for s in stats:
            row: list[Any] = [s.cell, s.planned, s.completed, sum(s.statuses.values())]
            row.append(_num(mean_std(s.wall_time_s)[0]))
            for k in keys:
                m, sd = mean_std(s.metrics.get(k, []))
                row += [_num(m), _num(sd)]
            writer.writerow(row)
    return path


def _num(value: float) -> str:
    return "" if math.isnan(value) else repr(round(value, 6))


def mean_curve(runs: list[RunResult], scope: str, key: str):
    """(rounds, mean, std) over the runs that reached each round."""
    per_round: dict[int, list[float]] = {}
    for r in runs:
        for rnd, value in zip(*r.curve(scope, key)):
            per_round.setdefault(rnd, []).append(value)
    rounds = sorted(per_round)
    pairs = [mean_std(per_round[rnd]) for rnd in rounds]
    return rounds, [p[0] for p in pairs], [p[1] for p in pairs]


def plot_cells(results: Iterable[RunResult], out_dir: Path) -> list[Path]:
    """One PNG per metric: per cell the mean curve over completed seeds, band = ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cells = {c: runs for c, runs in by_cell(results).items() if runs}
    written = []
    for scope, key in CURVES:
        curves = {c: mean_curve(runs, scope, key) for c, runs in cells.items()}
        curves = {c: v for c, v in curves.items() if v[0]}
        path = out_dir / f"{scope}_{key}.png"
        if not curves:
            path.unlink(missing_ok=True)  # from an earlier summary of other cells
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        colours = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
        for i, (cell, (x, mean, std)) in enumerate(curves.items()):
            colour = colours(i % colours.N)
            style = ("-", "--", ":", "-.")[(i // colours.N) % 4]
            ax.plot(x, mean, style, color=colour, label=cell, lw=1.2)
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(x, lo, hi, color=colour, alpha=0.12)
        ax.set_title(f"{scope}: {key} (mean over seeds, band = ± std)")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 + len(curves) // 24
        )
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
