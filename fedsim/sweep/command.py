"""What ``fedsim sweep`` does, apart from parsing its options (fedsim/cli.py)."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedsim.results.cells import cell_stats, plot_cells, summary_table, write_csv
from fedsim.sweep.execute import Step, SweepStopped, collect, plan_steps, run_sweep
from fedsim.sweep.plan import MAX_CELLS, Sweep, load_sweep

SUMMARY_CSV = "sweep.csv"
PLOTS = "plots"


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0 1 2"`` or ``"0,1,2"`` -> ``[0, 1, 2]``."""
    if text is None:
        return None
    from fedsim.sweep.spec import SweepError

    try:
        return [int(s) for s in text.replace(",", " ").split()] or None
    except ValueError:
        raise SweepError(f"--seeds {text!r}: expected integers, e.g. --seeds '0 1 2'") from None


def continue_command(
    path: Path,
    jobs: int,
    overrides: list[str],
    out: Path | None,
    seeds: str | None,
    only: list[str],
) -> str:
    """The command that runs the same sweep again: completed runs are kept, interrupted
    ones resumed."""
    args = ["fedsim", "sweep", str(path)]
    if out is not None:
        args += ["--out", str(out)]
    if seeds is not None:
        args += ["--seeds", seeds]
    for pattern in only:
        args += ["--only", pattern]
    for item in overrides:
        args += ["--set", item]
    if jobs > 1:
        args += ["--jobs", str(jobs)]
    return shlex.join(args)


def dry_run_table(sweep: Sweep, steps: list[Step]) -> Table:
    cells, seeds = len(sweep.cells()), len(sweep.seeds)
    title = f"{sweep.source}: {cells} cell{'s' * (cells != 1)} x {seeds} seed{'s' * (seeds != 1)}"
    table = Table(title=title)
    table.add_column("run", overflow="fold")
    table.add_column("action", no_wrap=True)
    table.add_column("experiment + overrides", overflow="fold")
    for step in steps:
        sets = " ".join(f"{k}={v}" for k, v in step.run.overrides.items())
        action = step.action + (f" ({step.note})" if step.note else "")
        table.add_row(*map(escape, (step.run.label, action, f"{step.run.experiment} {sets}")))
    return table


def sweep_command(
    path: Path,
    *,
    jobs: int = 1,
    dry_run: bool = False,
    report_only: bool = False,
    overrides: list[str] = (),
    out: Path | None = None,
    seeds: str | None = None,
    only: list[str] = (),
    max_cells: int = MAX_CELLS,
    console: Console,
) -> int:
    """Plan, (run,) summarise; the exit code is 1 when a run failed or was left alone."""
    sweep = load_sweep(
        path,
        out=out,
        seeds=parse_seeds(seeds),
        overrides=list(overrides),
        only=list(only),
        max_cells=max_cells,
    )
    if report_only:
        results = collect(sweep)
        bad = {"failed", "conflict"}
    else:
        steps = plan_steps(sweep)
        if dry_run:
            console.print(dry_run_table(sweep, steps))
            return 0
        try:
            results = run_sweep(sweep, steps, jobs, console)
        except SweepStopped as exc:
            again = continue_command(path, jobs, list(overrides), out, seeds, list(only))
            name = signal.Signals(exc.signum).name
            raise SweepStopped(
                f"{name}: the sweep's runs were interrupted; continue with: {again}", exc.signum
            ) from None
        bad = {"failed", "conflict", "incomplete", "interrupted", "missing"}
    stats = cell_stats(results)
    console.print(summary_table(stats, title=str(sweep.source)))
    csv_path = write_csv(stats, sweep.out / SUMMARY_CSV)
    plots = plot_cells(results, sweep.out / PLOTS)
    console.print(f"summary: {csv_path}" + (f"; plots: {sweep.out / PLOTS}" if plots else ""))
    failed = [r for r in results if r.status in bad]
    if failed:
        console.print(f"[red]{len(failed)} of {len(results)} runs did not complete[/]")
    return 1 if failed else 0
