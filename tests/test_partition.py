"""Partitioners (flwr-datasets underneath): sizes, seeds, heterogeneity, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config.schema import DataConfig
from fedsim.data.partition import PartitionError, partition_indices

LABELS = np.repeat(np.arange(10), 500)  # 5,000 rows, 10 balanced classes


def _parts(seed: int = 0, n: int = 20, **kw) -> list[np.ndarray]:
    return partition_indices({"label": LABELS}, DataConfig(**kw), n, seed)


def _mean_entropy(parts: list[np.ndarray]) -> float:
    ent = []
    for p in parts:
        q = np.bincount(LABELS[p], minlength=10) / len(p)
        q = q[q > 0]
        ent.append(-(q * np.log(q)).sum())
    return float(np.mean(ent))


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_partitions_cover_rows_without_overlap(kind):
    parts = _parts(partitioner=kind)
    joined = np.concatenate(parts)
    assert len(parts) == 20
    assert len(np.unique(joined)) == len(joined)  # disjoint
    if kind != "pathological":
        assert len(joined) == len(LABELS)  # complete


def test_iid_sizes_are_equal():
    sizes = [len(p) for p in _parts(partitioner="iid")]
    assert max(sizes) - min(sizes) <= 1


def test_same_seed_same_partition_other_seed_differs():
    a = _parts(seed=3, partitioner="dirichlet", alpha=0.3)
    b = _parts(seed=3, partitioner="dirichlet", alpha=0.3)
    c = _parts(seed=4, partitioner="dirichlet", alpha=0.3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_smaller_alpha_means_more_skewed_clients():
    skewed = _mean_entropy(_parts(partitioner="dirichlet", alpha=0.1, min_partition_size=5))
    mixed = _mean_entropy(_parts(partitioner="dirichlet", alpha=100.0, min_partition_size=5))
    assert skewed < mixed - 0.5
    assert mixed > 0.95 * np.log(10)  # alpha -> infinity approaches IID


def test_dirichlet_respects_min_partition_size():
    assert (
        min(len(p) for p in _parts(partitioner="dirichlet", alpha=0.5, min_partition_size=50)) >= 50
    )


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_k_labels_per_client(k):
    parts = _parts(partitioner="pathological", labels_per_client=k)
    assert all(len(np.unique(LABELS[p])) == k for p in parts)


def test_natural_id_needs_matching_client_count():
    topics = np.repeat(np.arange(7), 30)
    cfg = DataConfig(partitioner="natural_id", partition_by="topic")
    parts = partition_indices({"topic": topics}, cfg, 7, 0)
    assert sorted(len(np.unique(topics[p])) for p in parts) == [1] * 7
    with pytest.raises(PartitionError, match="clients.num"):
        partition_indices({"topic": topics}, cfg, 5, 0)


def test_unknown_column_and_impossible_requests_are_clear():
    with pytest.raises(PartitionError, match="data.partition_by"):
        partition_indices(
            {"label": LABELS}, DataConfig(partitioner="dirichlet", partition_by="x"), 5, 0
        )
    with pytest.raises(PartitionError, match="labels_per_client"):
        _parts(partitioner="pathological", labels_per_client=11)
    with pytest.raises(PartitionError, match="dirichlet"):
        _parts(n=200, partitioner="dirichlet", alpha=0.05, min_partition_size=40)


def test_sampled_population_is_larger_than_the_data_and_drawn_per_client():
    import time

    start = time.perf_counter()
    parts = _parts(n=100_000, partitioner="sampled", samples_per_client=12)
    assert time.perf_counter() - start < 0.5  # nothing is drawn before a client is asked for
    assert len(parts) == 100_000
    last = parts[99_999]
    assert len(last) == len(np.unique(last)) == 12 and last.max() < len(LABELS)
    again = _parts(n=100_000, partitioner="sampled", samples_per_client=12)
    assert np.array_equal(again[99_999], last) and np.array_equal(parts[-1], last)
    assert not np.array_equal(parts[0], last)  # each client its own draw
    other_seed = _parts(seed=1, n=100_000, partitioner="sampled", samples_per_client=12)
    assert not np.array_equal(other_seed[99_999], last)
    with pytest.raises(IndexError):
        parts[100_000]


def test_sampled_needs_its_size_and_other_partitioners_refuse_it():
    with pytest.raises(ValueError, match="data.samples_per_client: partitioner 'sampled'"):
        DataConfig(partitioner="sampled")
    with pytest.raises(ValueError, match="only the 'sampled' partitioner reads it"):
        DataConfig(partitioner="iid", samples_per_client=5)
    with pytest.raises(ValueError, match="more than the 5000 training rows"):
        _parts(partitioner="sampled", samples_per_client=6000)
