"""FedAvg, FedProx, FedAdam, FedYogi and FedAvgM: server half (declared in
``fedsim_methods.baselines``).

We do not re-implement them. Sampling is made reproducible by the federation loop (seeded
``random`` around ``configure_*``, nodes listed in partition order), so the strategies are
used exactly as Flower ships them (``fedsim_methods.strategies.flower``).
"""

from __future__ import annotations

from flwr.serverapp.strategy import Strategy

from fedsim.config.schema import Experiment
from fedsim_methods.strategies.flower import flower_strategy


def build_strategy(exp: Experiment) -> Strategy:
    """Flower's strategy, wrapped in the client curriculum when ``[curriculum]`` asks for it
    and in Flower's DP wrapper when ``[privacy]`` does."""
    from fedsim.privacy.server import with_privacy
    from fedsim_methods.strategies.curriculum import with_client_curriculum

    return with_privacy(with_client_curriculum(flower_strategy(exp, exp.method), exp), exp)
