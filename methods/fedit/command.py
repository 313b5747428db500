"""``fedsim generate``: FedIT's sub-command (declared on the method, added by the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
    from fedsim.cli import say
    from fedsim_methods.fedit.generate import answer

    answers = answer(run_dir, prompt, input_text, max_new_tokens)
    for question, reply in zip(prompt, answers):
        if len(prompt) > 1:
            say(f"> {question}")
        say(reply)
