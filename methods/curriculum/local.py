"""The data curriculum inside one local training call: which sample indices each step sees.

Follows the reference code's loop: the step budget ``T`` is what plain training would take
(``epochs * ceil(n / batch_size)`` optimiser steps), the pool is the first
``pool_size(t)`` samples of the ordering, recomputed at every pass boundary from the steps
taken so far, and each pass visits the pool once in a seeded random order. Early passes are
short (the pool is small), so the pool grows many times in a round even with one local
epoch. Training stops after exactly ``T`` steps, the same compute as plain training.

The pool is treated as a set (its indices are sorted before the shuffle), so a pool of all
samples yields exactly the batches of plain training from the same generator: vanilla, or
any ordering with ``b = 1``, reproduces plain FedAvg bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from flwr.app import Context
from torch import nn

from fedsim.config.schema import Experiment
from fedsim.seeding import derive_seed
from fedsim_methods.curriculum.config import CurriculumConfig
from fedsim_methods.curriculum.ordering import order_items
from fedsim_methods.curriculum.pacing import pool_size
from fedsim_methods.curriculum.scoring import (
    recall_local_model,
    remember_local_model,
    sample_scores,
)
from fedsim_methods.curriculum.streams import CURRICULUM_ORDER


def step_budget(n: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps of plain training: ``epochs`` passes of ``ceil(n / batch_size)``."""
    return epochs * math.ceil(n / batch_size)


def paced_batches(
    order: np.ndarray,
    cfg: CurriculumConfig,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
) -> Iterator[torch.Tensor]:
    """Index batches for one round of local training under ``cfg``'s pacing."""
    n = len(order)
    total = step_budget(n, batch_size, epochs)
    step = 0
    while step < total:
        size = pool_size(cfg.pacing, step, total, n, cfg.a, cfg.b, cfg.min_pool)
        pool = torch.from_numpy(np.sort(order[:size]))
        shuffled = pool[torch.randperm(size, generator=generator)]
        for start in range(0, size, batch_size):
            if step >= total:
                return
            yield shuffled[start : start + batch_size]
            step += 1


def pool_sizes(n: int, cfg: CurriculumConfig, batch_size: int, epochs: int) -> list[int]:
    """The pool size of every pass (for reports and tests), without touching any data."""
    total, step, sizes = step_budget(n, batch_size, epochs), 0, []
    while step < total:
        size = pool_size(cfg.pacing, step, total, n, cfg.a, cfg.b, cfg.min_pool)
        sizes.append(size)
        step += min(math.ceil(size / batch_size), total - step)
    return sizes


def sample_order(
    cfg: CurriculumConfig,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    context: Context,
    seed: int,
    server_round: int,
    partition_id: int,
    device: torch.device,
) -> np.ndarray:
    """This round's sample order for this client; ``model`` holds the global weights."""
    n = len(y)
    if cfg.ordering == "random":
        rng = np.random.default_rng(derive_seed(seed, server_round, partition_id, CURRICULUM_ORDER))
        return order_items("random", None, n, rng)
    if not cfg.needs_scores:
        return order_items("vanilla", None, n)
    local = recall_local_model(context) if cfg.keeps_local_model else None
    scores = sample_scores(model, x, y, cfg.scoring, local, cfg.score_batch_size, device)
    return order_items(cfg.ordering, scores, n)


def curriculum_batches(
    exp: Experiment,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    context: Context,
    server_round: int,
    partition_id: int,
    generator: torch.Generator,
    device: torch.device,
) -> Iterator[torch.Tensor] | None:
    """The paced index batches of a training call, or None for plain shuffled epochs.

    Call it after loading the global weights into ``model`` and before training; pass the
    result to ``fedsim.training.train_epochs(index_batches=...)``.
    """
    cfg = exp.curriculum
    if cfg is None or not cfg.data_curriculum:
        return None
    seed = exp.run.seed
    order = sample_order(cfg, model, x, y, context, seed, server_round, partition_id, device)
    return paced_batches(order, cfg, exp.client.batch_size, exp.client.local_epochs, generator)


def after_training(cfg: CurriculumConfig | None, model: nn.Module, context: Context) -> None:
    """Remember the local model when the next round's scoring needs it (L or G+L)."""
    if cfg is not None and cfg.keeps_local_model:
        remember_local_model(context, model)
