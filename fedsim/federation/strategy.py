"""What a fedsim strategy may add to Flower's Strategy API, and how its state is saved.

- ``UsesFederation``: a mixin for strategies that need the federation context (partition
  ids, extra exchanges). The loop calls ``bind(ctx)`` before round 1; outside fedsim's loop
  such a strategy refuses to run instead of guessing.
- ``train_round(server_round, arrays, config, ctx)``: a strategy that defines it owns the
  whole training stage of a round (several exchanges, custom ``train.<action>`` messages);
  otherwise the loop runs Flower's configure_train -> exchange -> aggregate_train.
- ``state_dict() -> RecordDict`` / ``load_state_dict(RecordDict)``: what a checkpoint keeps
  of the strategy. Flower's own stateful strategies (FedOpt family, FedAvgM) are covered by
  ``strategy_state`` below, so they checkpoint without subclassing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy import FedAvgM, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from fedsim.federation.context import FederationContext

log = logging.getLogger("fedsim")


class UsesFederation:
    """Gives a strategy ``self.ctx`` (set by fedsim's loop through ``bind``)."""

    _ctx: FederationContext | None = None

    def bind(self, ctx: FederationContext) -> None:
        self._ctx = ctx
        inner = getattr(self, "inner", None)
        if inner is not None and hasattr(inner, "bind"):
            inner.bind(ctx)

    @property
    def ctx(self) -> FederationContext:
        if self._ctx is None:
            raise RuntimeError(
                f"{type(self).__name__} needs fedsim's federation context: run it through "
                "fedsim (its loop calls bind(ctx) before round 1)"
            )
        return self._ctx


class RemembersSent:
    """For a strategy whose server step starts from the arrays it sent rather than from an
    average of the replies (distillation, FedDM): ``configure_train`` keeps them in
    ``self.sent`` for ``aggregate_train``. Mix in before Flower's strategy class."""

    sent: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config, grid):
        self.sent = arrays
        return super().configure_train(server_round, arrays, config, grid)


def bind_context(strategy: Strategy, ctx: FederationContext) -> None:
    if hasattr(strategy, "bind"):
        strategy.bind(ctx)


# -- state ----------------------------------------------------------------------------------


def arrays_of(values: dict[str, np.ndarray] | list[np.ndarray] | None) -> ArrayRecord | None:
    """A dict (or list) of numpy arrays as an ArrayRecord, dtypes and order kept."""
    if values is None:
        return None
    items = values.items() if isinstance(values, dict) else enumerate(values)
    return ArrayRecord(array_dict={str(k): Array(np.asarray(v)) for k, v in items})


def numpy_of(record: ArrayRecord | None) -> dict[str, np.ndarray] | None:
    return None if record is None else {k: a.numpy() for k, a in record.items()}


def _flower_state(strategy: Strategy) -> RecordDict | None:
    """The state of Flower's stateful strategies, or None for one we do not know."""
    state = RecordDict()
    if isinstance(strategy, FedOpt):
        for name in ("current_arrays", "m_t", "v_t"):
            record = arrays_of(getattr(strategy, name))
            if record is not None:
                state[name] = record
        return state
    if isinstance(strategy, FedAvgM):
        if strategy.current_arrays is not None:
            state["current_arrays"] = strategy.current_arrays
        record = arrays_of(strategy.momentum_vector)
        if record is not None:
            state["momentum_vector"] = record
        return state
    return None


def _load_flower_state(strategy: Strategy, state: RecordDict) -> bool:
    if isinstance(strategy, FedOpt):
        for name in ("current_arrays", "m_t", "v_t"):
            setattr(strategy, name, numpy_of(state.get(name)))
        return True
    if isinstance(strategy, FedAvgM):
        strategy.current_arrays = state.get("current_arrays")
        momentum = numpy_of(state.get("momentum_vector"))
        strategy.momentum_vector = None if momentum is None else list(momentum.values())
        return True
    return False


def _stateless_classes() -> tuple[type[Strategy], ...]:
    """Flower strategies that keep no state between rounds (sampling settings only)."""
    from flwr.serverapp.strategy import (
        Bulyan,
        FedAvg,
        FedMedian,
        FedProx,
        FedTrimmedAvg,
        Krum,
        MultiKrum,
    )

    from fedsim.federation.chunked_mean import ChunkedMean

    return (FedAvg, FedProx, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan, ChunkedMean)


def _is_stateless(strategy: Strategy) -> bool:
    """Flower's stateless class, or a composition of such classes (fedsim.robust's,
    fedsim.federation.chunked_mean's)."""
    known = _stateless_classes()
    cls = type(strategy)
    return cls in known or (len(cls.__bases__) > 1 and all(b in known for b in cls.__bases__))


def strategy_state(strategy: Strategy) -> RecordDict:
    """What to checkpoint of ``strategy``: its ``state_dict()``, or Flower's known state."""
    if hasattr(strategy, "state_dict"):
        return strategy.state_dict()
    state = _flower_state(strategy)
    if state is not None:
        return state
    if not _is_stateless(strategy):
        log.warning(
            "%s has no state_dict(): a resumed run restarts its server state",
            type(strategy).__name__,
        )
    return RecordDict()


def load_strategy_state(strategy: Strategy, state: RecordDict) -> None:
    if hasattr(strategy, "load_state_dict"):
        strategy.load_state_dict(state)
    else:
        _load_flower_state(strategy, state)


def nested_state(prefix: str, state: RecordDict) -> dict[str, Any]:
    """``state``'s records under ``prefix/`` (wrappers nest their inner strategy's state)."""
    return {f"{prefix}/{key}": record for key, record in state.items()}


def unnest_state(prefix: str, state: RecordDict) -> RecordDict:
    head = prefix + "/"
    return RecordDict({k[len(head) :]: v for k, v in state.items() if k.startswith(head)})
