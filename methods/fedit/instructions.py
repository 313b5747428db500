"""Instruction data for FedIT: a fixed held-out test set per category, then client partitions.

The test set is cut first, per category and seeded by the run seed alone, so no client ever
trains on it and every configuration of one seed (federated, local-only, centralised) is
scored on the same records. The remaining records are split over clients by category:

- ``category_shards`` (FedIT/Shepherd): sort by category, cut ``num * shards_per_client``
  equal shards, hand each client ``shards_per_client`` random shards (~2 categories each);
- ``category_dirichlet``: per category, proportions ~ Dir(alpha) over clients, with the
  NIID-bench balance cap (a client already holding N/num records gets no more) and redraws
  until every client holds ``min_records_per_client``;
- ``iid``: a seeded shuffle cut into near-equal parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fedsim.config.schema import DataConfig
from fedsim.data.sources import InstructionRecord, load_instructions
from fedsim.seeding import DATA_SUBSET, derive_seed
from fedsim_methods.fedit.config import FedITConfig
from fedsim_methods.fedit.seeds import HELDOUT_SPLIT, INSTRUCTION_PARTITION

MAX_DIRICHLET_DRAWS = 1000
# The [fedit] keys that decide the split (others, e.g. the aggregation, leave it unchanged).
SPLIT_KEYS = {
    "partition",
    "shards_per_client",
    "dirichlet_alpha",
    "min_records_per_client",
    "heldout_per_category",
}


@dataclass(frozen=True, eq=False)
class FederatedInstructions:
    """Training pool, held-out test set and per-client index arrays into ``train``."""

    train: tuple[InstructionRecord, ...]
    test: tuple[InstructionRecord, ...]
    partitions: tuple[np.ndarray, ...]
    categories: tuple[str, ...]

    def client(self, partition_id: int) -> list[InstructionRecord]:
        return [self.train[i] for i in self.partitions[partition_id]]

    def client_categories(self, partition_id: int) -> list[str]:
        return sorted({r.category for r in self.client(partition_id)})


def heldout_split(
    categories: np.ndarray, per_category: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices; ``min(per_category, n // 2)`` test rows per category
    (a category of one record keeps it for training and is simply not scored)."""
    rng = np.random.default_rng(derive_seed(seed, HELDOUT_SPLIT))
    test = []
    for cat in sorted(set(categories.tolist())):
        rows = np.flatnonzero(categories == cat)
        n_test = min(per_category, len(rows) // 2)
        test.append(rng.permutation(rows)[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(categories)), test_idx), test_idx


def category_shards(
    cat_ids: np.ndarray, num: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shepherd's split: sort by category, equal shards, ``shards_per_client`` per client."""
    n_shards = num * shards_per_client
    if len(cat_ids) < n_shards:
        raise ValueError(
            f"fedit.shards_per_client: {n_shards} shards ({num} clients x {shards_per_client}) "
            f"need at least as many training records, have {len(cat_ids)}"
        )
    within = rng.permutation(len(cat_ids))  # random order inside each category
    order = within[np.argsort(cat_ids[within], kind="stable")]
    shards = np.array_split(order, n_shards)
    perm = rng.permutation(n_shards)
    return [np.sort(np.concatenate([shards[s] for s in perm[i::num]])) for i in range(num)]


def category_dirichlet(
    cat_ids: np.ndarray, num: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per-category Dir(alpha) proportions with the balance cap; redrawn until every client
    holds ``min_size`` records."""
    n = len(cat_ids)
    if n < num * min_size:
        raise ValueError(
            f"fedit.min_records_per_client: {num} clients x {min_size} records need "
            f"{num * min_size} training records, have {n}"
        )
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts: list[list[int]] = [[] for _ in range(num)]
        for cat in np.unique(cat_ids):
            rows = rng.permutation(np.flatnonzero(cat_ids == cat))
            p = rng.dirichlet(np.full(num, alpha))
            p = p * np.array([len(part) < n / num for part in parts])
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(rows)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(rows, cuts)):
                part.extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_size:
            return [np.sort(np.array(part, dtype=np.int64)) for part in parts]
    raise ValueError(
        f"fedit.min_records_per_client: no Dirichlet draw gave every client {min_size} "
        f"records in {MAX_DIRICHLET_DRAWS} tries; lower it or raise fedit.dirichlet_alpha"
    )


def iid_split(n: int, num: int, rng: np.random.Generator) -> list[np.ndarray]:
    if n < num:
        raise ValueError(f"clients.num: {num} clients but only {n} training records")
    return [np.sort(part) for part in np.array_split(rng.permutation(n), num)]


def partition_instructions(
    cat_ids: np.ndarray, cfg: FedITConfig, num: int, seed: int
) -> list[np.ndarray]:
    rng = np.random.default_rng(derive_seed(seed, INSTRUCTION_PARTITION))
    if cfg.partition == "category_shards":
        return category_shards(cat_ids, num, cfg.shards_per_client, rng)
    if cfg.partition == "category_dirichlet":
        return category_dirichlet(
            cat_ids, num, cfg.dirichlet_alpha, cfg.min_records_per_client, rng
        )
    return iid_split(len(cat_ids), num, rng)


@lru_cache(maxsize=4)
def _federated(data_json: str, fedit_json: str, num: int, seed: int) -> FederatedInstructions:
    data = DataConfig.model_validate_json(data_json)
    cfg = FedITConfig.model_validate_json(fedit_json)
    records = load_instructions(data.dataset)
    cats = np.array([r.category for r in records])
    train_idx, test_idx = heldout_split(cats, cfg.heldout_per_category, seed)
    keep = data.max_train_samples
    if 0 < keep < len(train_idx):
        rng = np.random.default_rng(derive_seed(seed, DATA_SUBSET))
        train_idx = np.sort(rng.permutation(train_idx)[:keep])
    categories = tuple(sorted(set(cats.tolist())))
    index = {c: i for i, c in enumerate(categories)}
    train = tuple(records[i] for i in train_idx)
    cat_ids = np.array([index[r.category] for r in train], dtype=np.int64)
    parts = partition_instructions(cat_ids, cfg, num, seed)
    return FederatedInstructions(
        train=train,
        test=tuple(records[i] for i in test_idx),
        partitions=tuple(parts),
        categories=categories,
    )


def federated_instructions(
    data: DataConfig, cfg: FedITConfig, num_clients: int, seed: int
) -> FederatedInstructions:
    """Cached per process by (data section, the split keys of [fedit], clients, seed)."""
    split_keys = cfg.model_dump_json(include=SPLIT_KEYS)
    return _federated(data.model_dump_json(), split_keys, num_clients, seed)


def export_partition(exp, pid: int, folder, source: dict) -> tuple[str, int]:
    """FedIT's partition ``pid`` as an ``instructions`` data folder (``fedsim datasets
    export``): the records this client trains on, split by ``fedit.partition``."""
    from fedsim.data import layouts
    from fedsim.errors import UsageError
    from fedsim_methods.fedit.config import fedit_of

    cfg = fedit_of(exp)
    data = federated_instructions(exp.data, cfg, exp.clients.num, exp.run.seed)
    records = data.client(pid)
    if len(records) == 0:
        raise UsageError(f"partition {pid} holds no examples: nothing to export")
    source["partitioner"] = f"fedit.partition = {cfg.partition}"
    layouts.write_instructions(folder, records, source)
    return "instructions", len(records)
