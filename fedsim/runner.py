"""Run an experiment end to end: run directory, backend, progress, summary, plots."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from fedsim.config.load import from_toml, to_toml
from fedsim.config.schema import Experiment
from fedsim.federation.loop import RoundCallback, run_federation

CONFIG_FILE = "config.toml"
LOG_FILE = "log.txt"


class RunError(RuntimeError):
    """A run that could not start or did not finish; the message says why."""


def default_run_dir(exp: Experiment, root: Path | None = None) -> Path:
    root = root or Path(os.environ.get("FEDSIM_RUNS", "runs"))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = root / exp.run.name / f"{stamp}-seed{exp.run.seed}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def prepare_run_dir(exp: Experiment, out: Path | None) -> Path:
    run_dir = Path(out) if out is not None else default_run_dir(exp)
    if (run_dir / "metrics.jsonl").exists():
        raise RunError(
            f"{run_dir} already holds a run; use `fedsim resume {run_dir}` or another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(to_toml(exp))
    return run_dir


def attach_log_file(run_dir: Path, level: str) -> logging.Handler:
    """Everything (ours and Flower's) at INFO into log.txt; the console shows ``level``."""
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    console_level = getattr(logging, level)
    for name in ("fedsim", "flwr"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        # Flower narrates every round at INFO and warns about settings we chose on
        # purpose (fraction_evaluate=0); its console shows errors unless asked for more.
        shown = (
            console_level if name == "fedsim" or console_level <= logging.INFO else logging.ERROR
        )
        for other in logger.handlers:
            if other is not handler:
                other.setLevel(shown)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    for name in ("fedsim", "flwr"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def run_on_grid(grid: Grid, exp: Experiment, out: Path | None = None) -> Path:
    """Used by ``flwr run``: the Grid comes from Flower (simulation or deployment)."""
    run_dir = prepare_run_dir(exp, out)
    handler = attach_log_file(run_dir, exp.run.log_level)
    try:
        _finish(run_dir, exp, lambda: run_federation(grid, exp, run_dir), "flwr-run")
    finally:
        detach_log_file(handler)
    return run_dir


def run_experiment(
    exp: Experiment,
    out: Path | None = None,
    *,
    resume_dir: Path | None = None,
    on_round: RoundCallback | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run ``exp`` (or resume the run in ``resume_dir``); returns (run dir, summary)."""
    run_dir = resume_dir if resume_dir is not None else prepare_run_dir(exp, out)
    handler = attach_log_file(run_dir, exp.run.log_level)
    try:
        if exp.run.backend == "ray":
            from fedsim.backends.ray_backend import run_with_ray

            def body():
                return run_with_ray(exp, run_dir, resume=resume_dir is not None, on_round=on_round)
        else:
            body = _inprocess_body(exp, run_dir, resume_dir is not None, on_round)
        summary = _finish(run_dir, exp, body, exp.run.backend)
    finally:
        detach_log_file(handler)
    return run_dir, summary


def _inprocess_body(exp: Experiment, run_dir: Path, resume: bool, on_round):
    from fedsim.app import client_app
    from fedsim.backends.inprocess import InProcessGrid

    grid = InProcessGrid(
        client_app, exp.clients.num, exp.run.seed, client_timeout=exp.client.timeout
    )

    def client_states() -> dict[int, Any]:
        return {int(c.node_config["partition-id"]): c.state for c in grid.contexts.values()}

    def restore(states: dict[int, Any]) -> None:
        for context in grid.contexts.values():
            pid = int(context.node_config["partition-id"])
            if pid in states:
                context.state = states[pid]

    def body():
        return run_federation(
            grid,
            exp,
            run_dir,
            resume=resume,
            client_states=client_states,
            restore_client_states=restore,
            on_round=on_round,
        )

    return body


def _finish(run_dir: Path, exp: Experiment, body, backend: str) -> dict[str, Any]:
    from fedsim.results.plots import plot_run

    t0 = time.perf_counter()
    status, error = "completed", None
    try:
        result = body()
    except Exception as exc:
        status, error, result = "failed", f"{type(exc).__name__}: {exc}", None
        logging.getLogger("fedsim").exception("run failed")
    from fedsim.results.writer import RunWriter

    writer = RunWriter(run_dir)
    summary = writer.summary(
        {
            "name": exp.run.name,
            "method": exp.method,
            "backend": backend,
            "seed": exp.run.seed,
            "status": status,
            "error": error,
            "rounds": exp.run.rounds,
            "client_failures": getattr(result, "failures", None),
            "wall_time_s": round(time.perf_counter() - t0, 3),
        }
    )
    if writer.rows:
        plot_run(run_dir)
    if status != "completed":
        raise RunError(f"run failed: {error} (see {run_dir / LOG_FILE})")
    return summary


def load_run_config(run_dir: Path) -> Experiment:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise RunError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return from_toml(path.read_text(), str(path))
