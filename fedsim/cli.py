"""The ``fedsim`` command line (typer + rich).

One error mechanism: commands raise ``fedsim.errors.FedsimError`` (a config key, a damaged
file, a run that cannot resume...), and ``main`` prints its message as one plain line on
stderr (never through rich markup, so ``[lora]`` or a path with brackets survives) and exits
with its code. Anything else is a fedsim bug: one line too, the traceback with ``--debug``.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fedsim.errors import FedsimError, UsageError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="fedsim: federated-learning experiments on Flower, from a laptop to a cluster. "
    "Add --debug anywhere for tracebacks.",
)
datasets_app = typer.Typer(
    no_args_is_help=True, help="List, fetch and export the offline datasets and models."
)
app.add_typer(datasets_app, name="datasets")
console = Console()
err = Console(stderr=True)

MoreOpt = Annotated[
    list[str] | None,
    typer.Argument(help="More KEY=VALUE overrides after --set", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set run.seed=3 --set clients.num=50"),
]


def fail(message: str, code: int = 1) -> None:
    """Stop the command with ``message`` (code 2: the user's input is wrong)."""
    error = UsageError(message) if code == 2 else FedsimError(message)
    raise error


def load_experiment_args(
    experiment: Path, overrides: list[str] | None, extra: dict[str, Any] | None = None
):
    """The experiment a command names, with its ``--set`` overrides (validated)."""
    from fedsim.config.load import load_experiment, parse_overrides

    pairs = parse_overrides(overrides or [])
    if extra:
        pairs.update(extra)
    return load_experiment(experiment, pairs)


def say(text: str) -> None:
    """A plain line on stdout: never wrapped mid-path, never read as markup."""
    print(text, flush=True)


def _with_progress(exp, run_dir: Path, checkpoint, notes: list[str] = ()) -> None:
    """Run with a progress bar (rounds done, elapsed, the latest test metrics)."""
    from fedsim.federation.callbacks import Callback, headline
    from fedsim.runner import execute_run

    for note in notes:
        sys.stderr.write(f"warning: {note}\n")
    done = checkpoint.server_round if checkpoint is not None else 0
    columns = (
        TextColumn("{task.fields[name]}", markup=False),
        BarColumn(bar_width=12),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[latest]}", markup=False),
        TextColumn("{task.fields[clients]}", markup=False, style="dim"),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(
            "rounds", total=exp.run.rounds, completed=done, name=exp.run.name[:24], latest="",
            clients="",
        )  # fmt: skip

        class ProgressBar(Callback):
            def on_reply(self, run, stage, done, total):  # a round of slow clients moves too
                progress.update(task, clients=f"{stage} {done}/{total}")

            def on_round_end(self, run, server_round, metrics):
                if server_round:
                    progress.update(
                        task, completed=server_round, latest=headline(metrics), clients=""
                    )

        try:
            execute_run(exp, run_dir, checkpoint, [ProgressBar()], notes)
        finally:
            progress.stop()
    _show_result(run_dir)


def _show_result(run_dir: Path) -> None:
    from fedsim.results.report import print_report

    print_report([run_dir], console)
    say(f"results: {run_dir}")


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment TOML file")],
    more: MoreOpt = None,
    set_: SetOpt = None,
    backend: Annotated[str | None, typer.Option(help="inprocess | ray")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (exactly this path)")] = None,
) -> None:
    """Run an experiment and write its run directory."""
    from fedsim.backends.ray_start import cancel_early

    overrides = [*(set_ or []), *(more or [])]
    _start_ray_early(experiment, overrides, backend)
    try:
        from fedsim.results.lock import release
        from fedsim.runner import prepare_run_dir

        exp = load_experiment_args(
            experiment, overrides, {"run.backend": backend} if backend else None
        )
        run_dir = prepare_run_dir(exp, out)  # locked until the run ends (fedsim.results.lock)
        try:
            _with_progress(exp, run_dir, None)
        finally:
            release(run_dir)
    finally:
        cancel_early()  # a Ray begun for a run that did not take it (an invalid experiment)


def _start_ray_early(experiment: Path, overrides: list[str], backend: str | None) -> None:
    """For a Ray-backend run, begin Ray's start before the experiment loads: loading imports
    torch, Flower and the methods (3-4 s), which Ray's start then overlaps
    (``fedsim.backends.ray_start``)."""
    from fedsim.config.load import ConfigError, backend_hint, parse_overrides

    try:
        pairs = parse_overrides(overrides)
    except ConfigError:
        return  # the real load reports it
    if backend:
        pairs["run.backend"] = backend
    hint = backend_hint(experiment, pairs)
    if hint is not None and hint[0] == "ray":
        from fedsim.backends.ray_start import start_early

        start_early(hint[1])


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="A run directory to continue")],
    force: Annotated[
        bool, typer.Option("--force", help="Resume even if config.toml was edited since")
    ] = False,
) -> None:
    """Continue a killed or interrupted run from its last good checkpoint.

    The run is checked first (config, metrics, checkpoint checksum); a finished run, a
    damaged one or an edited config is refused and nothing is changed."""
    from fedsim.results.lock import release
    from fedsim.resume import plan_resume
    from fedsim.runner import claim_for_resume

    claim_for_resume(run_dir)  # another process may be running it: refuse before reading
    try:
        plan = plan_resume(run_dir, force)
        _with_progress(plan.exp, run_dir, plan.checkpoint, plan.notes)
    finally:
        release(run_dir)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories")],
    plot: Annotated[
        Path | None, typer.Option(help="Write the curves of all runs to this PNG")
    ] = None,
    x: Annotated[
        str,
        typer.Option(
            "--x", help="The curves' x-axis: round, or virtual-time (runs with [systems])"
        ),
    ] = "round",
) -> None:
    """Compare runs: final and best metrics side by side (failed and interrupted runs
    included, with their status), and their curves."""
    from fedsim.results.plots import X_AXES, check_plot_path, plot_runs
    from fedsim.results.report import print_report, usable_runs

    if x not in X_AXES:
        raise UsageError(f"--x {x}: one of {', '.join(X_AXES)}")
    if plot is not None:
        check_plot_path(plot)
    runs = usable_runs(run_dirs, warn=lambda line: sys.stderr.write(f"warning: {line}\n"))
    print_report(runs, console)
    if plot is not None:
        written = plot_runs(runs, plot, x_axis=x)
        say(f"plot: {written}" if written else "nothing to plot")


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep TOML file (experiments, grid, seeds)")],
    more: MoreOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs in parallel")] = 1,
    dry_run: Annotated[bool, typer.Option(help="Show the plan; run nothing")] = False,
    report_only: Annotated[
        bool, typer.Option(help="Only the summary table, CSV and plots from the run dirs")
    ] = False,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output root (default: the file's)")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds instead of the file's: '0 1 2'")] = None,
    only: Annotated[
        list[str] | None, typer.Option(help="Only cells matching this glob (repeatable)")
    ] = None,
    max_cells: Annotated[
        int, typer.Option(min=1, help="Refuse a sweep file that makes more cells than this")
    ] = 2_000,
) -> None:
    """Run experiments x a grid of overrides x seeds, each an ordinary run directory;
    completed runs are kept, interrupted ones resumed; then mean ± std per cell. Ctrl-C
    interrupts the runs (each resumable) and prints the command that continues the sweep."""
    from fedsim.sweep.command import sweep_command

    code = sweep_command(
        sweep_file,
        jobs=jobs,
        dry_run=dry_run,
        report_only=report_only,
        overrides=[*(set_ or []), *(more or [])],
        out=out,
        seeds=seeds,
        only=only or [],
        max_cells=max_cells,
        console=console,
    )
    raise typer.Exit(code)


