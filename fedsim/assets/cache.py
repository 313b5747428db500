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

from fedsim.assets.manifest import AssetError

MARKER = ".fedsim-ready"


def cache_root() -> Path:
    """Read on every call, so tests and users can point it elsewhere at any time."""
    env = os.environ.get("FEDSIM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedsim"


def downloads_dir() -> Path:
    return cache_root() / "downloads"


def asset_dir(name: str) -> Path:
    return cache_root() / name


def unwritable(folder: Path, exc: OSError) -> AssetError:
    """The one-line error for a cache folder that cannot be created or written to."""
    cause = exc.strerror or type(exc).__name__
    return AssetError(
        f"cache folder {folder} is not writable ({cause}); set FEDSIM_CACHE to a writable folder"
    )


def writable_root() -> Path:
    """The cache folder, created if needed; AssetError (one line: the folder, the cause and
    the way out) when it cannot be created or written to."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise unwritable(root, exc) from None
    return root


@contextlib.contextmanager
def file_lock(key: str) -> Iterator[None]:
    """Exclusive lock across processes, so two clients never prepare the same asset at once.
    Best effort where ``fcntl`` is missing (Windows): there the work may be done twice.
    AssetError when the cache folder cannot be written to."""
    locks = writable_root() / ".locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(locks, exc) from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    try:
        handle = open(locks / f"{key}.lock", "w")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise unwritable(locks, exc) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
