"""The ``fedsim`` command line (typer + rich)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    help="fedsim: federated-learning experiments on Flower, from a laptop to a cluster.",
)
datasets_app = typer.Typer(
    no_args_is_help=True, help="List and fetch the offline datasets and models."
)
app.add_typer(datasets_app, name="datasets")
console = Console()
err = Console(stderr=True)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set run.seed=3 --set clients.num=50"),
]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(experiment: Path, overrides: list[str] | None, extra: dict[str, Any] | None = None):
    from fedsim.config.load import ConfigError, apply_overrides, load_experiment, parse_overrides

    try:
        pairs = parse_overrides(overrides or [])
        apply_overrides(pairs, {}, str(experiment))
        if extra:
            pairs.update(extra)
        return load_experiment(experiment, pairs)
    except ConfigError as exc:
        _fail(str(exc), 2)


def _latest(rows: dict[str, dict[str, Any]]) -> str:
    parts = []
    for scope, key in (
        ("server-eval", "accuracy"),
        ("server-eval", "loss"),
        ("train", "train_loss"),
    ):
        value = rows.get(scope, {}).get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{key if scope != 'server-eval' else 'test_' + key}={value:.4f}")
    failures = rows.get("train", {}).get("failures")
    if failures:
        parts.append(f"[red]failures={failures}[/]")
    return " ".join(parts)


def _execute(exp, out: Path | None, resume_dir: Path | None) -> None:
    from fedsim.assets import AssetError
    from fedsim.results.report import report_table
    from fedsim.runner import RunError, run_experiment

    start_round = 0
    if resume_dir is not None:
        from fedsim.checkpoint import load_checkpoint

        ckpt = load_checkpoint(resume_dir)
        start_round = ckpt.server_round if ckpt else 0
    columns = (
        TextColumn("[bold]{task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[latest]}"),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(
            "rounds", total=exp.run.rounds, completed=start_round, name=exp.run.name, latest=""
        )

        def on_round(server_round: int, latest: dict[str, dict[str, Any]]) -> None:
            progress.update(task, completed=server_round, latest=_latest(latest))

        try:
            run_dir, _ = run_experiment(exp, out, resume_dir=resume_dir, on_round=on_round)
        except (RunError, AssetError) as exc:
            progress.stop()
            _fail(str(exc))
    console.print(report_table([run_dir]))
    console.print(f"results: [bold]{run_dir}[/] (plots in {run_dir / 'plots'})")


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment TOML file")],
    more: Annotated[
        list[str] | None,
        typer.Argument(help="More KEY=VALUE overrides after --set", show_default=False),
    ] = None,
    set_: SetOpt = None,
    backend: Annotated[str | None, typer.Option(help="inprocess | ray")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (exactly this path)")] = None,
) -> None:
    """Run an experiment and write its run directory."""
    exp = _load(
        experiment, [*(set_ or []), *(more or [])], {"run.backend": backend} if backend else None
    )
    _execute(exp, out, None)


@app.command()
def resume(run_dir: Annotated[Path, typer.Argument(help="A run directory to continue")]) -> None:
    """Continue a killed or interrupted run from its last checkpoint."""
    from fedsim.config.load import ConfigError
    from fedsim.runner import RunError, load_run_config

    try:
        exp = load_run_config(run_dir)
    except (RunError, ConfigError) as exc:
        _fail(str(exc), 2)
    _execute(exp, None, run_dir)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories")],
    plot: Annotated[
        Path | None, typer.Option(help="Write the curves of all runs to this PNG")
    ] = None,
) -> None:
    """Compare runs: final and best metrics side by side, and their curves."""
    from fedsim.results.plots import plot_runs
    from fedsim.results.report import report_table

    missing = [d for d in run_dirs if not (d / "metrics.jsonl").exists()]
    if missing:
        _fail(f"{missing[0]}: not a run directory (no metrics.jsonl)", 2)
    console.print(report_table(run_dirs))
    if plot is not None:
        written = plot_runs(run_dirs, plot)
        console.print(f"plot: {written}" if written else "nothing to plot")


@app.command()
def partition(
    experiment: Annotated[Path, typer.Argument(help="Experiment TOML file")],
    set_: SetOpt = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of per-client label counts")] = None,
    show: Annotated[int, typer.Option(help="Clients listed in the table")] = 20,
) -> None:
    """Show how the experiment's partitioner splits the data over clients."""
    from fedsim.data.partition import PartitionError
    from fedsim.data.summary import label_counts, plot_label_counts

    exp = _load(experiment, set_)
    try:
        counts, classes = label_counts(exp)
    except PartitionError as exc:
        _fail(f"{experiment}: {exc}", 2)
    table = Table(
        title=f"{exp.data.dataset}: {exp.data.partitioner} over {exp.clients.num} clients"
    )
    table.add_column("client", justify="right")
    table.add_column("size", justify="right")
    for name in classes:
        table.add_column(str(name)[:10], justify="right")
    for pid, row in enumerate(counts[:show]):
        table.add_row(str(pid), str(int(row.sum())), *[str(int(v)) for v in row])
    console.print(table)
    sizes = counts.sum(1)
    console.print(
        f"clients: {len(sizes)}  sizes: min {sizes.min()} / "
        f"mean {sizes.mean():.1f} / max {sizes.max()}"
    )
    if plot is not None:
        console.print(f"plot: {plot_label_counts(counts, classes, plot)}")


