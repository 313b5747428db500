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


def report_table(run_dirs: list[Path]) -> Table:
    summaries = [(Path(d), load_summary(Path(d))) for d in run_dirs]
    columns: list[tuple[str, str]] = [
        c for c in PREFERRED if any(c[1] in s["final"].get(c[0], {}) for _, s in summaries)
    ]
    table = Table(title="fedsim runs")
    table.add_column("run")
    table.add_column("method")
    table.add_column("status")
    for scope, key in columns:
        table.add_column(f"{scope} {key}\nfinal", justify="right")
        table.add_column("best", justify="right")
    for run_dir, s in summaries:
        cells = [str(run_dir), str(s.get("method", "?")), str(s.get("status", "?"))]
        for scope, key in columns:
            final = s["final"].get(scope, {}).get(key)
            best = s["best"].get(scope, {}).get(key)
            cells += [_fmt(final), _fmt(best)]
        table.add_row(*cells)
    return table


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
