"""Feature centring (``sfprompt.centre_features``): the classifier reads pooled features
minus ``tail.centre``, the mean pooled feature of the samples the clients trained on.

Why: mean-pooled features of a frozen encoder share a large component (for MiniLM-L6 on
Rotten Tomatoes the mean feature's norm is half the samples' spread around it). On a client
whose samples are mostly one class, the gradient of the classifier points along that shared
component, so each such client shifts every input's logit towards its majority class and
FedAvg of a few of them flips the global model from one class to the other. Subtracting the
mean turns a one-class client's update into its class's deviation from the mean, which is
what separates the classes. ``W (x - c) + b`` is the same family of models as ``W x + b``:
only the optimisation changes (experiments/sfprompt/README.md, "Label skew").

How: the centre is part of the global arrays, so it travels (hidden-size floats each way),
is checkpointed and is used by server evaluation. During a round it is fixed; each client
sums the pooled features it trains on (split training's tail pass, or unsplit local
training) and replies with their mean in its place, which FedAvg weights by the samples
trained on. Round 1 starts from zero, i.e. uncentred.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from fedsim_methods.sfprompt.wire import record_of, tensors_of

SUM, COUNT = "sum", "count"


class FeatureMean:
    """A running float64 sum of pooled features and their count."""

    def __init__(self, total: torch.Tensor | None = None, count: int = 0) -> None:
        self.total, self.count = total, count

    def add(self, features: torch.Tensor) -> None:
        batch = features.detach().double().sum(dim=0).cpu()
        self.total = batch if self.total is None else self.total + batch
        self.count += int(features.shape[0])

    def mean(self) -> torch.Tensor | None:
        return None if self.total is None or not self.count else (self.total / self.count).float()

    def record(self) -> ArrayRecord:
        total = self.total if self.total is not None else torch.zeros(0, dtype=torch.float64)
        return record_of({SUM: total, COUNT: torch.tensor(self.count)})

    @classmethod
    def of(cls, record: ArrayRecord | None) -> FeatureMean:
        if record is None:
            return cls()
        values = tensors_of(record)
        total, count = values[SUM], int(values[COUNT])
        return cls(total if total.numel() else None, count)