@app.command("list")
def list_things() -> None:
    """Methods, datasets and models fedsim knows."""
    from fedsim.assets.manifest import list_manifests
    from fedsim.methods import METHODS

    table = Table(title="methods")
    table.add_column("method")
    table.add_column("data")
    table.add_column("description")
    for m in METHODS.values():
        table.add_row(m.name, ", ".join(m.tasks), m.description)
    console.print(table)
    _manifest_table(list_manifests())


def _manifest_table(manifests) -> None:
    from fedsim.assets.fetch import is_prepared

    table = Table(title="datasets and models (offline assets)")
    for col in ("name", "kind", "source", "licence", "cached"):
        table.add_column(col)
    for m in manifests:
        cached = "yes" if is_prepared(m.name) else "no"
        table.add_row(m.name, m.kind, m.source.label, m.licence, cached)
    console.print(table)


@datasets_app.command("list")
def datasets_list() -> None:
    """Every asset manifest in datasets/, and whether it is in the cache."""
    from fedsim.assets.manifest import list_manifests

    _manifest_table(list_manifests())


@datasets_app.command("fetch")
def datasets_fetch(
    names: Annotated[list[str], typer.Argument(help="Asset names (see `fedsim datasets list`)")],
) -> None:
    """Download, verify and prepare assets into the cache (FEDSIM_CACHE)."""
    from fedsim.assets import AssetError
    from fedsim.assets.fetch import fetch

    for name in names:
        try:
            path = fetch(name)
        except AssetError as exc:
            _fail(str(exc))
        console.print(f"{name}: {path}")


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A finished fedit run directory")],
    prompt: Annotated[list[str], typer.Option("--prompt", help="Instruction (repeatable)")],
    input_text: Annotated[
        str, typer.Option("--input", help="Optional input (the Alpaca '### Input:' part)")
    ] = "",
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Default: the run's fedit.eval_max_new_tokens")
    ] = None,
) -> None:
    """Answer prompts greedily with a fedit run's final adapter (RUN_DIR/adapter)."""
    from fedsim.config.load import ConfigError
    from fedsim.llm.generate import GenerateError, answer
    from fedsim.runner import RunError

    try:
        answers = answer(run_dir, prompt, input_text, max_new_tokens)
    except (GenerateError, RunError, ConfigError, ValueError) as exc:
        _fail(str(exc), 2)
    for question, reply in zip(prompt, answers):
        if len(prompt) > 1:
            console.print(f"[bold]> {question}[/]", highlight=False)
        console.print(reply, highlight=False, markup=False)


def main() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_LOG_LEVEL", "WARNING")
    sys.exit(app(standalone_mode=True))


if __name__ == "__main__":
    main()