@app.command()
def partition(
    experiment: Annotated[Path, typer.Argument(help="Experiment TOML file")],
    more: MoreOpt = None,
    set_: SetOpt = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of per-client label counts")] = None,
    show: Annotated[int, typer.Option(help="Clients listed in the table")] = 20,
) -> None:
    """Show how the experiment's partitioner splits the data over clients."""
    from fedsim.data.partition import PartitionError
    from fedsim.data.summary import label_counts, plot_label_counts, print_label_counts

    exp = load_experiment_args(experiment, [*(set_ or []), *(more or [])])
    try:
        counts, classes = label_counts(exp)
    except PartitionError as exc:
        raise UsageError(f"{experiment}: {exc}") from None
    title = f"{exp.data.dataset}: {exp.data.partitioner} over {exp.clients.num} clients"
    print_label_counts(counts, classes, title, show, console)
    if plot is not None:
        say(f"plot: {plot_label_counts(counts, classes, plot)}")


@app.command("list")
def list_things() -> None:
    """Methods, datasets and models fedsim knows."""
    from fedsim.assets.manifest import list_manifests
    from fedsim.registry import methods

    table = _plain_table("methods (data: img = images, txt = text classification, inst = "
                         "instructions)")  # fmt: skip
    table.add_column("method", no_wrap=True)
    table.add_column("data", no_wrap=True)
    table.add_column("description")
    for m in methods().values():
        tasks = ",".join(TASK_SHORT.get(t, t) for t in m.tasks)
        table.add_row(*map(Text, (m.name, tasks, m.description)))
    console.print(table)
    _manifest_table(list_manifests())


