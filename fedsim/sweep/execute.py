"""Run a planned sweep: keep completed runs, resume interrupted ones, start the rest.

Each run is a separate ``python -m fedsim run|resume`` process (``--jobs`` of them at a
time), so a run directory is exactly what ``fedsim run --out`` writes and a crash of one
run cannot take the others down. A completed run is never touched; neither is a run whose
config differs from the plan (a smoke run with ``--set run.rounds=1`` in the same folder):
it is reported as a conflict instead. A failed run, or an unfinished one without a
checkpoint, is started again from scratch; an unfinished one with a checkpoint is resumed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedsim.config import Experiment
from fedsim.config.load import ConfigError, load_experiment
from fedsim.errors import FedsimError
from fedsim.interrupt import EXIT_CODES, RunInterrupted, interruptible
from fedsim.results.cells import RunResult
from fedsim.results.lock import busy
from fedsim.results.status import CONFIG, has_checkpoint, run_status
from fedsim.sweep.plan import PlannedRun, Sweep
from fedsim.sweep.spec import SweepError, flatten

Action = Literal["keep", "resume", "start", "conflict"]
# One intra-op thread per run process unless the user says otherwise: N parallel runs
# on few cores thrash with more (and results then do not depend on --jobs).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
IGNORED_KEYS = ("run.name",)  # runs of older sweeps were named differently
STOP_GRACE_S = 60.0  # how long a stopped sweep waits for its runs to mark themselves interrupted


@dataclass
class Step:
    run: PlannedRun
    action: Action
    note: str = ""


def validate(sweep: Sweep) -> dict[PlannedRun, Experiment]:
    """Load every planned run's experiment: a bad config stops the sweep before any run."""
    exps = {}
    for run in sweep.runs:
        try:
            exps[run] = load_experiment(run.experiment, dict(run.overrides))
        except ConfigError as exc:
            raise SweepError(f"{exc} (cell {run.cell}, seed {run.seed})") from None
    return exps


def config_difference(planned: Experiment, run_dir: Path) -> str:
    """The first key where the run directory's config.toml differs from the plan, or ''."""
    from fedsim.config.load import load_run_config

    try:
        existing = load_run_config(run_dir)
    except FedsimError as exc:
        return f"its config cannot be read ({exc})"
    old = flatten(existing.model_dump(mode="json"))
    new = flatten(planned.model_dump(mode="json"))
    for key in sorted(set(old) | set(new)):
        if key not in IGNORED_KEYS and old.get(key) != new.get(key):
            return f"config differs: {key} = {old.get(key)!r} there, {new.get(key)!r} planned"
    return ""


def foreign_entries(run_dir: Path) -> list[str]:
    """What is in a folder at a run's path that no fedsim run put there: every entry, when
    the folder holds no run (no config.toml, metrics.jsonl or summary.json)."""
    if not run_dir.is_dir() or run_status(run_dir) != "missing":
        return []
    return sorted(p.name for p in run_dir.iterdir())


def decide(run: PlannedRun, planned: Experiment) -> Step:
    """What to do with a planned run. Only a run of this very spec (its config.toml as
    planned) is ever started again from scratch, which deletes it; anything else at its
    path is left alone as a conflict."""
    status = run_status(run.run_dir)
    if status == "missing":
        foreign = foreign_entries(run.run_dir)
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            shown = ", ".join(foreign[:3]) + more
            return Step(run, "conflict", f"holds files that are not a fedsim run ({shown})")
        return Step(run, "start")
    difference = config_difference(planned, run.run_dir)
    if difference:
        return Step(run, "conflict", difference)
    if status == "failed":  # resuming would only replay its end; a fixed cause needs a new run
        return Step(run, "start", "failed before: from scratch")
    if status == "completed" or has_checkpoint(run.run_dir):
        return Step(run, "keep" if status == "completed" else "resume", status)
    return Step(run, "start", f"{status}, no checkpoint: from scratch")


