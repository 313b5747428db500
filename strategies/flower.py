"""Flower's own server optimisers, configured from an experiment (FedAvg, FedProx, FedAdam,
FedYogi, FedAvgM), each aggregating by ``strategy.aggregator``. The baselines are these
strategies as they ship; the curriculum composes with them (``strategy.name``).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy

from fedsim.config.schema import Experiment
from fedsim.federation.chunked_mean import chunked
from fedsim.federation.sampling import sampling_kwargs
from fedsim.robust import with_aggregator
from fedsim_methods.server_optimisers import FedAvgMConfig, FedOptConfig, FedProxConfig

OPTIMISERS = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi,
              "fedavgm": FedAvgM}  # fmt: skip


def flower_strategy(exp: Experiment, name: str) -> Strategy:
    """Flower's strategy ``name`` configured from the experiment's sections."""
    kw = sampling_kwargs(exp)
    cls = OPTIMISERS[name]
    # clients.chunk_size: the same server step on the mean of the chunks' partial sums
    base = chunked(cls) if exp.clients.chunk_size else cls
    if cls is FedProx:
        cfg = exp.section("fedprox") or FedProxConfig()
        return with_aggregator(base, exp, proximal_mu=cfg.proximal_mu, **kw)
    if cls in (FedAdam, FedYogi):
        o = exp.section("fedopt") or FedOptConfig()
        adam = {"eta": o.eta, "eta_l": o.eta_l, "beta_1": o.beta_1, "beta_2": o.beta_2}
        return with_aggregator(base, exp, tau=o.tau, **adam, **kw)
    if cls is FedAvgM:
        m = exp.section("fedavgm") or FedAvgMConfig()
        momentum = {"server_learning_rate": m.server_learning_rate}
        return with_aggregator(base, exp, server_momentum=m.server_momentum, **momentum, **kw)
    return with_aggregator(base, exp, **kw)
