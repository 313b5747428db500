"""Flower's four central-DP strategy wrappers, made reproducible, resumable and accounted.

What fedsim adds around ``DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping``:
- noise seeded from (seed, round): Flower draws it from numpy's global RNG, which is seeded
  per round here (and restored afterwards), so the same config and seed give the same bytes;
- uniform client weights: the noise std (noise_multiplier x clipping norm / per_round) is
  calibrated to the plain mean of per_round clipped updates (DP-FedAvg); a mean weighted by
  example counts would give a large client more than 1/per_round of the sum;
- ``dp-epsilon`` (from ``fedsim.privacy.accountant``: the sampling done, without
  replacement), ``dp-epsilon-poisson`` (the usual approximation) and ``dp-clipping-norm`` in every
  round's train metrics;
- ``state_dict``/``load_state_dict``: the adaptive clipping norm and the inner strategy's state
  travel with checkpoints; ``bind`` hands fedsim's federation context to the inner strategy.

Flower's wrappers skip a round's aggregation (the global model stays) when a client failed:
the noise is calibrated to per_round replies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedsim.config.privacy import clipped_count_stddev, enabled
from fedsim.config.schema import Experiment
from fedsim.federation.strategy import (
    load_strategy_state,
    nested_state,
    strategy_state,
    unnest_state,
)
from fedsim.privacy.accountant import epsilon, poisson_epsilon
from fedsim.seeding import DP_NOISE, derive_seed

WEIGHT_KEY = "num-examples"  # what fedsim's clients report and Flower's FedAvg weighs by


@contextmanager
def seeded_numpy_random(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for a block (Flower's DP noise draws from it), then restore."""
    saved = np.random.get_state()
    np.random.seed(seed % (1 << 32))
    try:
        yield
    finally:
        np.random.set_state(saved)


class _Accounted:
    """Mixed in before one of Flower's DP wrappers (which keep the inner as ``strategy``)."""

    strategy: Strategy
    clipping_norm: float

    def setup(self, exp: Experiment) -> None:
        p = exp.privacy
        self.seed = exp.run.seed
        self.num_clients, self.per_round = exp.clients.num, exp.clients.per_round
        self.accounted_noise = p.noise_multiplier  # the whole mechanism's, as configured
        self.delta = p.delta

    def bind(self, ctx) -> None:
        if hasattr(self.strategy, "bind"):
            self.strategy.bind(ctx)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for reply in replies:  # equal weights: the mean the noise is calibrated to
            if not reply.has_error():
                for record in reply.content.metric_records.values():
                    if WEIGHT_KEY in record:
                        record[WEIGHT_KEY] = 1
        with seeded_numpy_random(derive_seed(self.seed, server_round, DP_NOISE)):
            arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        metrics = MetricRecord(dict(metrics) if metrics is not None else {})
        z, n, k = self.accounted_noise, self.num_clients, self.per_round
        metrics["dp-epsilon"] = epsilon(z, n, k, server_round, self.delta)
        metrics["dp-epsilon-poisson"] = poisson_epsilon(z, k / n, server_round, self.delta)
        metrics["dp-clipping-norm"] = float(self.clipping_norm)
        return arrays, metrics

    def state_dict(self) -> RecordDict:
        state = RecordDict({"privacy": ConfigRecord({"clipping_norm": float(self.clipping_norm)})})
        for key, record in nested_state("inner", strategy_state(self.strategy)).items():
            state[key] = record
        return state

    def load_state_dict(self, state: RecordDict) -> None:
        self.clipping_norm = float(state["privacy"]["clipping_norm"])
        load_strategy_state(self.strategy, unnest_state("inner", state))


class ServerFixed(_Accounted, DifferentialPrivacyServerSideFixedClipping):
    pass


class ClientFixed(_Accounted, DifferentialPrivacyClientSideFixedClipping):
    pass


class ServerAdaptive(_Accounted, DifferentialPrivacyServerSideAdaptiveClipping):
    pass


class ClientAdaptive(_Accounted, DifferentialPrivacyClientSideAdaptiveClipping):
    pass


def with_privacy(strategy: Strategy, exp: Experiment) -> Strategy:
    """``strategy`` wrapped as ``[privacy]`` asks (unchanged when it is absent or 'none')."""
    if not enabled(exp):
        return strategy
    p, per_round = exp.privacy, exp.clients.per_round
    if p.mode.endswith("fixed"):
        cls = ServerFixed if p.mode == "server-fixed" else ClientFixed
        wrapped = cls(strategy, p.noise_multiplier, p.clipping_norm, per_round)
    else:
        cls = ServerAdaptive if p.mode == "server-adaptive" else ClientAdaptive
        wrapped = cls(
            strategy,
            p.noise_multiplier,
            per_round,
            initial_clipping_norm=p.clipping_norm,
            target_clipped_quantile=p.target_clipped_quantile,
            clip_norm_lr=p.clip_norm_lr,
            clipped_count_stddev=clipped_count_stddev(exp),
        )
    wrapped.setup(exp)
    return wrapped
