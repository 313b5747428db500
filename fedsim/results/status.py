"""Whether a run directory holds a finished run: the one check sweeps and reports share.

A run writes ``summary.json`` (with its ``status``) only when it ends, completed or failed;
a killed run leaves ``metrics.jsonl`` (and maybe a checkpoint) without a summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from fedsim.results.writer import METRICS, SUMMARY

RunStatus = Literal["completed", "failed", "interrupted", "incomplete", "missing"]

CHECKPOINTS = "checkpoints"
CONFIG = "config.toml"


def run_status(run_dir: Path) -> RunStatus:
    """``completed`` / ``failed`` / ``interrupted`` from summary.json; ``incomplete`` when a
    run started (config or metrics written) but left no readable summary (killed, or still
    running); ``missing`` when nothing of a run is there."""
    run_dir = Path(run_dir)
    summary = run_dir / SUMMARY
    if summary.is_file():
        try:
            status = json.loads(summary.read_text()).get("status")
        except (json.JSONDecodeError, AttributeError):
            status = None
        if status in ("completed", "failed", "interrupted"):
            return status
        return "incomplete"
    if (run_dir / METRICS).is_file() or (run_dir / CONFIG).is_file():
        return "incomplete"
    return "missing"


def has_checkpoint(run_dir: Path) -> bool:
    """True when ``fedsim resume`` has something to start from (any file in checkpoints/)."""
    folder = Path(run_dir) / CHECKPOINTS
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))
