"""``fedsim report``: final and best metrics of several runs side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from fedsim.results.writer import SUMMARY, read_metrics, summarise

# Shown first when present; other metrics follow.
PREFERRED = [("server-eval", "accuracy"), ("server-eval", "loss"), ("train", "train_loss")]


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY
    base = json.loads(path.read_text()) if path.exists() else {}
    return {**base, **summarise(read_metrics(Path(run_dir)))}


LABELS = {
    ("server-eval", "accuracy"): "test acc",
    ("server-eval", "loss"): "test loss",
    ("train", "train_loss"): "train loss",
}


def report_table(run_dirs: list[Path]) -> Table:
    """One row per run; each metric shows final / best, so it fits an 80-column terminal."""
    summaries = [(Path(d), load_summary(Path(d))) for d in run_dirs]
    columns = [
        c for c in PREFERRED if any(c[1] in s["final"].get(c[0], {}) for _, s in summaries)
    ]
    table = Table(title="fedsim runs (final / best)")
    table.add_column("run", overflow="fold", min_width=10)
    table.add_column("method", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in columns:
        table.add_column(LABELS[column], justify="right", no_wrap=True)
    for run_dir, s in summaries:
        status = {"completed": "done"}.get(str(s.get("status")), str(s.get("status", "?")))
        cells = [run_dir.name, str(s.get("method", "?")), status]
        for scope, key in columns:
            final = s["final"].get(scope, {}).get(key)
            best = s["best"].get(scope, {}).get(key)
            cells.append(f"{_fmt(final)}/{_fmt(best)}")
        table.add_row(*cells)
    return table


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