def plan_steps(sweep: Sweep) -> list[Step]:
    exps = validate(sweep)
    return [decide(run, exps[run]) for run in sweep.runs]


def command(step: Step) -> list[str]:
    fedsim = [sys.executable, "-m", "fedsim"]
    if step.action == "resume":
        return [*fedsim, "resume", str(step.run.run_dir)]
    run = step.run
    return [*fedsim, "run", str(run.experiment), "--out", str(run.run_dir), *run.set_args()]


def child_env(jobs: int = 1) -> dict[str, str]:
    """A run's environment: one intra-op thread (THREAD_VARS) and, with ``jobs`` runs at
    once, each run's local Ray (``run.backend = "ray"``) sized to its share of the CPUs,
    not all of them for every run."""
    from fedsim.backends.ray_start import RAY_SHARE_VAR

    env = dict(os.environ)
    for var in THREAD_VARS:
        env.setdefault(var, "1")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if jobs > 1:
        env.setdefault(RAY_SHARE_VAR, str(jobs))
    return env


def _clear(run_dir: Path) -> None:
    """Remove a failed run, or an unfinished one without a checkpoint, of the planned spec,
    so that ``fedsim run --out`` can start it again. An empty folder is kept (the run uses
    it); anything that is not a fedsim run was turned into a conflict by ``decide``, and is
    checked again here, just before deleting."""
    status = run_status(run_dir)
    if status == "completed":  # never, whatever decided before
        raise RuntimeError(f"{run_dir}: refusing to delete a completed run")
    if status == "missing":
        if foreign_entries(run_dir):
            raise RuntimeError(f"{run_dir}: refusing to delete files that are not a run")
        return
    if busy(run_dir) is not None:
        return  # another process is running it: the fedsim run that follows says so
    if not (run_dir / CONFIG).is_file():
        raise RuntimeError(f"{run_dir}: refusing to delete a run without its config.toml")
    shutil.rmtree(run_dir)


class SweepStopped(FedsimError):
    """Ctrl-C or SIGTERM stopped the sweep: its runs were interrupted (once each) and can be
    continued by running the same sweep again."""

    label = "stopped"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = EXIT_CODES.get(signum, 1)


def _execute(
    step: Step, log: Path, procs: dict[PlannedRun, subprocess.Popen], jobs: int = 1
) -> tuple[float | None, int]:
    """Run one step's process to its end: (seconds, exit code). Each run gets a session
    of its own, so a Ctrl-C at the terminal reaches the sweep alone, and the sweep passes it
    on to every run exactly once (two signals break a run's clean stop). A run that another
    process (a second sweep over the same folder) completed after this sweep was planned is
    kept, not started again: (None, 0)."""
    if run_status(step.run.run_dir) == "completed":
        return None, 0
    if step.action == "start" and step.run.run_dir.exists():
        _clear(step.run.run_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = command(step)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=child_env(jobs),
            start_new_session=True,
        )
        procs[step.run] = proc
        code = proc.wait()
    procs.pop(step.run, None)
    return time.perf_counter() - t0, code