TASK_SHORT = {
    "image-classification": "img",
    "text-classification": "txt",
    "instructions": "inst",
}


def _plain_table(title: str) -> Table:
    """A borderless table: a column takes its width plus one space, so 80 columns go far."""
    return Table(title=title, box=None, padding=(0, 0, 0, 1), pad_edge=False,
                 title_justify="left", header_style="bold underline")  # fmt: skip


def _short_licence(text: str) -> str:
    """The licence's name (the manifest keeps the whole statement)."""
    return re.split(r" \(|[;:]", text, maxsplit=1)[0].strip()


def _manifest_table(manifests, verify: bool = False) -> None:
    """cached: yes | no | damaged (sizes of the prepared files; with ``verify`` sha256 too)."""
    from fedsim.assets.fetch import cache_status, repair_command

    table = _plain_table("datasets and models (offline assets; licences in datasets/NAME.toml)")
    # Names are what users type: never cut (nor kind and cache state); a long source folds.
    widest = max([len(m.name) for m in manifests] + [4])
    table.add_column("name", no_wrap=True, min_width=widest)
    table.add_column("kind", no_wrap=True, min_width=7)
    table.add_column("cached", no_wrap=True, min_width=7)
    table.add_column("source", overflow="fold")
    table.add_column("licence", overflow="ellipsis", no_wrap=True, max_width=15)
    damaged = []
    for m in manifests:
        status = cache_status(m.name, verify=verify)
        if status.problems:
            damaged.append((m.name, status.problems))
        mirrors = f" (+{len(m.sources) - 1} more)" if len(m.sources) > 1 else ""
        source = f"{m.source.type} {m.source.label}{mirrors}"
        cells = (m.name, m.kind, status.state, source, _short_licence(m.licence))
        table.add_row(*map(Text, cells))
    console.print(table)
    for name, problems in damaged:
        for problem in problems:
            console.print(f"{name}: damaged: {problem}", markup=False, soft_wrap=True)
        console.print(f"  repair it with: {repair_command(name)}", markup=False, soft_wrap=True)


@datasets_app.command("list")
def datasets_list(
    verify: Annotated[
        bool, typer.Option("--verify", help="Also compare each prepared file's sha256")
    ] = False,
) -> None:
    """Every asset manifest in datasets/, and whether it is in the cache (yes, no, damaged)."""
    from fedsim.assets.manifest import list_manifests

    _manifest_table(list_manifests(), verify=verify)


