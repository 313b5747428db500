"""Where prepared assets live: ``$FEDSIM_CACHE`` or ``~/.cache/fedsim``.

Layout::

    <cache>/downloads/<filename>    verified source archives, shared between assets
    <cache>/<name>/                 one prepared asset (+ ``.fedsim-ready`` marker, written last)
    <cache>/.locks/<name>.lock      inter-process locks (Ray actors may fetch concurrently)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

MARKER = ".fedsim-ready"


def cache_root() -> Path:
    """Read on every call, so tests and users can point it elsewhere at any time."""
    env = os.environ.get("FEDSIM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedsim"


def downloads_dir() -> Path:
    return cache_root() / "downloads"


def asset_dir(name: str) -> Path:
    return cache_root() / name


@contextlib.contextmanager
def file_lock(key: str) -> Iterator[None]:
    """Exclusive lock across processes, so two clients never prepare the same asset at once.
    Best effort where ``fcntl`` is missing (Windows): there the work may be done twice."""
    locks = cache_root() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(locks / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
