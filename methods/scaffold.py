"""SCAFFOLD (Karimireddy et al., ICML 2020), declared: its section, its rules, and the names of
the records both halves exchange (the server half is ``fedsim_methods.strategies.scaffold``,
the client half ``fedsim_methods.clients.scaffold``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedsim.config.schema import Section
from fedsim_methods.supervised import (
    supervised_method,
    validate_data_and_model,
    validate_own_strategy,
)

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment

CONTROL = "control"  # the server's c (down) and this client's c_i (in Context.state)
CONTROL_DELTA = "control_delta"  # c_i+ - c_i (up)


class ScaffoldConfig(Section):
    """``[scaffold]``: the server's step on the averaged update."""

    global_lr: float = Field(1.0, gt=0, description="eta_g: x <- x + eta_g * mean(y_i - x)")
    weighting: Literal["uniform", "samples"] = Field(
        "uniform",
        description=(
            "how the model step averages y_i - x: 'uniform' as the paper's Algorithm 1 "
            "writes it, 'samples' weighted by each client's training examples as FedAvg "
            "and NIID-Bench's SCAFFOLD do (the control variate c is a plain 1/N sum either way)"
        ),
    )


def validate(exp: Experiment) -> None:
    validate_data_and_model(exp)
    validate_own_strategy(exp)
    if exp.client.optimizer != "sgd" or exp.client.momentum != 0:
        raise ValueError(
            "client.optimizer: SCAFFOLD's control update (option II) assumes plain SGD; "
            'set client.optimizer = "sgd" and client.momentum = 0'
        )


SCAFFOLD = supervised_method(
    name="scaffold",
    description="SCAFFOLD (Karimireddy et al. 2020): control variates against client drift",
    strategy="fedsim_methods.strategies.scaffold:build_strategy",
    handlers={
        "train": "fedsim_methods.clients.scaffold:train",
        "evaluate": "fedsim_methods.clients.supervised:evaluate",
    },
    sections={"scaffold": ScaffoldConfig},
    validate="fedsim_methods.scaffold:validate",
    keeps_client_state=True,
)
