"""Is each pinned source still served? Asked of the index, without downloading the files.

A package index may drop a release (bigbench 1.0.0's files vanished from PyPI while every
warm cache hid it). ``check`` asks, once per package and concurrently, the index's simple
page whether the exact file is listed and whether the index's sha256 is the pinned one (pypi),
or the registry whether the version is published with the pinned sha512 integrity (npm),
or the Debian mirror whether the pinned ``.deb`` is there (a HEAD request); local ``path``
sources are checked for existence. Seconds, not minutes.
"""

from __future__ import annotations

import re
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fedsim.assets import debian
from fedsim.assets.index import IndexFile, project_files, project_url
from fedsim.assets.manifest import (
    DebianSource,
    Manifest,
    NpmSource,
    PathSource,
    PypiSource,
    local_path,
)
from fedsim.assets.npm import NpmVersion, package_url, package_versions

_WORKERS = 8
UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class SourceCheck:
    """One source of one asset: ``served`` is True, False, or None when the index could
    not be asked (unreachable); ``why`` says what was found."""

    asset: str
    position: int  # 1-based, the order fetch tries them in
    count: int
    source: str
    served: bool | None
    why: str


def check(manifests: list[Manifest]) -> list[SourceCheck]:
    """Every source of every manifest, in manifest and source order."""
    wanted = {
        (s.type, s.package)
        for m in manifests
        for s in m.sources
        if isinstance(s, PypiSource | NpmSource)
    }
    keys = sorted(wanted)
    with ThreadPoolExecutor(max_workers=min(_WORKERS, max(len(keys), 1))) as pool:
        pages = dict(zip(keys, pool.map(_page, keys)))
    rows = []
    for m in manifests:
        for position, src in enumerate(m.sources, start=1):
            if isinstance(src, PypiSource):
                served, why = _pypi_served(src, pages[("pypi", src.package)])
            elif isinstance(src, NpmSource):
                served, why = _npm_served(src, pages[("npm", src.package)])
            elif isinstance(src, DebianSource):
                served, why = debian.served(debian.deb_url(src.pool, src.filename, src.mirror))
            else:
                served, why = _path_served(m, src)
            label = f"{src.type} {src.label}"
            rows.append(SourceCheck(m.name, position, len(m.sources), label, served, why))
    return rows


def unserved_assets(rows: list[SourceCheck]) -> list[str]:
    """Assets none of whose sources is served (in row order, each once)."""
    served = {r.asset for r in rows if r.served}
    return list(dict.fromkeys(r.asset for r in rows if r.asset not in served))


def _page(key: tuple[str, str]) -> dict[str, IndexFile] | dict[str, NpmVersion] | str:
    """A project's files on the index (pypi) or a package's versions on the registry
    (npm); or why they could not be read (a string)."""
    kind, package = key
    url = project_url(package) if kind == "pypi" else package_url(package)
    try:
        if kind == "pypi":
            return project_files(package, timeout=20)
        return package_versions(package, timeout=20)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return f"no {'project' if kind == 'pypi' else 'package'} '{package}' at {url}"
        return f"HTTP {exc.code} from {url}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return f"{UNREACHABLE}: {reason}"


def _pypi_served(src: PypiSource, page: dict[str, IndexFile] | str) -> tuple[bool | None, str]:
    if isinstance(page, str):
        return (None if page.startswith(UNREACHABLE) else False), page
    listed = page.get(src.filename)
    if listed is None:
        versions = _versions(page)
        served = ", ".join(versions[-5:]) if versions else "no files"
        return False, f"{src.filename} is not listed (the index serves {served})"
    if listed.sha256 is None:
        return True, "listed (the index gives no sha256; checked after download)"
    if listed.sha256 != src.sha256:
        return False, f"listed, but the index's sha256 is {listed.sha256}, not the pinned one"
    yanked = " (yanked: only an exact pin gets it)" if listed.yanked else ""
    return True, f"listed, sha256 as pinned{yanked}"


def _npm_served(src: NpmSource, page: dict[str, NpmVersion] | str) -> tuple[bool | None, str]:
    if isinstance(page, str):
        return (None if page.startswith(UNREACHABLE) else False), page
    listed = page.get(src.version)
    if listed is None:
        served = ", ".join(list(page)[-5:]) or "no versions"
        return False, f"version {src.version} is not published (the registry serves {served})"
    if not listed.tarball.endswith("/" + src.filename):
        return False, f"version {src.version}'s tarball is {listed.tarball}, not {src.filename}"
    if src.integrity is None or listed.integrity is None:
        return True, "published (sha512 not compared; sha256 checked after download)"
    if listed.integrity != src.integrity:
        return False, f"published, but the registry's integrity is {listed.integrity}"
    return True, "published, sha512 integrity as pinned"


def _versions(page: dict[str, IndexFile]) -> list[str]:
    """Release versions named by the listed files, in the index's order (oldest first)."""
    found: list[str] = []
    for filename in page:
        if filename.endswith(".whl"):
            parts = filename.split("-")
            version = parts[1] if len(parts) >= 5 else None
        else:
            stem = re.sub(r"\.(tar\.gz|tar\.bz2|tgz|zip)$", "", filename)
            version = stem.rsplit("-", 1)[1] if "-" in stem and stem != filename else None
        if version and version not in found:
            found.append(version)
    return found


def _path_served(m: Manifest, src: PathSource) -> tuple[bool, str]:
    path = local_path(m, src)
    if path.exists():
        return True, f"{path} exists" + (" (sha256 checked when fetched)" if src.sha256 else "")
    return False, f"{path} does not exist"