def _last_error(log: Path) -> str:
    """The last ``error: ...`` line a run's process wrote to its log, or ''."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((ln.strip() for ln in reversed(lines) if ln.startswith("error: ")), "")


def _result_of(step: Step, code: int, log: Path) -> RunResult:
    """What a finished step left: the run directory's status, except that a process which
    exited non-zero without failing the run (another fedsim process holds it, say) did not
    do the run: a conflict, with its own error line."""
    run = step.run
    status = run_status(run.run_dir)
    if code != 0 and status in ("completed", "incomplete", "missing"):
        why = _last_error(log) or f"its process exited {code}"
        return RunResult(run.cell, run.seed, run.run_dir, "conflict", f"not run here: {why}")
    return RunResult(run.cell, run.seed, run.run_dir, status)


def _stop_runs(procs: dict[PlannedRun, subprocess.Popen], signum: int, grace_s: float) -> None:
    """Pass ``signum`` on to every run still going, once, and give them ``grace_s`` to mark
    themselves interrupted; a run still there after that is killed (its last checkpoint
    stays, so the sweep resumes it)."""
    for proc in list(procs.values()):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
    deadline = time.monotonic() + grace_s
    for proc in list(procs.values()):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def _line(result: RunResult, action: Action, seconds: float | None, log: Path) -> str:
    """One rich-markup line for a finished (or kept, or left alone) run."""
    took = f"{seconds:5.0f}s" if seconds is not None else ""
    where = escape(str(result.run_dir))
    if result.status == "conflict":
        return f"[red]{'conflict':9}[/] {where}  left alone: {escape(result.note)}"
    if result.status != "completed":
        reason = escape(str(result.summary.get("error") or "no summary.json"))
        return f"[red]{result.status:9}[/] {where}  {took}  {reason} (log: {escape(str(log))})"
    verb = {"keep": "kept", "resume": "resumed", "start": "done"}[action]
    metrics = []
    for key, name in (("accuracy", "acc"), ("loss", "loss")):
        value = result.final("server-eval", key)
        if value is not None:
            metrics.append(f"{name} {value:.4f}")
    return f"[green]{verb:9}[/] {where}  {' '.join(metrics)}  {took}"


def run_sweep(sweep: Sweep, steps: list[Step], jobs: int, console: Console) -> list[RunResult]:
    """Carry out ``steps`` with ``jobs`` processes; one line per finished run."""
    results: dict[PlannedRun, RunResult] = {}
    todo = [s for s in steps if s.action in ("start", "resume")]
    for s in steps:
        if s.action in ("keep", "conflict"):
            status = "completed" if s.action == "keep" else "conflict"
            results[s.run] = RunResult(s.run.cell, s.run.seed, s.run.run_dir, status, s.note)
    kept = sum(s.action == "keep" for s in steps)
    if kept:
        console.print(f"kept {kept} completed run{'s' * (kept > 1)}")
    for s in steps:
        if s.action == "conflict":
            console.print(_line(results[s.run], "keep", None, sweep.log_of(s.run)))
    procs: dict[PlannedRun, subprocess.Popen] = {}
    columns = (
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[running]}"),
    )
    with (
        Progress(*columns, console=console, transient=True) as progress,
        ThreadPoolExecutor(max_workers=max(1, jobs)) as pool,
    ):
        task = progress.add_task("runs", total=len(todo), running="")
        pending: dict[Future, Step] = {}
        queue = list(todo)

        def finish(future: Future) -> None:
            step = pending.pop(future)
            seconds, code = future.result()
            log = sweep.log_of(step.run)
            results[step.run] = result = _result_of(step, code, log)
            action = step.action if seconds is not None else "keep"  # completed elsewhere
            progress.console.print(_line(result, action, seconds, log))
            progress.advance(task)

        try:
            with interruptible():
                while queue or pending:
                    while queue and len(pending) < max(1, jobs):
                        step = queue.pop(0)
                        log = sweep.log_of(step.run)
                        pending[pool.submit(_execute, step, log, procs, jobs)] = step
                    running = ", ".join(s.run.label for s in pending.values())
                    progress.update(task, running=running)
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        finish(future)
        except RunInterrupted as exc:
            queue.clear()
            _stop_runs(procs, exc.signum, STOP_GRACE_S)
            for future in list(pending):
                future.result()  # the thread returns once its run has stopped
                finish(future)
            raise SweepStopped(f"{signal.Signals(exc.signum).name}", exc.signum) from None
        except BaseException:
            queue.clear()
            for proc in list(procs.values()):
                proc.terminate()
            raise
    return [results[run] for run in sweep.runs]


def collect(sweep: Sweep) -> list[RunResult]:
    """The planned runs as they are on disk (``--report-only``)."""
    return [RunResult(r.cell, r.seed, r.run_dir, run_status(r.run_dir)) for r in sweep.runs]
