"""``fedsim report``: final and best metrics of several runs side by side.

A table at most 80 columns wide when the terminal is (the test accuracy shows final/best, the
losses their final value); a narrower terminal gets one short block per run instead, so no
value is ever cut. Failed, interrupted and killed runs are rows with their status.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedsim.errors import UsageError
from fedsim.results.status import run_status
from fedsim.results.writer import SUMMARY, check_metrics, summarise

# (scope, key, label, show best too)
COLUMNS = [
    ("server-eval", "accuracy", "test acc", True),
    ("server-eval", "loss", "test loss", False),
    ("train", "train_loss", "train loss", False),
    ("systems", "virtual-time-s", "virtual h", False),  # [systems]: the last round's end
]
HOURS = {"virtual-time-s"}  # seconds shown as hours
STATUS = {"completed": "done"}


def load_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json (when readable) with final/best recomputed from the readable metrics."""
    path = Path(run_dir) / SUMMARY
    try:
        base = json.loads(path.read_text()) if path.exists() else {}
    except (ValueError, OSError):
        base = {}
    base = base if isinstance(base, dict) else {}
    return {**base, **summarise(check_metrics(Path(run_dir))[0])}


SHOWN = 5  # skipped arguments named one by one; the rest are counted


def usable_runs(run_dirs: list[Path], warn: Callable[[str], None]) -> list[Path]:
    """The arguments that are run directories (others are named in a warning and skipped)."""
    runs, skipped = [], []
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir() or run_status(run_dir) == "missing":
            skipped.append(run_dir)
            continue
        for problem in check_metrics(run_dir)[1]:
            warn(f"{problem}; that line is left out")
        runs.append(run_dir)
    if not runs:
        what = f"none of the {len(skipped)} arguments is" if len(skipped) > 1 else "the argument"
        what += "" if len(skipped) > 1 else f" {skipped[0]} is not"
        raise UsageError(
            f"{what} a run directory (one holds config.toml, metrics.jsonl or summary.json, "
            "as fedsim run writes it)"
        )
    for run_dir in skipped[:SHOWN]:
        warn(f"{run_dir}: not a run directory (no config.toml, metrics.jsonl or summary.json)")
    if len(skipped) > SHOWN:
        warn(f"... and {len(skipped) - SHOWN} more arguments that are not run directories")
    return runs


def _rows(run_dirs: list[Path]) -> tuple[list[tuple[str, ...]], list[tuple]]:
    summaries = [(d, load_summary(d)) for d in run_dirs]
    columns = [c for c in COLUMNS if any(c[1] in s["final"].get(c[0], {}) for _, s in summaries)]
    rows = []
    for run_dir, s in summaries:
        status = run_status(run_dir)
        cells = [run_dir.name, str(s.get("method", "?")), STATUS.get(status, status)]
        for scope, key, _, with_best in columns:
            if key in HOURS:
                cells.append(_hours(s["final"].get(scope, {}).get(key)))
                continue
            final = _fmt(s["final"].get(scope, {}).get(key))
            best = _fmt(s["best"].get(scope, {}).get(key))
            cells.append(f"{final}/{best}" if with_best else final)
        rows.append(tuple(cells))
    return rows, columns


def report_table(run_dirs: list[Path]) -> Table:
    rows, columns = _rows([Path(d) for d in run_dirs])
    title = "fedsim runs (test acc: final/best)"
    table = Table(
        title=title,
        box=None,
        padding=(0, 0, 0, 1),
        pad_edge=False,
        title_justify="left",
        header_style="bold underline",
    )
    table.add_column("run", no_wrap=True)
    table.add_column("method", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for _, _, label, _ in columns:
        table.add_column(label, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # a run named "[red]x" stays as it is
    return table


def print_report(run_dirs: list[Path], console: Console) -> None:
    """The table if it fits the terminal, else one block per run (values never cut)."""
    table = report_table(run_dirs)
    if console.measure(table, options=console.options.update_width(10**4)).maximum <= console.width:
        console.print(table)
        return
    rows, columns = _rows([Path(d) for d in run_dirs])
    for name, method, status, *values in rows:
        console.print(f"{name}  {method}  {status}", markup=False, highlight=False)
        for (_, _, label, with_best), value in zip(columns, values):
            shown = value.replace("/", " (best ") + ")" if with_best else value
            console.print(f"  {label}: {shown}", markup=False, highlight=False)


def _fmt(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.4f}"


def _hours(seconds: Any) -> str:
    return "-" if not isinstance(seconds, (int, float)) else f"{seconds / 3600:.2f}"
