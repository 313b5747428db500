"""``data.partitioner = "sampled"``: a population of any size, each client's data drawn
when the client is first asked for.

Fixed disjoint partitions cap the population at the dataset's size (60,000 MNIST images
make at most 60,000 clients of one image) and are built for every client before round 1.
Cross-device simulations of 100,000 phones need neither: here client ``i`` holds
``data.samples_per_client`` training rows drawn without replacement from the whole training
split by its own seeded stream (seed, ``CLIENT_DATA``, i), so its data is the same in every
process and run, costs nothing until it is sampled, and nothing is kept afterwards. Clients
may share rows, as pfl-research's artificial users (``ArtificialFederatedDataset``) do;
the partitioners of flwr-datasets cut disjoint shards, so this one is fedsim's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.seeding import CLIENT_DATA, derive_seed


class SampledPartitions(Sequence):
    """Row indices per client, computed on access (a read-only sequence of ``num`` arrays)."""

    def __init__(self, rows: int, num: int, per_client: int, seed: int) -> None:
        if per_client > rows:
            raise ValueError(
                f"data.samples_per_client: {per_client} is more than the {rows} training "
                "rows there are"
            )
        self.rows, self.num, self.per_client, self.seed = rows, num, per_client, seed

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.num))]
        if not -self.num <= index < self.num:
            raise IndexError(f"client {index} of {self.num}")
        index %= self.num
        rng = np.random.default_rng(derive_seed(self.seed, CLIENT_DATA, index))
        return np.sort(rng.choice(self.rows, size=self.per_client, replace=False))
