"""SCAFFOLD (Karimireddy et al., ICML 2020): control variates against client drift.

Server, each round (Algorithm 1): send the global model x and the server control variate c
to the sampled clients S; with their models y_i and control changes dc_i,

    x <- x + eta_g * mean_{i in S}(y_i - x)          (uniform mean, as in the paper)
    c <- c + (1 / N) * sum_{i in S} dc_i              (N = all clients)

``scaffold.weighting = "samples"`` weights the model step by each client's training examples
n_i / sum n instead, as FedAvg does and as NIID-Bench's SCAFFOLD code does; on very unequal
Dirichlet partitions the uniform mean lets a client with 8 images move the model as far as
one with 1,800. The control update stays the paper's 1/N sum in both.

Traffic is twice FedAvg's each way (x and c down, y and dc up); ``comm.csv`` shows it. The
client half (``fedsim_methods.clients.scaffold``) keeps c_i in ``Context.state``; the
server's c is this strategy's ``state_dict``. Nothing in the engine knows SCAFFOLD: it is a
method like any plugin's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim.config.schema import Experiment
from fedsim.federation.sampling import sampling_kwargs
from fedsim.federation.strategy import arrays_of, numpy_of
from fedsim_methods.scaffold import CONTROL, CONTROL_DELTA, ScaffoldConfig


class Scaffold(FedAvg):
    """FedAvg's sampling; SCAFFOLD's messages, aggregation and server control variate."""

    def __init__(
        self,
        *,
        global_lr: float,
        num_clients: int,
        weighting: Literal["uniform", "samples"] = "uniform",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.global_lr = global_lr
        self.num_clients = num_clients
        self.weighting = weighting
        self.control: dict[str, np.ndarray] | None = None  # c, per array key
        self._sent: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = {k: a.numpy() for k, a in arrays.items()}
        if self.control is None:
            self.control = {k: np.zeros_like(v) for k, v in self._sent.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = arrays_of(self.control)
        for message in messages:
            message.content[CONTROL] = control
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Two ArrayRecords per reply (model, control change): FedAvg's one-record check
        # does not apply; failed replies were already reported and are skipped here.
        valid = [m for m in replies if not m.has_error()]
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        models = [{k: a.numpy() for k, a in c[self.arrayrecord_key].items()} for c in contents]
        weights = self._step_weights(contents)
        new = {}
        for key, x in self._sent.items():
            if x.dtype.kind != "f":  # integer buffers (counters) follow the plain mean
                new[key] = np.mean([m[key] for m in models], axis=0).astype(x.dtype)
                continue
            changes = [m[key].astype(np.float64) - x for m in models]
            # np.mean for 'uniform' keeps the bytes of runs made before the option existed
            step = (
                np.mean(changes, axis=0)
                if weights is None
                else np.average(changes, axis=0, weights=weights)
            )
            new[key] = (x + self.global_lr * step).astype(x.dtype)
        for content in contents:
            for key, delta in content[CONTROL_DELTA].items():
                self.control[key] = self.control[key] + delta.numpy() / self.num_clients
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return arrays_of(new), metrics

    def _step_weights(self, contents: list[RecordDict]) -> list[float] | None:
        """Each reply's training examples for the 'samples' step; None for the uniform mean."""
        if self.weighting == "uniform":
            return None
        counts = []
        for content in contents:
            metrics = next(iter(content.metric_records.values()), None)
            if metrics is None or self.weighted_by_key not in metrics:
                raise ValueError(
                    f"scaffold.weighting = 'samples': a reply has no '{self.weighted_by_key}' "
                    "metric to weight by"
                )
            counts.append(float(metrics[self.weighted_by_key]))
        return counts

    def state_dict(self) -> RecordDict:
        state = RecordDict()
        if self.control is not None:
            state["control"] = arrays_of(self.control)
        return state

    def load_state_dict(self, state: RecordDict) -> None:
        self.control = numpy_of(state.get("control"))


def build_strategy(exp: Experiment) -> Scaffold:
    cfg = exp.section("scaffold") or ScaffoldConfig()
    return Scaffold(
        global_lr=cfg.global_lr,
        num_clients=exp.clients.num,
        weighting=cfg.weighting,
        **sampling_kwargs(exp),
    )
