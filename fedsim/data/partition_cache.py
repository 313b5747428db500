"""Client partitions kept on disk, in the asset cache, keyed by everything they depend on.

Partitioning runs flwr-datasets over a ``datasets.Dataset``: about 190 MB of imports and up to
a second or two of work in every process that needs a client's rows. A Ray worker, each run
of a sweep and a SuperNode serving a partition read the same index arrays back instead, in
milliseconds, without importing either library.

The key hashes the data section, the number of partitions, the seed, the columns' bytes
(the inputs' too for the disparity partitioner), fedsim's partition format and the versions
of flwr-datasets and datasets. Files are written atomically; one that cannot be read is
computed again, and a read-only cache just means no caching.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from fedsim.assets.cache import cache_root
from fedsim.config.schema import DataConfig

FORMAT = 1  # bump when partition_indices' results change for the same inputs
FOLDER = "partitions"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


def partition_key(
    columns: dict[str, np.ndarray],
    cfg: DataConfig,
    num_partitions: int,
    seed: int,
    features: np.ndarray | None = None,
) -> str:
    digest = hashlib.sha256()
    header = {
        "format": FORMAT,
        "data": cfg.model_dump(mode="json"),
        "num_partitions": num_partitions,
        "seed": seed,
        "flwr-datasets": _version("flwr-datasets"),
        "datasets": _version("datasets"),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    named = sorted(columns.items()) + ([("<features>", features)] if features is not None else [])
    for name, values in named:
        array = np.ascontiguousarray(np.asarray(values))
        if array.dtype == object:  # strings: hash their text, not the object pointers
            array = np.asarray([str(v) for v in array.ravel()])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def partition_file(key: str) -> Path:
    return cache_root() / FOLDER / f"{key}.npz"


def _read(path: Path, num_partitions: int) -> list[np.ndarray] | None:
    try:
        with np.load(path) as z:
            rows, sizes = z["rows"], z["sizes"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, cut, not ours
        return None
    if len(sizes) != num_partitions or int(sizes.sum()) != len(rows):
        return None
    return [part.astype(np.int64, copy=False) for part in np.split(rows, np.cumsum(sizes)[:-1])]


def _write(path: Path, parts: list[np.ndarray]) -> None:
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    sizes = np.asarray([len(p) for p in parts], dtype=np.int64)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, rows=rows.astype(np.int64, copy=False), sizes=sizes)
        os.replace(tmp, path)  # readers see the whole file or none
    except OSError:  # a read-only cache: the partitions are just not kept
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def cached_partitions(
    columns: dict[str, np.ndarray],
    cfg: DataConfig,
    num_partitions: int,
    seed: int,
    features: np.ndarray | None,
    compute: Callable[[], list[np.ndarray]],
) -> list[np.ndarray]:
    """``compute()``'s partitions, from the cache when these inputs were partitioned before."""
    path = partition_file(partition_key(columns, cfg, num_partitions, seed, features))
    parts = _read(path, num_partitions)
    if parts is None:
        parts = [np.asarray(p, dtype=np.int64) for p in compute()]
        _write(path, parts)
    return parts
