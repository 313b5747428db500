"""Disparity partitioner: clients of graded difficulty, as in the curriculum paper's real-world
disparity experiments (Vahidian et al., ICCV 2023, "partition_difficulty_dist").

Every training sample gets a difficulty score, the loss of a scoring model; samples are
sorted from easy to hard and cut into ``num_partitions`` contiguous shards of equal size
(``np.array_split``). Partition 0 holds the easiest samples, the last one the hardest, so
clients differ in how hard their data is (and, because difficulty correlates with class,
somewhat in their label mix).

The scoring model is fedsim's small CNN (``fedsim.models.cnn.SmallCNN``, hidden 128; the
MLP for inputs that are not images), trained with SGD (lr 0.05, momentum 0.9, batch 64,
``SCORER_EPOCHS`` epochs). Scores are cross-fitted: the rows are split in two halves by a
seeded permutation, a model trained on one half scores the other, so no sample is scored
by a model that saw it. (The reference code trains its "expert" on the whole training set
and scores that same set, which rewards memorisation.) Initialisation and shuffles derive
from ``derive_seed(seed, DISPARITY_SCORER, fold)``; the result is the same for the same
data and seed, computed once per process (``fedsim.data.federated`` caches partitions).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsim.models.cnn import MLP, SmallCNN
from fedsim.seeding import DISPARITY_SCORER, derive_seed

SCORER_EPOCHS = 3
SCORER_BATCH = 64
SCORER_LR = 0.05


def _scorer(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) == 3 and input_shape[1] == input_shape[2]:
        return SmallCNN(input_shape[0], input_shape[1], num_classes)
    return MLP(int(np.prod(input_shape)), num_classes)


def _train_and_score(
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    x_score: torch.Tensor,
    y_score: torch.Tensor,
    num_classes: int,
    seed: int,
) -> np.ndarray:
    """Train a fresh scorer on (x_fit, y_fit); return its per-sample loss on (x_score, y_score)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _scorer(tuple(x_fit.shape[1:]), num_classes)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=SCORER_LR, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(SCORER_EPOCHS):
        order = torch.randperm(len(y_fit), generator=generator)
        for start in range(0, len(order), SCORER_BATCH):
            idx = order[start : start + SCORER_BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x_fit[idx]), y_fit[idx]).backward()
            optimizer.step()
    model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(y_score), 512):
            logits = model(x_score[start : start + 512])
            losses.append(
                nn.functional.cross_entropy(logits, y_score[start : start + 512], reduction="none")
            )
    return torch.cat(losses).double().numpy()


def difficulty_scores(features: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Cross-fitted per-sample loss of the scoring model (see the module docstring)."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    num_classes = int(y.max()) + 1 if len(y) else 0
    rng = np.random.default_rng(derive_seed(seed, DISPARITY_SCORER))
    halves = np.array_split(rng.permutation(len(y)), 2)
    scores = np.zeros(len(y), dtype=np.float64)
    for fold, (score_rows, fit_rows) in enumerate([(halves[0], halves[1]), (halves[1], halves[0])]):
        fit, score = torch.from_numpy(fit_rows), torch.from_numpy(score_rows)
        scores[score_rows] = _train_and_score(
            x[fit],
            y[fit],
            x[score],
            y[score],
            num_classes,
            derive_seed(seed, DISPARITY_SCORER, fold),
        )
    return scores


def disparity_partition(
    features: np.ndarray, labels: np.ndarray, num_partitions: int, seed: int
) -> list[np.ndarray]:
    """Row indices per client: easy-to-hard sorted rows cut into equal contiguous shards."""
    if num_partitions > len(labels):
        raise ValueError(f"{num_partitions} partitions for {len(labels)} rows")
    scores = difficulty_scores(features, labels, seed)
    order = np.argsort(scores, kind="stable")
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_partitions)]
