"""Client-wise Dirichlet label skew: each client's label mix is drawn from Dir(alpha).

This is the non-IID split of the curriculum paper's reference code (and of Hsu et al. 2019,
Li et al. 2022 "NIID-Bench", ``noniid-labeldir``): client j draws class proportions
``q_j ~ Dir(alpha * K * prior)`` over the K classes (``prior`` = the class frequencies, so
balanced data gives ``Dir(alpha)``), and the rows of each class are split over the clients
in proportion to ``q_j(class)``. Splits are redrawn until every client has at least
``min_size`` rows.

Why not flwr-datasets: its ``DirichletPartitioner`` draws, per class, proportions over the
clients, which with 100 clients, 8,000 rows and alpha = 0.05 leaves clients empty (it gives
up after 10 attempts); its ``InnerDirichletPartitioner`` fails with NaN probabilities for
small alpha once a client's only classes are exhausted.
"""

from __future__ import annotations

import numpy as np

MAX_ATTEMPTS = 100


def client_dirichlet_partition(
    labels: np.ndarray, num_partitions: int, alpha: float, min_size: int, seed: int
) -> list[np.ndarray]:
    """Row indices per client (sorted); raises ValueError if no draw meets ``min_size``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    concentration = alpha * len(classes) * counts / counts.sum()
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    smallest = 0
    for _ in range(MAX_ATTEMPTS):
        mix = rng.dirichlet(concentration, size=num_partitions)  # (clients, classes)
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for k, rows in enumerate(by_class):
            total = mix[:, k].sum()
            share = mix[:, k] / total if total > 0 else np.full(num_partitions, 1 / num_partitions)
            cuts = (np.cumsum(share) * len(rows)).astype(np.int64)[:-1]
            for j, chunk in enumerate(np.split(rows, cuts)):
                parts[j].append(chunk)
        sizes = [sum(len(c) for c in p) for p in parts]
        smallest = min(sizes)
        if smallest >= min_size:
            return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    raise ValueError(
        f"no split with every client >= {min_size} rows in {MAX_ATTEMPTS} draws "
        f"(last smallest: {smallest}); lower data.min_partition_size or raise data.alpha"
    )
