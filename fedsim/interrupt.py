"""Ctrl-C and SIGTERM stop a run cleanly: the round in progress is abandoned, the run is
marked ``interrupted``, and ``fedsim resume`` continues from the last checkpoint.

Python delivers signals to the main thread only; elsewhere (a Flower runtime thread) the
defaults stay. A second signal during the clean-up is not caught: it stops the process.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class RunInterrupted(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM; not an Exception, so no ``except
    Exception`` on the way (a client failure handler, say) swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 1)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``RunInterrupted`` (once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in EXIT_CODES}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    def stop(signum, _frame) -> None:
        restore()  # a second signal takes the default way out
        raise RunInterrupted(signum)

    for s in EXIT_CODES:
        signal.signal(s, stop)
    try:
        yield
    finally:
        restore()
