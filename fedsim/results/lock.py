"""One process per run directory: an exclusive lock on ``RUN_DIR/.lock`` while a run lives.

Two runs writing the same ``--out`` (or a run and a ``fedsim resume`` of it) would interleave
``metrics.jsonl`` rows and overwrite each other's checkpoints. ``flock``, not the file's
existence, is the lock: the OS drops it when the holding process dies, even by ``kill -9``,
so a crashed run never leaves its directory locked. The file holds the holder's PID, for the
one-line message the second process prints. A run removes the file when it ends; a crashed
one leaves it behind, and the next run or resume simply takes it over.

``prepare_run_dir`` (``fedsim run``, sweeps' runs) takes the lock before it writes anything;
``fedsim resume`` takes it before it reads the run; ``execute_run`` releases it at the end.
Where ``fcntl`` is missing (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fedsim.errors import UsageError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: best effort, no lock
    fcntl = None  # type: ignore[assignment]

# Run directories this process holds (resolved path -> the locked file descriptor).
_HELD: dict[Path, int] = {}


class RunDirBusy(UsageError):
    """Another live process holds the run directory's lock."""


def _busy(run_dir: Path, pid: int | None) -> RunDirBusy:
    who = f"PID {pid}" if pid else "PID unknown"
    return RunDirBusy(
        f"{run_dir}: in use by another fedsim process ({who}, holding "
        f"{Path(run_dir) / LOCK_FILE}); wait for it to end, or use another directory"
    )


def _pid_in(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "0") or None
    return None


def claim(run_dir: Path) -> None:
    """Take the run directory's lock for this process (a no-op if it holds it already);
    RunDirBusy at once, without waiting, when another process holds it. OSError when the
    lock file cannot be created (the caller words it)."""
    if fcntl is None:
        return
    key = Path(run_dir).resolve()
    if key in _HELD:
        return
    path = key / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by subprocesses
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_in(fd)
            os.close(fd)
            raise _busy(Path(run_dir), pid) from None
        except BaseException:
            os.close(fd)
            raise
        # A holder removes the file when it releases: if it did so between our open and our
        # flock, we hold a file nobody else will open; lock the one the path names now.
        try:
            here, there = os.fstat(fd), os.stat(path)
            same = (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        release_fd(path, fd)
        raise
    _HELD[key] = fd


def release_fd(path: Path, fd: int) -> None:
    """Remove the lock file while still holding it (see ``claim``), then unlock."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


def release(run_dir: Path) -> None:
    """Give the lock back (idempotent): the file goes, the next run or resume may start."""
    key = Path(run_dir).resolve()
    fd = _HELD.pop(key, None)
    if fd is not None:
        release_fd(key / LOCK_FILE, fd)


def busy(run_dir: Path) -> RunDirBusy | None:
    """The error to raise if another process holds the lock, else None. Creates nothing
    and takes nothing, so a refused command leaves the directory as it was."""
    if fcntl is None or Path(run_dir).resolve() in _HELD:
        return None
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: nobody holds it
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _busy(Path(run_dir), _pid_in(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
