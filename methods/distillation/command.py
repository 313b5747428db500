"""``fedsim distill-generator``: distillation's sub-command (declared on the method, added by
the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def distill_generator(
    experiment: Annotated[Path, typer.Argument(help="A distillation experiment (TOML)")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: section.key=value")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Train again even if cached")] = False,
) -> None:
    """Train and cache the conditional generator a distillation experiment uses
    (``distillation.generator = "pretrained"``) on the data only the server holds
    (``data.server_share``). Runs train it on first use too; this does it ahead."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsim.cli import console, fail, load_experiment_args, say
    from fedsim_methods.distillation import METHOD_NAME, distillation_of
    from fedsim_methods.distillation.pretrain import pretrained_generator

    exp = load_experiment_args(experiment, overrides)
    if exp.method != METHOD_NAME:
        fail(f"{experiment}: method is '{exp.method}', not '{METHOD_NAME}'", code=2)
    cfg = distillation_of(exp)
    if cfg.generator != "pretrained":
        fail(f"{experiment}: distillation.generator is '{cfg.generator}', not 'pretrained'", 2)
    columns = (TextColumn("generator"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[loss]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=cfg.generator_epochs, loss="")

        def step(epoch: int, loss: float) -> None:
            bar.update(task, completed=epoch, loss=f"loss={loss:.2f}")

        try:
            _, path = pretrained_generator(exp, cfg, progress=step, force=force)
        except ValueError as exc:
            fail(str(exc), code=2)
    say(f"generator: {path}")
