"""Debian archives read without apt, dpkg or root: where a pinned ``.deb`` lives on a
mirror, whether the mirror still serves it, and the ``data.tar.*`` member inside it.

A ``.deb`` is an ``ar`` archive (``debian-binary``, ``control.tar.*``, ``data.tar.*``); the
files a package installs are the ``data.tar`` member's, under their install paths
(``usr/share/...``). Its bytes are trusted only after the pinned sha256 matched, as for
every other source; the mirror may be plain HTTP, as apt's own default is.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fedsim.assets.index import ssl_context

DEFAULT_MIRROR = "http://deb.debian.org/debian"
AR_MAGIC = b"!<arch>\n"
_HEADER = 60  # name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic 2


def mirror_url() -> str:
    """``$FEDSIM_DEBIAN_MIRROR`` (a mirror's root, e.g. a local one) or deb.debian.org."""
    return (os.environ.get("FEDSIM_DEBIAN_MIRROR") or DEFAULT_MIRROR).rstrip("/")


def deb_url(pool: str, filename: str, mirror: str | None = None) -> str:
    """The package's URL: on ``mirror`` where the source names one, else on ``mirror_url()``."""
    root = mirror.rstrip("/") if mirror else mirror_url()
    return f"{root}/{pool.strip('/')}/{filename}"


def head(url: str, timeout: float) -> int | None:
    """The Content-Length a HEAD request gets (None when the server gives none). Raises
    ``urllib.error.HTTPError`` (404: not there) or another OSError when unreachable."""
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=timeout, context=ssl_context()) as resp:
        length = resp.headers.get("Content-Length")
    return int(length) if length else None


def is_deb(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(len(AR_MAGIC)) == AR_MAGIC


class _Slice:
    """A read-only view of ``size`` bytes of an open file from its current position: what
    ``tarfile``'s stream mode needs, without copying the member into memory."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.left = fh, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.read(n)
        self.left -= len(data)
        return data


@contextmanager
def data_member(path: Path) -> Iterator[tuple[str, _Slice]]:
    """(name, stream) of the ``data.tar.*`` member of the ``.deb`` at ``path``. ValueError
    names what is wrong when the file is not a well-formed package."""
    with open(path, "rb") as fh:
        if fh.read(len(AR_MAGIC)) != AR_MAGIC:
            raise ValueError(f"{path.name}: not a Debian package (no ar header)")
        while True:
            header = fh.read(_HEADER)
            if not header:
                raise ValueError(f"{path.name}: no data.tar member")
            if len(header) != _HEADER or header[58:60] != b"`\n":
                raise ValueError(f"{path.name}: damaged ar member header")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            if name.startswith("data.tar"):
                yield name, _Slice(fh, size)
                return
            fh.seek(size + (size % 2), os.SEEK_CUR)  # members are 2-byte aligned


def served(url: str, timeout: float = 20) -> tuple[bool | None, str]:
    """Whether the mirror serves ``url``: (True, why), (False, why), (None, unreachable)."""
    try:
        length = head(url, timeout)
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code} from {url}"
    except OSError as exc:
        return None, f"unreachable: {getattr(exc, 'reason', None) or exc}"
    size = f" ({length:,} bytes)" if length else ""
    return True, f"served at {url}{size}; sha256 checked after download"