@datasets_app.command("fetch")
def datasets_fetch(
    names: Annotated[list[str], typer.Argument(help="Asset names (see `fedsim datasets list`)")],
    force: Annotated[
        bool, typer.Option("--force", help="Prepare again even if the cache verifies")
    ] = False,
    prepared: Annotated[
        bool,
        typer.Option(
            "--prepared",
            help="Also print each prepared file's sha256 as the manifest's [prepared] table "
            "(what a manifest with mirrors records)",
        ),
    ] = False,
) -> None:
    """Download, verify and prepare assets into the cache (FEDSIM_CACHE). A prepared asset
    is verified (size and sha256 of every prepared file) and prepared again if damaged.
    Sources are tried in the manifest's order; the log names the one that served."""
    from fedsim.assets.fetch import fetch, prepared_files

    for name in names:
        path = fetch(name, repair=True, force=force)  # AssetError: its own exit code
        console.print(f"{name}: {path}", markup=False, soft_wrap=True)
        if prepared:
            console.print("[prepared]", markup=False)
            for rel, sha in prepared_files(name).items():
                console.print(f'"{rel}" = "{sha}"', markup=False, soft_wrap=True)


@datasets_app.command("check")
def datasets_check(
    names: Annotated[
        list[str] | None, typer.Argument(help="Asset names (default: every manifest)")
    ] = None,
) -> None:
    """Ask the package index whether each source of each asset is still served (the exact
    file, and the index's sha256 against the pin), without downloading anything. Exits 1
    naming every asset that has no served source."""
    from fedsim.assets.manifest import list_manifests, load_manifest
    from fedsim.assets.served import check, unserved_assets

    manifests = [load_manifest(n) for n in names] if names else list_manifests()
    rows = check(manifests)
    table = _plain_table("is each source still served? (sources in the order fetch tries them)")
    table.add_column("asset", no_wrap=True)
    table.add_column("served", no_wrap=True)
    table.add_column("source: what the index says", overflow="fold")
    for r in rows:
        verdict = {True: "yes", False: "no", None: "unknown"}[r.served]
        asset = r.asset if r.position == 1 else ""
        table.add_row(*map(Text, (asset, verdict, f"[{r.position}] {r.source}: {r.why}")))
    console.print(table)
    missing = unserved_assets(rows)
    if missing:
        fail(f"no served source for: {', '.join(missing)} (see the table above)")


