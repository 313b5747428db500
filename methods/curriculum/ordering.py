"""Orderings: the sequence in which a pacing function releases samples (or clients).

Scores are losses, so low = easy. Ties keep their index order (stable sort), which makes
every ordering a pure function of (scores, seed) on every platform.
"""

from __future__ import annotations

import numpy as np

# Client-curriculum names map onto the same three orders.
CLIENT_ORDERINGS = {"ascending": "curriculum", "descending": "anti", "random": "random"}


def order_items(
    ordering: str, scores: np.ndarray | None, n: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Item indices, first released first.

    - ``curriculum``: ascending score (easy -> hard)
    - ``anti``: descending score (hard -> easy)
    - ``random``: a permutation from ``rng`` (same pacing, no difficulty signal)
    - ``vanilla``: ``0..n-1`` (used with a pool of all items, so the order is irrelevant)
    """
    if ordering in ("curriculum", "anti"):
        if scores is None or len(scores) != n:
            raise ValueError(f"ordering '{ordering}' needs one score per item ({n})")
        values = np.asarray(scores, dtype=np.float64)
        # Anti sorts the negated scores, so ties keep index order in both directions.
        keys = values if ordering == "curriculum" else -values
        return np.argsort(keys, kind="stable").astype(np.int64)
    if ordering == "random":
        if rng is None:
            raise ValueError("ordering 'random' needs a seeded generator")
        return rng.permutation(n).astype(np.int64)
    if ordering == "vanilla":
        return np.arange(n, dtype=np.int64)
    raise ValueError(f"unknown ordering '{ordering}'")
