"""Archive members, extracted safely: only the listed members, only as regular files.

A member whose name could land outside the destination (absolute, ``..``), a zip member
whose Unix mode makes it a link or a device, or a tar member ``tarfile.data_filter`` refuses
makes the whole extraction fail before anything of that archive reaches the cache.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from fedsim.assets import debian
from fedsim.assets.manifest import AssetError, Manifest

_CHUNK = 1 << 20


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


def _refuse(name: str, archive: Path | str, member: str, problem: str) -> AssetError:
    return AssetError(
        f"asset '{name}': {archive}: refusing member {member!r} ({problem}); nothing from "
        "this archive was put into the cache"
    )


def _member_name(name: str) -> str:
    """A tar member's path without a leading ``./`` (Debian's data.tar writes ``./usr/...``)."""
    while name.startswith("./"):
        name = name[2:]
    return name


def _wanted(member: str, patterns: list[str]) -> str | None:
    """The pattern ``member`` matches (``*`` also crosses ``/``), or None."""
    return next((p for p in patterns if fnmatch.fnmatchcase(member, p)), None)


def extract(manifest: Manifest, source: Path, dest: Path) -> None:
    """Copy only the members matching ``manifest.members`` into ``dest`` (same relative paths)
    from a wheel/zip, a tarball, a Debian package (its installed files, e.g.
    ``usr/share/...``), or a folder; a pattern that matches nothing is an error."""
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

    def _from_tar(tf: tarfile.TarFile, where) -> None:  # noqa: ANN001 - a path or a label
        for info in tf:  # a stream: each member is checked as it is reached
            if (problem := _tar_problem(info, dest)) is not None:
                raise _refuse(manifest.name, where, info.name, problem)
            if info.isfile() and _wanted(_member_name(info.name), patterns):
                fh = tf.extractfile(info)
                if fh is not None:
                    write(_member_name(info.name), fh)
            if all_exact and seen >= set(patterns):
                break  # every member is an exact path and all are found: stop reading

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
    elif debian.is_deb(source):
        try:
            with (
                debian.data_member(source) as (inner, stream),
                tarfile.open(fileobj=stream, mode="r|*") as tf,
            ):
                _from_tar(tf, f"{source} ({inner})")
        except (ValueError, tarfile.TarError) as exc:
            raise AssetError(f"asset '{manifest.name}': {source}: {exc}") from exc
    elif tarfile.is_tarfile(source):
        with tarfile.open(source, "r:*") as tf:
            _from_tar(tf, source)
    else:
        raise AssetError(f"asset '{manifest.name}': {source} is not a folder, zip/wheel or tarball")
    missing = [p for p in patterns if p not in seen]
    if missing:
        raise AssetError(
            f"asset '{manifest.name}': no member matching {', '.join(missing)} in {source.name}"
        )
