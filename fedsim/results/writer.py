"""Writes a run's results as it goes, so a killed run leaves everything up to its last round.

``metrics.jsonl`` holds one row per (round, scope) with no timestamps, so two runs of the
same config and seed produce byte-identical files. Wall-clock figures go to
``summary.json`` and ``log.txt`` instead.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from fedsim.atomic import named, write_atomically
from fedsim.errors import UsageError

METRICS = "metrics.jsonl"
COMM = "comm.csv"
SUMMARY = "summary.json"
COMM_FIELDS = ["round", "stage", "partition_id", "direction", "bytes"]


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):  # e.g. the clients of a ``failures`` row
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return float(value)


def _finite(value: Any, key: str, found: dict[str, str]) -> Any:
    """``value`` with every non-finite float replaced by None, each one noted in ``found``
    under its key path (``loss``, ``per_category.3``) as ``nan``, ``inf`` or ``-inf``."""
    if isinstance(value, float) and not math.isfinite(value):
        found[key] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, list):
        return [_finite(v, f"{key}.{i}", found) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _finite(v, f"{key}.{k}", found) for k, v in value.items()}
    return value


class RunDataError(UsageError):
    """A run directory's own files are damaged (a row that is not a metrics row...)."""


def _row_problem(line: str) -> str | None:
    try:
        row = json.loads(line)
    except ValueError:
        return "not JSON"
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    if not isinstance(row.get("round"), int) or not isinstance(row.get("scope"), str):
        return "no integer 'round' and text 'scope'"
    return None


def _lines(path: Path) -> tuple[list[str], str]:
    """A run file's whole lines, and the last one if a kill cut it before its newline ('' when
    the file ends with one); none for a missing file. Undecodable bytes become U+FFFD, so the
    line that holds them is reported, not the file."""
    if not path.exists():
        return [], ""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise RunDataError(f"{path}: cannot read ({exc.strerror})") from None
    lines = text.split("\n")
    return lines, lines.pop()


def check_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every readable row, and one message per unreadable line (``path:line: why``).

    A last line without its newline is what a kill mid-write leaves: dropped silently, as a
    resume rewrites it anyway.
    """
    path = Path(run_dir) / METRICS
    lines, cut = _lines(path)
    rows, problems = [], []
    for number, line in enumerate(lines, start=1):
        problem = _row_problem(line)
        if problem is None:
            rows.append(json.loads(line))
        else:
            problems.append(f"{path}:{number}: {problem}")
    if cut and _row_problem(cut) is None:
        rows.append(json.loads(cut))
    return rows, problems


def _comm_problem(line: str) -> str | None:
    parts = line.split(",")
    if len(parts) != len(COMM_FIELDS):
        return f"{len(parts)} fields, not {len(COMM_FIELDS)} ({','.join(COMM_FIELDS)})"
    round_, _, pid, direction, size = parts
    if not (round_.lstrip("-").isdigit() and pid.isdigit() and size.isdigit()):
        return "round, partition_id and bytes must be integers"
    if direction not in ("down", "up"):
        return f"direction {direction!r} is neither down nor up"
    return None


def check_comm(run_dir: Path) -> tuple[list[str], list[str]]:
    """Every well-formed traffic row of ``comm.csv`` (header first), and one message per
    damaged line (``path:line: why``). As in ``check_metrics``, a last line without its
    newline (a kill mid-write) is dropped silently."""
    path = Path(run_dir) / COMM
    lines, cut = _lines(path)
    if not lines:
        return [], [] if not cut else [f"{path}:1: no header line"]
    header, rows, problems = lines[0], [], []
    if header.split(",") != COMM_FIELDS:
        problems.append(f"{path}:1: header is not {','.join(COMM_FIELDS)}")
    for number, line in enumerate(lines[1:], start=2):
        problem = _comm_problem(line)
        if problem is None:
            rows.append(line)
        else:
            problems.append(f"{path}:{number}: {problem}")
    if cut and _comm_problem(cut) is None:
        rows.append(cut)
    return [header, *rows], problems


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The readable rows of ``metrics.jsonl`` (unreadable lines skipped; see check_metrics)."""
    return check_metrics(run_dir)[0]


class RunWriter:
    """Appends metrics and traffic rows; can cut both back to a round when resuming."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = read_metrics(self.run_dir)

    def metrics(self, server_round: int, scope: str, values: dict[str, Any]) -> None:
        """Append one row. A non-finite value (a diverged loss) is written as null and named
        under ``non_finite`` (``{"loss": "nan"}``): every line stays JSON, which has no NaN."""
        row = {"round": server_round, "scope": scope, **{k: _plain(v) for k, v in values.items()}}
        non_finite: dict[str, str] = {}
        row = {k: _finite(v, k, non_finite) for k, v in row.items()}
        if non_finite:
            row["non_finite"] = non_finite
        self.rows.append(row)
        path = self.run_dir / METRICS
        try:
            with open(path, "a") as f:
                f.write(json.dumps(row, allow_nan=False) + "\n")
        except OSError as exc:  # a full disk: name the file (a cut last line is dropped)
            raise named(exc, path) from None

    def comm(self, server_round: int, stage: str, down: dict[int, int], up: dict[int, int]) -> None:
        path = self.run_dir / COMM
        new = not path.exists()
        try:
            with open(path, "a", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                if new:
                    writer.writerow(COMM_FIELDS)
                for pid in sorted(set(down) | set(up)):
                    if pid in down:
                        writer.writerow([server_round, stage, pid, "down", down[pid]])
                    if pid in up:
                        writer.writerow([server_round, stage, pid, "up", up[pid]])
        except OSError as exc:
            raise named(exc, path) from None

    def truncate_to(self, last_round: int) -> None:
        """Drop rows after ``last_round`` (written after the checkpoint a resume starts from)."""
        self.rows = [r for r in read_metrics(self.run_dir) if r["round"] <= last_round]
        text = "".join(json.dumps(r) + "\n" for r in self.rows)
        _atomic_write(self.run_dir / METRICS, text)
        path = self.run_dir / COMM
        lines, _ = check_comm(self.run_dir)  # a resume checked them first (fedsim.resume)
        if lines:
            kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split(",")[0]) <= last_round]
            _atomic_write(path, "\n".join(kept) + "\n")

    def summary(self, extra: dict[str, Any]) -> dict[str, Any]:
        summary = {**extra, **summarise(self.rows)}
        diverged = next((r for r in self.rows if r.get("non_finite")), None)
        if diverged is not None:
            keys = ", ".join(f"{k} = {v}" for k, v in diverged["non_finite"].items())
            summary["diverged"] = f"round {diverged['round']} ({diverged['scope']}): {keys}"
        text = json.dumps(_finite(summary, "summary", {}), indent=2, allow_nan=False)
        _atomic_write(self.run_dir / SUMMARY, text + "\n")
        return summary


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best value of every numeric metric, per scope."""
    final: dict[str, dict[str, Any]] = {}
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        scope = row["scope"]
        for key, value in row.items():
            if key in ("round", "scope") or not isinstance(value, (int, float)):
                continue
            final.setdefault(scope, {})[key] = value
            lower_is_better = "loss" in key or "perplexity" in key or key == "failures"
            current = best.setdefault(scope, {}).get(key)
            if current is None or (value < current if lower_is_better else value > current):
                best[scope][key] = value
    return {"final": final, "best": best}


def _atomic_write(path: Path, text: str) -> None:
    write_atomically(path, text)
