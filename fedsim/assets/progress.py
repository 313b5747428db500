"""One console for every asset step (stderr, follows pytest's capture), so spinners and
download bars never overlap, and one line per finished step."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape

CONSOLE = Console(stderr=True, highlight=False)


def say(line: str) -> None:
    CONSOLE.print(line, markup=False, soft_wrap=True)


@contextlib.contextmanager
def step(label: str, spinner: bool = True) -> Iterator[None]:
    """A spinner while a long step runs (on a terminal) and one line when it is done."""
    start = time.perf_counter()
    with CONSOLE.status(escape(f"{label} ...")) if spinner else contextlib.nullcontext():
        yield
    say(f"fedsim: {label}: done in {time.perf_counter() - start:.1f} s")
