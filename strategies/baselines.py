"""FedAvg, FedProx, FedAdam, FedYogi and FedAvgM: Flower's own strategies, declared as methods.

We do not re-implement them. Sampling is made reproducible by the federation loop (seeded
``random`` around ``configure_*``, nodes listed in partition order), so the strategies are
used exactly as Flower ships them. Each baseline accepts an optional ``[curriculum]`` section
(data curricula in local training, a client curriculum around the strategy), composes with a
robust aggregator (``strategy.aggregator``, ``fedsim/robust.py``) and, on FedAvg and FedProx,
with central differential privacy (``[privacy]``, ``fedsim/privacy``).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy
from pydantic import Field

from fedsim.config.schema import Experiment, Section
from fedsim.curriculum.config import CurriculumConfig
from fedsim.method import Method
from fedsim.privacy.rules import check_mean_strategy
from fedsim.robust import with_aggregator
from strategies.supervised import supervised_method
from strategies.supervised import validate as validate_supervised


def sampling_kwargs(exp: Experiment) -> dict:
    """Flower's fraction/minimum arguments that pick exactly ``per_round`` clients."""
    num, per_round = exp.clients.num, exp.clients.per_round
    n_eval = round(exp.strategy.fraction_evaluate * num)
    return {
        "fraction_train": per_round / num,
        "min_train_nodes": per_round,
        "fraction_evaluate": exp.strategy.fraction_evaluate,
        "min_evaluate_nodes": n_eval,
        "min_available_nodes": num,
    }


class FedAvgMConfig(Section):
    """``[fedavgm]``: server momentum (Hsu et al. 2019), Flower's FedAvgM."""

    server_learning_rate: float = Field(1.0, gt=0, description="step on the averaged update")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="momentum of that step")


def flower_strategy(exp: Experiment, name: str | None = None) -> Strategy:
    """Flower's strategy ``name`` (default: the method) configured from the experiment,
    aggregating by ``strategy.aggregator``."""
    s, kw = exp.strategy, sampling_kwargs(exp)
    name = name or s.name or exp.method
    if name == "fedprox":
        return with_aggregator(FedProx, exp, proximal_mu=s.proximal_mu, **kw)
    if name in ("fedadam", "fedyogi"):
        cls = FedAdam if name == "fedadam" else FedYogi
        adam = {"eta": s.eta, "eta_l": s.eta_l, "beta_1": s.beta_1, "beta_2": s.beta_2}
        return with_aggregator(cls, exp, tau=s.tau, **adam, **kw)
    if name == "fedavgm":
        m = exp.section("fedavgm") or FedAvgMConfig()
        momentum = {"server_learning_rate": m.server_learning_rate}
        return with_aggregator(FedAvgM, exp, server_momentum=m.server_momentum, **momentum, **kw)
    return with_aggregator(FedAvg, exp, **kw)


def build_strategy(exp: Experiment) -> Strategy:
    """Flower's strategy, wrapped in the client curriculum when ``[curriculum]`` asks for it
    and in Flower's DP wrapper when ``[privacy]`` does."""
    from fedsim.privacy.server import with_privacy
    from strategies.curriculum import with_client_curriculum

    return with_privacy(with_client_curriculum(flower_strategy(exp, exp.method), exp), exp)


def validate_server_options(exp: Experiment, name: str) -> None:
    """``[privacy]`` on Flower's strategy ``name``: only where the noise covers all it sends."""
    check_mean_strategy(exp, name)
    cfg = exp.section("curriculum")
    if exp.privacy is not None and exp.privacy.mode != "none" and cfg and cfg.client_curriculum:
        raise ValueError(
            "privacy.mode: the client curriculum's scoring round sends every client's loss to "
            "the server without noise, which the accountant does not cover; set "
            "curriculum.client_curriculum = false"
        )


def validate(exp: Experiment) -> None:
    validate_supervised(exp)
    validate_server_options(exp, exp.method)


def _baseline(name: str, description: str, **extra) -> Method:
    return supervised_method(
        name=name,
        description=description,
        strategy="strategies.baselines:build_strategy",
        optional_sections={"curriculum": CurriculumConfig},
        validate="strategies.baselines:validate",
        keeps_client_state="strategies.curriculum:keeps_client_state",
        robust_aggregation=True,
        differential_privacy=True,
        **extra,
    )


FEDAVG = _baseline("fedavg", "FedAvg (McMahan et al. 2017), Flower's strategy")
FEDPROX = _baseline("fedprox", "FedProx (Li et al. 2020): proximal term on clients")
FEDADAM = _baseline("fedadam", "FedAdam (Reddi et al. 2021): Adam on the server")
FEDYOGI = _baseline("fedyogi", "FedYogi (Reddi et al. 2021): Yogi on the server")
FEDAVGM = _baseline(
    "fedavgm",
    "FedAvgM (Hsu et al. 2019): server momentum, Flower's strategy",
    sections={"fedavgm": FedAvgMConfig},
)
