"""Run an experiment end to end: run directory, backend, progress, summary, plots."""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from fedsim.checkpoint import Checkpoint
from fedsim.config.load import to_toml
from fedsim.config.schema import Experiment
from fedsim.errors import FedsimError, UsageError
from fedsim.federation.callbacks import Callback, LogProgress, SetupClock, standard_callbacks
from fedsim.federation.loop import run_federation
from fedsim.interrupt import RunInterrupted, interruptible
from fedsim.results.lock import busy, claim, release

CONFIG_FILE = "config.toml"
LOG_FILE = "log.txt"


class RunError(FedsimError, RuntimeError):
    """A run that could not start or did not finish; the message says why."""


class RunStopped(RunError):
    """A run stopped by SIGINT/SIGTERM, marked ``interrupted``; resumable."""

    label = "stopped"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def default_run_dir(exp: Experiment, root: Path | None = None) -> Path:
    root = root or Path(os.environ.get("FEDSIM_RUNS", "runs"))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = root / exp.run.name / f"{stamp}-seed{exp.run.seed}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


RUN_FILES = (CONFIG_FILE, "metrics.jsonl", "summary.json", "checkpoints")


def prepare_run_dir(exp: Experiment, out: Path | None) -> Path:
    """A new run directory holding the resolved config; refuses, changing nothing, a folder
    that already holds a run (or that another live process holds), a path that is a file,
    and a place that cannot be written. Leaves the directory locked by this process
    (``fedsim.results.lock``): the ``execute_run`` or ``run_on_grid`` that follows
    releases it."""
    run_dir = Path(out) if out is not None else default_run_dir(exp)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: is a file, not a run directory; choose another --out")
    if any((run_dir / name).exists() for name in RUN_FILES):
        raise busy(run_dir) or _holds_a_run(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        claim(run_dir)  # before anything is written; held until execute_run ends
        try:
            if any((run_dir / name).exists() for name in RUN_FILES):
                raise _holds_a_run(run_dir)  # another process started it a moment ago
            (run_dir / CONFIG_FILE).write_text(to_toml(exp))
        except BaseException:
            release(run_dir)
            raise
    except OSError as exc:
        where = exc.filename or run_dir
        raise UsageError(
            f"{where}: cannot write the run directory ({exc.strerror}); choose another --out "
            "or set FEDSIM_RUNS"
        ) from None
    return run_dir


def _holds_a_run(run_dir: Path) -> UsageError:
    return UsageError(
        f"{run_dir}: already holds a run; continue it with fedsim resume {run_dir}, or "
        "choose another --out"
    )


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
    """Used by ``flwr run``: the Grid comes from Flower (simulation or deployment).

    Progress goes to stdout and the log (one line per round), since there is no terminal to
    draw on; client state lives on the SuperNodes and is not checkpointed (docs/engine.md).
    """
    run_dir = prepare_run_dir(exp, out)
    try:
        handler = attach_log_file(run_dir, exp.run.log_level)
        clock = SetupClock(time.perf_counter())
        callbacks = [clock, *standard_callbacks(exp, run_dir), LogProgress(_progress_logger())]
        try:
            _finish(
                run_dir,
                exp,
                lambda: run_federation(grid, exp, run_dir, callbacks=callbacks),
                "flwr-run",
                clock=clock,
            )
        finally:
            detach_log_file(handler)
    finally:
        release(run_dir)
    return run_dir


def _progress_logger() -> logging.Logger:
    """``fedsim.progress``: round lines on stdout (``flwr run --stream`` shows them) and,
    through ``fedsim``, in log.txt."""
    progress = logging.getLogger("fedsim.progress")
    if not progress.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("fedsim: %(message)s"))
        progress.addHandler(handler)
    return progress


