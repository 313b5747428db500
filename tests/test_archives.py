"""Hostile asset archives: a zip or tar whose members would write outside the cache.

Each archive holds one legitimate member (``data/ok.txt``) and one hostile one. Preparing it
must fail with an AssetError naming the archive and the hostile member, write no file outside
the destination, and leave nothing half-extracted in the cache. The same archive without the
hostile member prepares fine, so the refusal is the member's doing.
"""

from __future__ import annotations

import io
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from fedsim.assets import AssetError, fetch
from fedsim.assets.cache import MARKER
from fedsim.assets.convert import CONVERTERS

MANIFEST = """
name = "hostile"
kind = "dataset"
description = "an archive with one legitimate member"
licence = "none"
format = "copy-members"
members = ["data/*"]
[source]
type = "path"
path = "{src}"
"""


def _copy_members(m, src: Path, out: Path) -> None:
    """A stand-in converter: the extracted members, as they are."""
    shutil.copytree(src, out, dirs_exist_ok=True)


# ---- archive builders: (kind, name, target) -> one hostile member -----------------------


def _zip(path: Path, hostile: tuple[str, str, str] | None) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/ok.txt", "fine")
        if hostile is not None:
            kind, name, target = hostile
            info = zipfile.ZipInfo(name)
            if kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, target)  # a zip symlink's content is its target
            elif kind == "device":
                info.external_attr = (stat.S_IFCHR | 0o666) << 16
                zf.writestr(info, "")
            else:
                zf.writestr(info, "evil")


def _tar(path: Path, hostile: tuple[str, str, str] | None) -> None:
    with tarfile.open(path, "w:gz") as tf:
        if hostile is not None:  # first: the stream reaches it before the wanted member
            kind, name, target = hostile
            info = tarfile.TarInfo(name)
            payload = None
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, target
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, target
            elif kind == "device":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            else:
                payload = b"evil"
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
        ok = tarfile.TarInfo("data/ok.txt")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"fine"))


def _cases(tmp_path: Path) -> dict[str, tuple[str, str, str]]:
    outside = tmp_path / "outside-evil.txt"  # an absolute path we can look at afterwards
    return {
        "dotdot": ("file", "../evil.txt", ""),
        "dotdot-deep": ("file", "data/../../evil.txt", ""),
        "absolute": ("file", str(outside), ""),
        "symlink-out": ("symlink", "data/link", "../../../../outside-evil.txt"),
        "symlink-abs": ("symlink", "data/link", str(outside)),
        "device": ("device", "data/null", ""),
    }


ZIP_CASES = ["dotdot", "dotdot-deep", "absolute", "symlink-out", "symlink-abs", "device"]
TAR_CASES = [*ZIP_CASES, "hardlink-out"]


@pytest.fixture
def hostile_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh cache, a manifests folder, and the stand-in converter."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDSIM_CACHE", str(cache))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    monkeypatch.setenv("FEDSIM_MANIFESTS", str(manifests))
    monkeypatch.setitem(CONVERTERS, "copy-members", (_copy_members, "texts", 1))

    def use(archive: Path) -> None:
        (manifests / "hostile.toml").write_text(MANIFEST.format(src=archive))

    return cache, use


def _files_named(root: Path, *names: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.name in names and not p.is_dir()]


def _assert_nothing_written(tmp_path: Path, cache: Path, archive: Path) -> None:
    assert not (tmp_path / "outside-evil.txt").exists()
    assert not Path("/tmp/evil.txt").exists() or Path("/tmp/evil.txt").read_text() != "evil"
    assert _files_named(tmp_path, "evil.txt", "outside-evil.txt") == []
    # Nothing half-extracted: no prepared folder, no scratch folder, only the lock files.
    leftovers = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    assert leftovers in ([], [".locks"]), leftovers
    assert archive.is_file()  # the user's own archive is left alone


@pytest.mark.parametrize("case", ZIP_CASES)
def test_hostile_zip_member_is_refused(case, tmp_path, hostile_env) -> None:
    cache, use = hostile_env
    kind, name, target = _cases(tmp_path)[case]
    archive = tmp_path / "hostile.zip"
    _zip(archive, (kind, name, target))
    use(archive)
    with pytest.raises(AssetError) as err:
        fetch("hostile")
    message = str(err.value)
    assert "asset 'hostile'" in message and str(archive) in message
    assert repr(name) in message  # the member, quoted as it is in the archive
    assert "\n" not in message
    _assert_nothing_written(tmp_path, cache, archive)


@pytest.mark.parametrize("case", TAR_CASES)
def test_hostile_tar_member_is_refused(case, tmp_path, hostile_env) -> None:
    cache, use = hostile_env
    cases = {**_cases(tmp_path), "hardlink-out": ("hardlink", "data/hard", "../outside.txt")}
    kind, name, target = cases[case]
    archive = tmp_path / "hostile.tar.gz"
    _tar(archive, (kind, name, target))
    use(archive)
    with pytest.raises(AssetError) as err:
        fetch("hostile")
    message = str(err.value)
    assert "asset 'hostile'" in message and str(archive) in message
    assert repr(name) in message
    if kind != "file":  # links and devices: tarfile.data_filter's verdict (Python >= 3.11.4)
        assert "data filter" in message
    _assert_nothing_written(tmp_path, cache, archive)


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_the_same_archive_without_the_hostile_member_prepares(fmt, tmp_path, hostile_env):
    cache, use = hostile_env
    archive = tmp_path / f"clean.{'zip' if fmt == 'zip' else 'tar.gz'}"
    (_zip if fmt == "zip" else _tar)(archive, None)
    use(archive)
    folder = fetch("hostile")
    assert (folder / "data" / "ok.txt").read_text() == "fine"
    assert (folder / MARKER).is_file()


def test_a_tar_symlink_that_stays_inside_is_accepted(tmp_path, hostile_env) -> None:
    """data_filter allows links within the destination: ordinary sdists keep working (the
    link itself is not copied; only regular files are)."""
    cache, use = hostile_env
    archive = tmp_path / "inner-link.tar.gz"
    _tar(archive, ("symlink", "data/alias", "ok.txt"))
    use(archive)
    folder = fetch("hostile")
    assert (folder / "data" / "ok.txt").read_text() == "fine"
    assert not (folder / "data" / "alias").exists()
