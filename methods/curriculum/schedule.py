"""The client curriculum's choice of clients for a round: order, pace, draw. Pure and seeded.

Clients are ordered by their score (the global model's mean loss on their data; low =
easy): ``ascending`` (easy first), ``descending`` or ``random``. A pacing function over
the rounds makes the first ``g(round)`` clients of that order eligible (never fewer than
the clients a round needs), and the round's clients are drawn uniformly from the eligible
pool without replacement. Every random choice comes from
``derive_seed(seed, round, CLIENT_CURRICULUM)``, so the same scores, seed and round always
give the same clients.

The reference code instead walks the eligible pool in shuffled batches of clients before
scoring again; drawing each round from the pool keeps Flower's "K clients per round"
contract and is the same process in expectation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.seeding import derive_seed
from fedsim_methods.curriculum.ordering import CLIENT_ORDERINGS, order_items
from fedsim_methods.curriculum.pacing import pool_size
from fedsim_methods.curriculum.streams import CLIENT_CURRICULUM


@dataclass(frozen=True)
class RoundChoice:
    """What the scheduler decided for one round (logged, and checked by tests)."""

    order: tuple[int, ...]  # eligible partition ids, first released first
    pool: tuple[int, ...]  # the first ``pool_size`` of ``order``
    chosen: tuple[int, ...]  # the round's clients, sorted


def choose_clients(
    scores: dict[int, float],
    *,
    ordering: str,
    pacing: str,
    a: float,
    b: float,
    server_round: int,
    total_rounds: int,
    per_round: int,
    seed: int,
) -> RoundChoice:
    """Pick ``per_round`` partition ids for ``server_round`` (1-based) of ``total_rounds``.

    ``scores`` maps each eligible partition id to its score; clients without a score (their
    scoring reply failed) are not eligible this round.
    """
    if ordering not in CLIENT_ORDERINGS:
        raise ValueError(f"unknown client ordering '{ordering}'")
    pids = np.array(sorted(scores), dtype=np.int64)
    values = np.array([scores[int(p)] for p in pids], dtype=np.float64)
    rng = np.random.default_rng(derive_seed(seed, server_round, CLIENT_CURRICULUM))
    ranked = order_items(CLIENT_ORDERINGS[ordering], values, len(pids), rng)
    order = pids[ranked]
    size = pool_size(pacing, server_round - 1, total_rounds, len(order), a, b, per_round)
    pool = order[:size]
    take = min(per_round, len(pool))
    chosen = np.sort(rng.choice(pool, size=take, replace=False)) if take else pool[:0]
    return RoundChoice(
        order=tuple(int(p) for p in order),
        pool=tuple(int(p) for p in pool),
        chosen=tuple(int(p) for p in chosen),
    )


# The scoring round's protocol: a message of type SCORE_MESSAGE carrying the global model;
# the client replies with the model's mean loss on its data under SCORE_METRIC.
SCORE_MESSAGE = "query.curriculum_score"
SCORE_METRIC = "score_loss"