@datasets_app.command("export")
def datasets_export(
    experiment: Annotated[Path, typer.Argument(help="Experiment TOML file")],
    more: MoreOpt = None,
    set_: SetOpt = None,
    partition: Annotated[
        int | None, typer.Option("--partition", help="The partition id to export")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for --partition")] = None,
    all_root: Annotated[
        Path | None,
        typer.Option("--all", help="Export every partition into ROOT/partition-K/"),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a folder that is not empty")
    ] = False,
) -> None:
    """Write client partitions as data folders a SuperNode serves with
    --node-config 'data-path="DIR"' (layouts: docs/data.md)."""
    from fedsim.data.export import export_partitions, partition_folder

    exp = load_experiment_args(experiment, [*(set_ or []), *(more or [])])
    if all_root is not None and (partition is not None or out is not None):
        fail("use either --partition K --out DIR or --all ROOT", 2)
    if all_root is not None:
        targets = {k: partition_folder(all_root, k) for k in range(exp.clients.num)}
    elif partition is not None and out is not None:
        targets = {partition: out}
    else:
        fail("give --partition K --out DIR, or --all ROOT", 2)
    for done in export_partitions(exp, targets, force=force):
        say(f"partition {done.partition}: {done.count} {done.layout} -> {done.folder}")


deploy_app = typer.Typer(
    no_args_is_help=True,
    help="Certificates, SuperNode keys and SuperLink connections for a real deployment "
    "(README: Deploy on real machines).",
)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("certs")
def deploy_certs(
    out_dir: Annotated[Path, typer.Argument(help="Folder for ca.crt, ca.key, server.*")],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="A DNS name or IP address SuperNodes and flwr reach the SuperLink by "
            "(repeatable; 127.0.0.1 and localhost are always included)",
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files")] = False,
) -> None:
    """A CA and a SuperLink TLS certificate signed by it (private keys 0600)."""
    from fedsim.deploy.credentials import alt_names_of, make_certs

    paths = make_certs(out_dir, host or [], days=days, force=force)
    say(f"CA certificate:     {paths['ca_cert']}   (give to every SuperNode and flwr)")
    say(f"CA private key:     {paths['ca_key']}   (keep offline; signs new certificates)")
    say(f"SuperLink cert/key: {paths['server_cert']} {paths['server_key']}")
    say(f"valid for: {', '.join(alt_names_of(paths['server_cert']))}")
    say(
        f"SuperLink flags: --ssl-ca-certfile {paths['ca_cert']} "
        f"--ssl-certfile {paths['server_cert']} --ssl-keyfile {paths['server_key']}"
    )


@deploy_app.command("node-keys")
def deploy_node_keys(
    out_dir: Annotated[Path, typer.Argument(help="Folder for supernode-K and supernode-K.pub")],
    count: Annotated[int, typer.Option("--count", "-n", help="How many key pairs")],
    first: Annotated[int, typer.Option(help="K of the first pair (add nodes later)")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files")] = False,
) -> None:
    """SuperNode authentication keys: ECDSA P-384 pairs as `ssh-keygen -t ecdsa -b 384`
    writes them (private key 0600)."""
    from fedsim.deploy.credentials import make_node_keys

    for private, public in make_node_keys(out_dir, count, first=first, force=force):
        say(f"{private}  {public}")
    say("register each on the SuperLink: flwr supernode register KEY.pub CONNECTION")


@deploy_app.command("connection")
def deploy_connection(
    name: Annotated[str, typer.Argument(help="Connection name (flwr run . NAME)")],
    address: Annotated[
        str, typer.Option(help="HOST:PORT of the SuperLink (its --host name and --port)")
    ],
    root_certificates: Annotated[
        Path | None, typer.Option(help="The CA certificate (ca.crt of `fedsim deploy certs`)")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS: only for a SuperLink on loopback")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a connection of that name")
    ] = False,
) -> None:
    """Add a SuperLink connection to $FLWR_HOME/config.toml (what `flwr run . NAME` and
    `flwr supernode register KEY.pub NAME` read)."""
    from fedsim.deploy.credentials import write_connection

    path = write_connection(
        name, address, root_certificates=root_certificates, insecure=insecure, force=force
    )
    say(f"{path}: [superlink.{name}] -> {address}")


def _one_line(text: str) -> str:
    return " / ".join(part.strip() for part in str(text).splitlines() if part.strip())


def run_cli(argv: list[str] | None = None) -> int:
    """The command line as a function: parse ``argv``, run, return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="fedsim", standalone_mode=False)
        return int(code or 0)
    except FedsimError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{exc.label}: {_one_line(exc)}\n")
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:  # bad command-line usage: click's own message
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.stderr.write("stopped: interrupted\n")
        return 130
    except OSError as exc:
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"error: {where}{exc.strerror or _one_line(exc)}\n")
        return 1
    except Exception as exc:  # a fedsim bug: say so in one line, details with --debug
        if debug:
            traceback.print_exc()
        sys.stderr.write(
            f"error: fedsim failed unexpectedly: {type(exc).__name__}: {_one_line(exc)} "
            "(run again with --debug for the traceback, and please report it)\n"
        )
        return 1


def add_method_commands() -> None:
    """Each registered method's own sub-commands (``Method.commands``), e.g. FedIT's
    ``generate``: the CLI names no method."""
    from fedsim.method import resolve
    from fedsim.registry import RegistryError, methods

    taken = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    taken |= {g.name for g in app.registered_groups}
    for method in methods().values():
        for name, ref in method.commands.items():
            if name in taken:
                raise RegistryError(f"method '{method.name}': command '{name}' already exists")
            app.command(name)(resolve(ref))
            taken.add(name)


add_method_commands()


def main() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_LOG_LEVEL", "WARNING")
    sys.exit(run_cli())


if __name__ == "__main__":
    main()
