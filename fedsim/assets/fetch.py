"""Resolve an asset name to a prepared folder in the cache, offline after the first time.

``fetch(name)`` is what every reader calls first, so its warm path is one small file read
and a ``stat`` of each prepared file (its size must be the one recorded in the marker).
The cold path, for each source of the manifest in turn until one serves: download the pinned
file (``fedsim.assets.download``), check its sha256, extract only the listed members, convert
them into a compact prepared form, check the prepared files against the manifest's
``[prepared]`` sha256 (mirrors must agree), record every prepared file's size and sha256,
then write the marker, which names the source that served. Everything is built in a scratch
folder and moved into place, and the marker is written last: an interrupted fetch leaves no
marker and is simply redone.

A prepared file whose size differs from the record is an AssetError naming the file and
the repair command; ``fetch(name, repair=True)`` (``fedsim datasets fetch NAME``) also
compares every sha256 and prepares a damaged asset again, ``force=True`` unconditionally.
Readers turn a failure to read a prepared file into the same kind of error
(``reading_prepared``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedsim.assets.cache import MARKER, asset_dir, file_lock, writable_root
from fedsim.assets.convert import CONVERTERS, converter_for, converter_version
from fedsim.assets.download import ensure_download, sha256_of
from fedsim.assets.extract import extract
from fedsim.assets.manifest import (
    AssetError,
    AssetInputError,
    Manifest,
    PathSource,
    Source,
    load_manifest,
    local_path,
)
from fedsim.assets.progress import say as _say
from fedsim.assets.progress import step as _step

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
                _say(f"fedsim: {path}: damaged ({why}){more}; preparing asset '{name}' again")
        _prepare(manifest, dest)
    return dest


def prepared_files(name: str) -> dict[str, str]:
    """Each prepared file of a prepared asset and its sha256, as recorded in its marker
    (the ``[prepared]`` table a manifest with mirrors needs)."""
    marker = _current_marker(load_manifest(name), asset_dir(name))
    if marker is None or "files" not in marker:
        raise AssetError(f"asset '{name}' is not prepared; fedsim datasets fetch {name}")
    return {rel: rec["sha256"] for rel, rec in sorted(marker["files"].items())}


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


def _stamp(manifest: Manifest, index: int) -> str:
    """Identity of source ``index``'s bytes: the pinned sha256, or size+mtime of a local path
    ("missing" when a local source has moved away)."""
    src = manifest.sources[index]
    if not isinstance(src, PathSource):
        return src.sha256
    path = local_path(manifest, src)
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
    """The marker if the folder was prepared by this manifest, from the bytes of one of its
    sources, with the converter version of that source's format (and its file record, if
    any, is well formed); else None. With recorded prepared sha256 the source that served
    does not matter: every source yields those very files."""
    try:
        marker = _read_marker(dest)
    except (OSError, ValueError):
        return None
    fmt = marker.get("format")
    formats = {manifest.for_source(i).format for i in range(len(manifest.sources))}
    stamps = {_stamp(manifest, i) for i in range(len(manifest.sources))}
    current = (
        marker.get("fingerprint") == manifest.fingerprint
        and fmt in formats
        and fmt in CONVERTERS
        and marker.get("converter") == CONVERTERS[fmt][2]
        and (bool(manifest.prepared) or marker.get("stamp") in stamps or "missing" in stamps)
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
    """Prepare from the first source that serves files matching the manifest, trying the
    sources in order; say which one served and why each one before it did not."""
    name = manifest.name
    failures: list[str] = []
    count = len(manifest.sources)
    for index, src in enumerate(manifest.sources):
        try:
            _prepare_from(manifest, index, dest)
        except AssetError as exc:
            if count == 1:
                raise
            why = _without_asset(name, str(exc))
            failures.append(f"[{index + 1}/{count}] {_describe(src)}: {why}")
            more = "; trying the next" if index + 1 < count else ""
            _say(f"fedsim: asset '{name}': source {failures[-1]}{more}")
            continue
        if count > 1:
            _say(f"fedsim: asset '{name}': served by source [{index + 1}/{count}] {_describe(src)}")
        return
    raise AssetError(f"asset '{name}': no source served it: " + "; ".join(failures))


def _without_asset(name: str, message: str) -> str:
    prefix = f"asset '{name}': "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _describe(src: Source) -> str:
    return f"{src.type} {src.label}"


def _prepare_from(manifest: Manifest, index: int, dest: Path) -> None:
    """Download (or find) source ``index``, extract its members, convert them, check the
    prepared files against ``[prepared]`` and move them into place with their marker."""
    name = manifest.name
    view = manifest.for_source(index)
    convert = converter_for(view)
    start = time.perf_counter()
    archive = _source_path(manifest, index)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=writable_root()))
    try:
        src, out = work / "src", work / "out"
        out.mkdir(parents=True)
        with _step(f"asset '{name}': extracting {', '.join(view.members)}"):
            extract(view, archive, src)
        with _step(f"asset '{name}': converting ({view.format})"):
            convert(view, src, out)
        files = _record(out)
        _check_prepared(manifest, files)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(out, dest)
        marker = {
            "name": name,
            "fingerprint": manifest.fingerprint,
            "source": _describe(manifest.sources[index]),
            "stamp": _stamp(manifest, index),
            "format": view.format,
            "converter": converter_version(view),
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


def _check_prepared(manifest: Manifest, files: dict[str, dict[str, Any]]) -> None:
    """Every file ``[prepared]`` lists must have been prepared with that sha256, whichever
    source served (nothing to check when the manifest lists none). Files it does not list
    are not compared: a converted model's config.json names the transformers version that
    wrote it, and a manifest leaves such files out."""
    problems = []
    for rel, expected in sorted(manifest.prepared.items()):
        if rel not in files:
            problems.append(f"{rel} was not prepared")
        elif files[rel]["sha256"] != expected:
            problems.append(f"{rel} sha256 {files[rel]['sha256']}, [prepared] says {expected}")
    if problems:
        raise AssetError(
            f"asset '{manifest.name}': prepared files differ from the manifest's [prepared]: "
            + "; ".join(problems[:3])
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        )


# --------------------------------------------------------------------------- sources


def _source_path(manifest: Manifest, index: int) -> Path:
    """A local, verified archive or folder holding source ``index``'s members."""
    src = manifest.sources[index]
    if isinstance(src, PathSource):
        path = local_path(manifest, src)
        if not path.exists():
            raise AssetInputError(
                f"asset '{manifest.name}': source path {path} does not exist (pinned in "
                f"{manifest.path})"
            )
        if src.sha256 and path.is_file():
            actual = sha256_of(path)
            if actual != src.sha256:
                raise AssetInputError(
                    f"asset '{manifest.name}': sha256 mismatch for {path.name}: {manifest.path} "
                    f"pins {src.sha256}, the file has {actual} (your file is left as it is)"
                )
        return path
    return ensure_download(manifest.name, src, manifest.path)