def run_experiment(
    exp: Experiment,
    out: Path | None = None,
    *,
    callbacks: list[Callback] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run ``exp`` into a new run directory; returns (run dir, summary).

    ``callbacks`` run after the standard ones (results, checkpoints, server evaluation),
    e.g. a progress bar.
    """
    run_dir = prepare_run_dir(exp, out)
    return run_dir, execute_run(exp, run_dir, None, callbacks)


def resume_run(
    run_dir: Path, *, force: bool = False, callbacks: list[Callback] | None = None
) -> tuple[Path, dict[str, Any]]:
    """Continue the run in ``run_dir`` from its last good checkpoint (``fedsim.resume``
    checks it first and refuses, changing nothing, when it cannot)."""
    from fedsim.resume import plan_resume

    claim_for_resume(run_dir)
    try:
        plan = plan_resume(Path(run_dir), force)
    except BaseException:
        release(run_dir)
        raise
    summary = execute_run(plan.exp, Path(run_dir), plan.checkpoint, callbacks, plan.notes)
    return Path(run_dir), summary


def claim_for_resume(run_dir: Path) -> None:
    """Lock a run directory before a resume reads it (another process may be writing it);
    a path that is not a folder is left to ``plan_resume`` to refuse."""
    if Path(run_dir).is_dir():
        try:
            claim(run_dir)
        except OSError as exc:
            raise UsageError(
                f"{exc.filename or run_dir}: cannot lock the run directory ({exc.strerror})"
            ) from None


def execute_run(
    exp: Experiment,
    run_dir: Path,
    checkpoint: Checkpoint | None,
    callbacks: list[Callback] | None = None,
    notes: list[str] = (),
) -> dict[str, Any]:
    """Run (or, from ``checkpoint``, continue) ``exp`` in a prepared run directory;
    ``notes`` (e.g. a damaged checkpoint skipped) go to the log first. Holds the run
    directory's lock (taken here unless this process holds it already) and releases it at
    the end, whatever happened."""
    claim(run_dir)
    try:
        return _execute_locked(exp, run_dir, checkpoint, callbacks, notes)
    finally:
        release(run_dir)


def _execute_locked(
    exp: Experiment,
    run_dir: Path,
    checkpoint: Checkpoint | None,
    callbacks: list[Callback] | None,
    notes: list[str],
) -> dict[str, Any]:
    handler = attach_log_file(run_dir, exp.run.log_level)
    for note in notes:
        logging.getLogger("fedsim").warning(note)
    clock = SetupClock(time.perf_counter())
    all_callbacks = [clock, *standard_callbacks(exp, run_dir), *(callbacks or [])]
    wall_before = float(checkpoint.meta.get("wall_time_s", 0.0)) if checkpoint else 0.0
    try:
        if exp.run.backend == "flower-simulation":
            from fedsim.backends.flower_simulation import run_with_flower_simulation

            def body():
                return run_with_flower_simulation(exp, run_dir, all_callbacks, checkpoint)
        else:
            body = _fedsim_grid_body(exp, run_dir, all_callbacks, checkpoint)
        return _finish(run_dir, exp, body, exp.run.backend, wall_before, clock)
    finally:
        detach_log_file(handler)


def _fedsim_grid_body(
    exp: Experiment, run_dir: Path, callbacks: list[Callback], checkpoint: Checkpoint | None
):
    """fedsim's own grids: in this process, or over Ray workers (contexts stay here)."""
    from fedsim.backends.inprocess import InProcessClientStates, InProcessGrid
    from fedsim.client_app import client_app

    def body():
        if exp.run.backend == "ray":
            from fedsim.backends.ray_workers import RayGrid

            grid = RayGrid(client_app, exp)  # workers start while round 0 is prepared
        else:
            from fedsim.data.client import node_configs

            grid = InProcessGrid(
                client_app, exp.clients.num, exp.run.seed, node_configs=node_configs(exp)
            )
        try:
            return run_federation(
                grid,
                exp,
                run_dir,
                callbacks=callbacks,
                checkpoint=checkpoint,
                client_states=InProcessClientStates(grid),
            )
        finally:
            if hasattr(grid, "shutdown"):
                grid.shutdown()

    return body


def _finish(
    run_dir: Path,
    exp: Experiment,
    body,
    backend: str,
    wall_before: float = 0.0,
    clock: SetupClock | None = None,
) -> dict[str, Any]:
    """Run ``body`` (interruptible), then write summary.json and the plot whatever happened."""
    from fedsim.checkpoint import latest_round
    from fedsim.results.writer import RunWriter

    log = logging.getLogger("fedsim")
    t0 = time.perf_counter()
    status, error, interrupted = "completed", None, None
    try:
        with interruptible():
            body()
    except RunInterrupted as exc:
        status, error, interrupted = "interrupted", f"interrupted by {exc}", exc
    except Exception as exc:
        interrupted = _interruption_behind(exc)
        if interrupted is not None:  # raised inside native code, which wrapped it
            status, error = "interrupted", f"interrupted by {interrupted}"
        else:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("run failed")
    writer = RunWriter(run_dir)
    rounds_done = max((r["round"] for r in writer.rows if r["scope"] == "train"), default=0)
    summary = writer.summary(
        {
            "name": exp.run.name,
            "method": exp.method,
            "backend": backend,
            "seed": exp.run.seed,
            "status": status,
            "error": error,
            "rounds": exp.run.rounds,
            "rounds_done": rounds_done,
            "client_failures": sum(int(r.get("failures", 0)) for r in writer.rows),
            "wall_time_s": round(wall_before + time.perf_counter() - t0, 3),
            "setup_s": clock.seconds if clock is not None else None,
        }
    )
    if writer.rows:
        # imported here, not before the run: matplotlib takes about 1 s to import, which
        # would delay the run's start (and a Ray run's workers)
        from fedsim.results.plots import plot_run

        plot_run(run_dir)
    if backend == "ray":  # its local Ray stopped while the summary and plots were written
        from fedsim.backends.ray_start import wait_for_ray_stop

        wait_for_ray_stop()
    if interrupted is not None:
        resume_from = latest_round(run_dir)
        started = clock.round if clock is not None and clock.round is not None else None
        in_round = started if started is not None else rounds_done + 1
        message = (
            f"{error} in round {in_round}; the last checkpoint is of round {resume_from}; "
            "continue with: "
            f"fedsim resume {run_dir}"
        )
        log.warning(message)
        raise RunStopped(message, interrupted.exit_code)
    if status != "completed":
        raise RunError(f"run failed: {error} (see {run_dir / LOG_FILE})")
    return summary


def _interruption_behind(exc: BaseException) -> RunInterrupted | None:
    """The Ctrl-C/SIGTERM behind ``exc``, if any. The signal handler raises wherever the
    main thread is; inside a C extension that then returns (Ray's ``CoreWorker.wait``, where
    a Ray run's driver waits most of the time), Python reports a ``SystemError`` whose
    context is the ``RunInterrupted``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RunInterrupted):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
