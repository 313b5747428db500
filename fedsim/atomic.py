"""Files written whole or not at all, and a full disk named by the file it stopped.

A result file (summary, metrics rewritten on resume, a checkpoint) is written to a ``.tmp``
beside it and renamed over it: readers see the old file or the new one. When the write fails
(a full disk, a quota), the temporary file is removed and the error names the file meant,
so the user reads ``RUN/checkpoints/round-000003.ckpt: No space left on device`` instead of
a bare ``No space left on device``; the previous file is still there, and so a run stays
resumable from its last whole checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path


def named(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its filename (an append or a write on an open file sets none)."""
    if exc.filename:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def write_atomically(path: Path, data: bytes | str, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` through ``path.tmp`` and a rename (see the module doc)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    mode, encoding = ("wb", None) if isinstance(data, bytes) else ("w", "utf-8")
    try:
        with open(tmp, mode, encoding=encoding) as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise named(exc, path) from None
