"""Partitions kept on disk (``fedsim.data.partition_cache``): read back equal, keyed by every
input, recomputed when the file is damaged, skipped when the cache is not writable, and a
process with a warm cache never imports flwr-datasets or datasets."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedsim.config.schema import DataConfig
from fedsim.data.partition import partition_indices
from fedsim.data.partition_cache import cached_partitions, partition_file, partition_key

LABELS = np.repeat(np.arange(10), 300)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _counting(parts: list[np.ndarray]):
    calls = []

    def compute():
        calls.append(1)
        return parts

    return compute, calls


def test_second_call_reads_the_file_and_gives_the_same_rows(cache):
    cfg = DataConfig(partitioner="dirichlet", alpha=0.5, min_partition_size=5)
    first = partition_indices({"label": LABELS}, cfg, 12, 3)
    (stored,) = (cache / "partitions").glob("*.npz")
    compute, calls = _counting([])
    again = cached_partitions({"label": LABELS}, cfg, 12, 3, None, compute)
    assert calls == []  # read back, not computed
    assert len(again) == 12 and all(a.dtype == np.int64 for a in again)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert stored == partition_file(partition_key({"label": LABELS}, cfg, 12, 3))


def test_every_input_is_in_the_key():
    cfg = DataConfig(partitioner="dirichlet", alpha=0.5)
    base = partition_key({"label": LABELS}, cfg, 10, 0)
    others = [
        partition_key({"label": LABELS}, cfg, 10, 1),  # seed
        partition_key({"label": LABELS}, cfg, 11, 0),  # clients
        partition_key({"label": LABELS}, DataConfig(partitioner="dirichlet", alpha=0.3), 10, 0),
        partition_key({"label": LABELS[::-1].copy()}, cfg, 10, 0),  # the labels' values
        partition_key({"label": LABELS.astype(np.int32)}, cfg, 10, 0),  # their dtype
        partition_key({"label": LABELS}, cfg, 10, 0, features=np.zeros(3)),  # disparity's inputs
    ]
    assert len({base, *others}) == 1 + len(others)
    assert base == partition_key({"label": LABELS.copy()}, cfg, 10, 0)  # values, not identity


def test_a_damaged_file_is_computed_again_and_replaced(cache):
    cfg = DataConfig(partitioner="iid")
    good = partition_indices({"label": LABELS}, cfg, 6, 0)
    path = partition_file(partition_key({"label": LABELS}, cfg, 6, 0))
    path.write_bytes(path.read_bytes()[:100])  # cut short, as by a full disk
    compute, calls = _counting(good)
    again = cached_partitions({"label": LABELS}, cfg, 6, 0, None, compute)
    assert calls == [1] and all(np.array_equal(a, b) for a, b in zip(good, again))
    compute, calls = _counting([])
    cached_partitions({"label": LABELS}, cfg, 6, 0, None, compute)
    assert calls == []  # the rewritten file is whole


def test_an_unwritable_cache_only_means_no_caching(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FEDSIM_CACHE", str(blocker / "cache"))  # mkdir fails: NotADirectory
    parts = partition_indices({"label": LABELS}, DataConfig(partitioner="iid"), 5, 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))


def test_a_warm_cache_spares_the_process_flwr_datasets_and_datasets(cache):
    cfg = DataConfig(partitioner="pathological", labels_per_client=2)
    expected = partition_indices({"label": LABELS}, cfg, 8, 1)
    script = f"""
import json, sys
import numpy as np
from fedsim.config.schema import DataConfig
from fedsim.data.partition import partition_indices
labels = np.repeat(np.arange(10), 300)
cfg = DataConfig.model_validate_json({cfg.model_dump_json()!r})
parts = partition_indices({{"label": labels}}, cfg, 8, 1)
imported = sorted(m for m in ("datasets", "flwr_datasets") if m in sys.modules)
print(json.dumps({{"parts": [p.tolist() for p in parts], "imported": imported}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["imported"] == []
    assert result["parts"] == [p.tolist() for p in expected]
