"""Byzantine-robust aggregation: Flower's Krum, MultiKrum, Bulyan, FedMedian, FedTrimmedAvg.

``strategy.aggregator`` replaces the (weighted) mean of the clients' models by one of Flower's
robust rules, for methods whose clients send back model arrays (``Method.robust_aggregation``).
The rule composes with the method's strategy instead of replacing it: for FedProx it is
FedProx's messages (``proximal-mu``) with Krum's aggregation; for FedAdam, FedYogi and FedAvgM
the robust aggregate takes the place of the mean that their server optimiser steps on. That is
plain Python inheritance: ``FedAdam.aggregate_train`` calls ``super().aggregate_train``, which
in ``class FedAdam+Krum(FedAdam, Krum)`` resolves to Krum's rule instead of FedAvg's mean.

Flower's rules work on the models as sent (not on updates) and keep no state between rounds;
the loop sorts replies by partition id before they aggregate, so results are reproducible.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # flwr's strategies are imported where a strategy is built, not at parse
    from flwr.serverapp.strategy import FedAvg

    from fedsim.config.schema import Experiment

AGGREGATORS = ("mean", "krum", "multikrum", "bulyan", "median", "trimmed-mean")
NEEDS_MALICIOUS = ("krum", "multikrum", "bulyan")


def _flower_class(aggregator: str) -> type[FedAvg]:
    from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

    return {
        "krum": Krum,
        "multikrum": MultiKrum,
        "bulyan": Bulyan,
        "median": FedMedian,
        "trimmed-mean": FedTrimmedAvg,
    }[aggregator]


def nodes_to_select(exp: Experiment) -> int:
    """MultiKrum's m: as configured, or n - f (the paper's largest safe choice)."""
    s = exp.strategy
    return s.num_nodes_to_select or exp.clients.per_round - s.num_malicious_nodes


def aggregator_settings(exp: Experiment) -> dict[str, Any]:
    """The robust rule's own attributes (Flower's constructor arguments)."""
    s = exp.strategy
    if s.aggregator in ("krum", "bulyan"):
        return {"num_malicious_nodes": s.num_malicious_nodes}
    if s.aggregator == "multikrum":
        return {
            "num_malicious_nodes": s.num_malicious_nodes,
            "num_nodes_to_select": nodes_to_select(exp),
        }
    if s.aggregator == "trimmed-mean":
        return {"beta": s.trim_beta}
    return {}


@cache
def _composed(base: type[FedAvg], robust: type[FedAvg]) -> type[FedAvg]:
    """``base``'s messages and server step on ``robust``'s aggregate (see the module doc)."""
    return type(f"{base.__name__}+{robust.__name__}", (base, robust), {"__module__": __name__})


def with_aggregator(base: type[FedAvg], exp: Experiment, **kwargs: Any) -> FedAvg:
    """``base(**kwargs)`` aggregating by ``strategy.aggregator``."""
    from flwr.serverapp.strategy import FedAvg

    aggregator = exp.strategy.aggregator
    if aggregator == "mean":
        return base(**kwargs)
    robust = _flower_class(aggregator)
    settings = aggregator_settings(exp)
    if base is FedAvg:  # Flower's class as it ships
        return robust(**kwargs, **settings)
    strategy = _composed(base, robust)(**kwargs)  # base's __init__ reaches robust's by super()
    for name, value in settings.items():
        setattr(strategy, name, value)
    return strategy


def check_aggregator(exp: Experiment) -> None:
    """Reject settings the rule can never meet (pure: runs wherever a config is parsed)."""
    from fedsim.registry import get_method, methods

    s, n = exp.strategy, exp.clients.per_round
    f = s.num_malicious_nodes
    if s.aggregator != "mean" and not get_method(exp.method).robust_aggregation:
        able = [m.name for m in methods().values() if m.robust_aggregation]
        raise ValueError(
            f"strategy.aggregator: method '{exp.method}' combines its clients' results its own "
            f"way; '{s.aggregator}' applies to methods whose clients return model arrays "
            f"({', '.join(able)})"
        )
    if f and s.aggregator not in NEEDS_MALICIOUS:
        raise ValueError(
            f"strategy.num_malicious_nodes: only {', '.join(NEEDS_MALICIOUS)} read it "
            f"(strategy.aggregator is '{s.aggregator}')"
        )
    if s.num_nodes_to_select and s.aggregator != "multikrum":
        raise ValueError(
            f"strategy.num_nodes_to_select: only multikrum reads it "
            f"(strategy.aggregator is '{s.aggregator}')"
        )
    if s.aggregator in ("krum", "multikrum") and n < 2 * f + 3:
        raise ValueError(
            f"strategy.num_malicious_nodes: {s.aggregator} tolerates f malicious clients among "
            f"n >= 2f + 3 per round; clients.per_round = {n} allows f <= {max((n - 3) // 2, 0)} "
            f"(got {f})"
        )
    if s.aggregator == "multikrum" and nodes_to_select(exp) > n - f:
        raise ValueError(
            f"strategy.num_nodes_to_select: multikrum averages at most clients.per_round - "
            f"strategy.num_malicious_nodes = {n - f} models (got {s.num_nodes_to_select})"
        )
    if s.aggregator == "bulyan" and n < 4 * f + 3:
        raise ValueError(
            f"strategy.num_malicious_nodes: bulyan needs clients.per_round >= 4f + 3 "
            f"(= {4 * f + 3} for f = {f}, got {n}); otherwise it skips every aggregation"
        )
    if s.aggregator == "trimmed-mean" and int(s.trim_beta * n) == 0:
        raise ValueError(
            f"strategy.trim_beta: {s.trim_beta} of clients.per_round = {n} trims no model from "
            f"either tail (a plain mean); use at least {1 / n:.3g}"
        )
