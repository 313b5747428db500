"""The npm registry, read over HTTPS without npm: which versions a package has, and each
version's tarball URL and sha512 ``integrity``.

One request per package (the abbreviated "install" document, a few kB for data packages)
answers both "where is this tarball" and "is this pinned version still served".
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass

from fedsim.assets.index import TIMEOUT_S, open_url

DEFAULT_REGISTRY = "https://registry.npmjs.org"
_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8"


@dataclass(frozen=True)
class NpmVersion:
    version: str
    tarball: str
    integrity: str | None


def registry_url() -> str:
    """``$NPM_CONFIG_REGISTRY`` (as npm reads it) or the public registry."""
    env = os.environ.get("NPM_CONFIG_REGISTRY")
    return (env or DEFAULT_REGISTRY).rstrip("/")


def package_url(package: str) -> str:
    """Scoped names keep their ``@`` and encode the ``/`` (``@scope%2fname``)."""
    return f"{registry_url()}/{urllib.parse.quote(package, safe='@')}"


def package_versions(package: str, timeout: float = TIMEOUT_S) -> dict[str, NpmVersion]:
    """Every published version of ``package``. Raises ``urllib.error.HTTPError`` (404: no
    such package) or another OSError when the registry cannot be reached."""
    with open_url(package_url(package), _ACCEPT, timeout) as resp:
        doc = json.loads(resp.read().decode("utf-8"))
    versions = {}
    for version, meta in (doc.get("versions") or {}).items():
        dist = meta.get("dist") or {}
        if dist.get("tarball"):
            versions[version] = NpmVersion(version, dist["tarball"], dist.get("integrity"))
    return versions
