"""Which ``[privacy]`` settings make sense, checked before a run starts (pure functions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment

# Flower's strategies whose aggregate is the mean the noise is calibrated to. A server
# optimiser (FedAdam, FedYogi, FedAvgM) would keep state computed from the un-noised mean:
# Flower's wrappers add the noise after the whole aggregate_train.
MEAN_STRATEGIES = ("fedavg", "fedprox")


def enabled(exp: Experiment) -> bool:
    return exp.privacy is not None and exp.privacy.mode != "none"


def clipped_count_stddev(exp: Experiment) -> float:
    """Adaptive clipping's noise on the clipped count (Andrew et al.: per_round / 20)."""
    p = exp.privacy
    return (p.clipped_count_stddev if p else 0.0) or exp.clients.per_round / 20


def check_privacy(exp: Experiment) -> None:
    """Refuse what the wrappers or the accountant cannot honour, naming the key."""
    from fedsim.registry import get_method

    if not enabled(exp):
        return
    p = exp.privacy
    if not get_method(exp.method).differential_privacy:
        raise ValueError(
            f"privacy.mode: method '{exp.method}' combines its clients' results its own way, "
            f"not as the mean of one model per client that Flower's DP wrappers clip and noise; "
            f"'{p.mode}' applies to fedavg, fedprox and curriculum"
        )
    if exp.strategy.aggregator != "mean":
        raise ValueError(
            f"privacy.mode: the noise and the accountant assume the mean of clipped updates; "
            f"strategy.aggregator = '{exp.strategy.aggregator}' has another sensitivity "
            "(use 'mean' with privacy)"
        )
    if p.mode.endswith("adaptive"):
        stddev = clipped_count_stddev(exp)
        if p.noise_multiplier >= 2 * stddev:
            raise ValueError(
                f"privacy.clipped_count_stddev: adaptive clipping spends part of the noise on "
                f"the clipped count and needs noise_multiplier < 2 x clipped_count_stddev "
                f"(got {p.noise_multiplier} >= 2 x {stddev:g}); raise "
                "privacy.clipped_count_stddev or lower privacy.noise_multiplier"
            )


def check_mean_strategy(exp: Experiment, strategy_name: str) -> None:
    """Called by the methods that pick a Flower strategy by name (baselines, curriculum)."""
    if enabled(exp) and strategy_name not in MEAN_STRATEGIES:
        raise ValueError(
            f"privacy.mode: '{strategy_name}' steps a server optimiser on the mean, and "
            "Flower's DP wrappers add their noise after that step, so its state would see "
            f"un-noised updates; use privacy with {' or '.join(MEAN_STRATEGIES)}"
        )
