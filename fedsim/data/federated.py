"""A dataset loaded once per process and cut into client partitions.

Clients index into shared arrays instead of owning copies: 1,000 virtual clients
cost one copy of the data plus their index arrays. Images are kept as stored (uint8) and
converted to float32 (N, C, H, W) in [0, 1] one client at a time; texts are padded WordPiece
ids, int64 (N, data.max_length) (``fedsim.text``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from fedsim.config.schema import DataConfig
from fedsim.data.partition import partition_indices
from fedsim.data.sampled import SampledPartitions
from fedsim.data.sources import scale_images
from fedsim.seeding import DATA_SUBSET, EVAL_SUBSET, SERVER_SHARE, VALIDATION, derive_seed
from fedsim.text import Vocabulary


@dataclass(frozen=True)
class FederatedImageData:
    """Images, or texts as token ids (then ``vocab`` is set); the name stayed from when
    images were all there was."""

    # The clients' inputs as stored: images as prepared (uint8), scaled per client by
    # ``client()`` (a quarter of float32's memory in every process that serves clients);
    # texts as token ids. ``x_train`` is the whole of it as the models take it.
    x_stored: np.ndarray
    y_train: torch.Tensor
    # What the server evaluates on: the test split, or (data.test_split = "validation") the
    # validation rows held out of the training split.
    x_test: torch.Tensor
    y_test: torch.Tensor
    partitions: Sequence[np.ndarray]  # a tuple, or SampledPartitions (drawn on access)
    classes: tuple[str, ...]
    vocab: Vocabulary | None = None
    # data.server_share: training samples only the server holds (empty when 0).
    x_server: torch.Tensor | None = None
    y_server: torch.Tensor | None = None
    # Texts: the raw training split's row behind each row of x_train (fedsim.data.export).
    text_rows: np.ndarray | None = None
    divisor: float | None = None  # images: stored value / divisor = the model's input

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_stored.shape[1:])

    def inputs(self, rows: np.ndarray) -> torch.Tensor:
        """These training rows as the model takes them (float32 images in [0, 1], token ids)."""
        x = self.x_stored[rows]
        return torch.from_numpy(scale_images(x, self.divisor) if self.divisor else x)

    @property
    def x_train(self) -> torch.Tensor:
        """Every client's inputs, converted: a new tensor on every access (clients take
        their rows through ``client()``)."""
        return self.inputs(np.arange(len(self.x_stored)))

    def client(self, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.partitions[partition_id]
        return self.inputs(rows), self.y_train[torch.from_numpy(rows)]


def _subset(n: int, keep: int, seed: int) -> np.ndarray:
    if keep <= 0 or keep >= n:
        return np.arange(n)
    rng = np.random.default_rng(derive_seed(seed, DATA_SUBSET))
    return np.sort(rng.permutation(n)[:keep])


def _held_out(n: int, share: float, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept, rows held out): a seeded ``share`` of ``n`` rows held out."""
    if share <= 0:
        return np.arange(n), np.arange(0)
    order = np.random.default_rng(derive_seed(seed, stream)).permutation(n)
    held = int(round(share * n))
    return np.sort(order[held:]), np.sort(order[:held])


def _training_rows(cfg: DataConfig, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of a training split of ``n`` rows: the
    ``max_train_samples`` slice, then ``validation_share`` of it held out of every client."""
    keep = _subset(n, cfg.max_train_samples, seed)
    train, valid = _held_out(len(keep), cfg.validation_share, seed, VALIDATION)
    return keep[train], keep[valid]


def _rows(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``array[index]``, without the copy when ``index`` is every row in order (no subset,
    no server share: the usual case, which would otherwise hold the data twice)."""
    if len(index) == len(array) and np.array_equal(index, np.arange(len(array))):
        return array
    return array[index]


@lru_cache(maxsize=4)
def _federated_image_data(data_json: str, num_partitions: int, seed: int) -> FederatedImageData:
    from fedsim.assets.datasets import task_of

    cfg = DataConfig.model_validate_json(data_json)
    if task_of(cfg.dataset) == "text-classification":
        return _federated_text_data(cfg, num_partitions, seed)
    from fedsim.data.sources import load_stored_images

    raw = load_stored_images(cfg.dataset)  # the arrays not kept below go when this returns
    keep, valid = _training_rows(cfg, len(raw.y_train), seed)
    clients, server = _held_out(len(keep), cfg.server_share, seed, SERVER_SHARE)
    x_train, y_train = _rows(raw.x_train, keep[clients]), _rows(raw.y_train, keep[clients])
    # Only the disparity partitioner reads the inputs: as the models see them.
    features = scale_images(x_train, raw.divisor) if cfg.partitioner == "disparity" else None
    parts = partition_indices({"label": y_train}, cfg, num_partitions, seed, features=features)
    del features

    def images(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(scale_images(x, raw.divisor))

    validating = cfg.test_split == "validation"

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(y, dtype=np.int64))

    return FederatedImageData(
        x_stored=np.ascontiguousarray(x_train),
        y_train=labels(y_train),
        x_test=images(raw.x_train[valid] if validating else raw.x_test),
        y_test=labels(raw.y_train[valid] if validating else raw.y_test),
        partitions=_kept(parts),
        classes=tuple(raw.classes),
        x_server=images(raw.x_train[keep[server]]),
        y_server=labels(raw.y_train[keep[server]]),
        divisor=raw.divisor,
    )


def _kept(parts: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    return parts if isinstance(parts, SampledPartitions) else tuple(parts)


def _federated_text_data(cfg: DataConfig, num_partitions: int, seed: int) -> FederatedImageData:
    from fedsim.data.sources import load_text_classification
    from fedsim.text import token_ids, vocabulary

    raw = load_text_classification(cfg.dataset)
    keep, valid = _training_rows(cfg, len(raw.y_train), seed)
    x_train = token_ids([raw.texts_train[i] for i in keep], cfg.max_length)
    y_train = raw.y_train[keep]
    if cfg.test_split == "validation":
        texts_test, y_test = [raw.texts_train[i] for i in valid], raw.y_train[valid]
    else:
        texts_test, y_test = raw.texts_test, raw.y_test
    parts = partition_indices({"label": y_train}, cfg, num_partitions, seed, features=x_train)
    return FederatedImageData(
        x_stored=x_train,
        y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        x_test=torch.from_numpy(token_ids(texts_test, cfg.max_length)),
        y_test=torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
        partitions=_kept(parts),
        classes=tuple(raw.classes),
        vocab=vocabulary(),
        text_rows=keep,
    )


def federated_image_data(cfg: DataConfig, num_partitions: int, seed: int) -> FederatedImageData:
    """Cached per process by (data section, clients, seed): Ray actors load it once each."""
    return _federated_image_data(cfg.model_dump_json(), num_partitions, seed)


def server_test_set(
    data: FederatedImageData, max_samples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split the server evaluates on: all of it, or ``eval.max_samples`` of it, the
    same seeded subset every round and for every model evaluated (global or server-only)."""
    x, y = data.x_test, data.y_test
    if 0 < max_samples < len(y):
        rng = np.random.default_rng(derive_seed(seed, EVAL_SUBSET))
        keep = torch.from_numpy(np.sort(rng.permutation(len(y))[:max_samples]))
        x, y = x[keep], y[keep]
    return x, y
