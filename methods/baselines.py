"""FedAvg, FedProx, FedAdam, FedYogi and FedAvgM, declared: Flower's own strategies as methods.

Each baseline accepts an optional ``[curriculum]`` section (data curricula in local training,
a client curriculum around the strategy), composes with a robust aggregator
(``strategy.aggregator``) and, where its aggregate is the plain weighted mean (FedAvg,
FedProx), with central differential privacy (``[privacy]``). The server optimisers' knobs
are sections of their own (``fedsim_methods.server_optimisers``), which the curriculum and
FedIT reuse when they compose with those optimisers. The server half is
``fedsim_methods.strategies.baselines``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.method import Method
from fedsim_methods.curriculum.config import CurriculumConfig
from fedsim_methods.server_optimisers import (
    OPTIMISER_SECTIONS,
    check_optimiser_sections,
    check_server_options,
)
from fedsim_methods.supervised import supervised_method
from fedsim_methods.supervised import validate as validate_supervised

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment


def validate(exp: Experiment) -> None:
    validate_supervised(exp)
    check_optimiser_sections(exp, exp.method)
    check_server_options(exp, exp.method)


def keeps_client_state(exp: Experiment) -> bool:
    """Local (L) or G+L curriculum scoring keeps each client's last local model."""
    cfg = exp.section("curriculum")
    return cfg is not None and cfg.keeps_local_model


def _baseline(name: str, description: str, **extra) -> Method:
    section = OPTIMISER_SECTIONS[name]
    return supervised_method(
        name=name,
        description=description,
        strategy="fedsim_methods.strategies.baselines:build_strategy",
        sections=dict([section]) if section else {},
        optional_sections={"curriculum": CurriculumConfig},
        validate="fedsim_methods.baselines:validate",
        keeps_client_state="fedsim_methods.baselines:keeps_client_state",
        robust_aggregation=True,
        differential_privacy=True,  # check_server_options refuses the server optimisers
        chunked_aggregation=True,  # fedsim_methods.strategies.flower composes the chunks
        **extra,
    )


FEDAVG = _baseline("fedavg", "FedAvg (McMahan et al. 2017), Flower's strategy")
FEDPROX = _baseline("fedprox", "FedProx (Li et al. 2020): proximal term on clients")
FEDADAM = _baseline("fedadam", "FedAdam (Reddi et al. 2021): Adam on the server")
FEDYOGI = _baseline("fedyogi", "FedYogi (Reddi et al. 2021): Yogi on the server")
FEDAVGM = _baseline("fedavgm", "FedAvgM (Hsu et al. 2019): server momentum, Flower's strategy")
