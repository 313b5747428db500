"""Run a planned sweep: keep completed runs, resume interrupted ones, start the rest.

Each run is a separate ``python -m fedsim run|resume`` process (``--jobs`` of them at a
time), so a run directory is exactly what ``fedsim run --out`` writes and a crash of one
run cannot take the others down. A completed run is never touched; neither is a run whose
config differs from the plan (a smoke run with ``--set run.rounds=1`` in the same folder):
it is reported as a conflict instead. A failed run, or an unfinished one without a
checkpoint, is started again from scratch; an unfinished one with a checkpoint is resumed.
"""

from __future__ import annotations

import os
import shutil
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
from fedsim.results.lock import busy
from fedsim.results.status import has_checkpoint, run_status
from fedsim.sweep.plan import PlannedRun, Sweep
from fedsim.sweep.spec import SweepError, flatten
from fedsim.sweep.summarise import RunResult

Action = Literal["keep", "resume", "start", "conflict"]
# One intra-op thread per run process unless the user says otherwise: N parallel runs
# on few cores thrash with more (and results then do not depend on --jobs).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
IGNORED_KEYS = ("run.name",)  # runs of older sweeps were named differently


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
    from fedsim.runner import load_run_config

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


def decide(run: PlannedRun, planned: Experiment) -> Step:
    status = run_status(run.run_dir)
    if status == "missing":
        return Step(run, "start")
    if status == "failed":  # resuming would only replay its end; a fixed cause needs a new run
        return Step(run, "start", "failed before: from scratch")
    if status == "completed" or has_checkpoint(run.run_dir):
        difference = config_difference(planned, run.run_dir)
        if difference:
            return Step(run, "conflict", difference)
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
    """Remove a failed run, or an unfinished one without a checkpoint, so that
    ``fedsim run --out`` can start it again."""
    if run_status(run_dir) == "completed":  # never, whatever decided before
        raise RuntimeError(f"{run_dir}: refusing to delete a completed run")
    if busy(run_dir) is not None:
        return  # another process is running it: the fedsim run that follows says so
    shutil.rmtree(run_dir)


def _execute(
    step: Step, log: Path, procs: dict[PlannedRun, subprocess.Popen], jobs: int = 1
) -> float:
    if step.action == "start" and step.run.run_dir.exists():
        _clear(step.run.run_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = command(step)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env(jobs))
        procs[step.run] = proc
        proc.wait()
    procs.pop(step.run, None)
    return time.perf_counter() - t0


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
        try:
            while queue or pending:
                while queue and len(pending) < max(1, jobs):
                    step = queue.pop(0)
                    log = sweep.log_of(step.run)
                    pending[pool.submit(_execute, step, log, procs, jobs)] = step
                running = ", ".join(s.run.label for s in pending.values())
                progress.update(task, running=running)
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    step = pending.pop(future)
                    seconds = future.result()
                    run = step.run
                    result = RunResult(run.cell, run.seed, run.run_dir, run_status(run.run_dir))
                    results[run] = result
                    progress.console.print(_line(result, step.action, seconds, sweep.log_of(run)))
                    progress.advance(task)
        except BaseException:
            queue.clear()
            for proc in list(procs.values()):
                proc.terminate()
            raise
    return [results[run] for run in sweep.runs]


def collect(sweep: Sweep) -> list[RunResult]:
    """The planned runs as they are on disk (``--report-only``)."""
    return [RunResult(r.cell, r.seed, r.run_dir, run_status(r.run_dir)) for r in sweep.runs]
