"""Which ``[privacy]`` settings make sense, checked before a run starts (pure functions).

Here, with the config, not in ``fedsim.privacy``: parsing an experiment must not import the
DP wrappers (and their federation imports)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment


def enabled(exp: Experiment) -> bool:
    return exp.privacy is not None and exp.privacy.mode != "none"


def clipped_count_stddev(exp: Experiment) -> float:
    """Adaptive clipping's noise on the clipped count (Andrew et al.: per_round / 20)."""
    p = exp.privacy
    return (p.clipped_count_stddev if p else 0.0) or exp.clients.per_round / 20


def check_privacy(exp: Experiment) -> None:
    """Refuse what the wrappers or the accountant cannot honour, naming the key."""
    from fedsim.registry import get_method, methods

    if not enabled(exp):
        return
    p = exp.privacy
    if not get_method(exp.method).differential_privacy:
        able = [m.name for m in methods().values() if m.differential_privacy]
        raise ValueError(
            f"privacy.mode: method '{exp.method}' combines its clients' results its own way, "
            f"not as the mean of one model per client that Flower's DP wrappers clip and noise; "
            f"'{p.mode}' applies to {', '.join(able)}"
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
