"""Curricula in FL (Vahidian et al., ICCV 2023): data curricula in local training and a
client curriculum across rounds.

- ``pacing``: how many items (samples or clients) are eligible at step t
- ``ordering``: in which order items are released (curriculum, anti, random, vanilla)
- ``scoring``: per-sample difficulty under the global / previous local model
- ``local``: the paced index batches of one local training call
- ``schedule``: the client curriculum's pick of a round's clients
- ``streams``: its random streams

Configured by ``[curriculum]`` (``config``); the server side is
``fedsim_methods.strategies.curriculum``, the client side the supervised client
(``fedsim_methods.clients.supervised``). This module declares the method: FedAvg (or the
``strategy.name`` it composes with) whose clients train under the data curriculum, wrapped in
the client curriculum when asked; the baselines take the same ``[curriculum]`` section.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim_methods.curriculum.config import CurriculumConfig
from fedsim_methods.curriculum.streams import STREAMS
from fedsim_methods.server_optimisers import (
    OPTIMISER_SECTIONS,
    check_optimiser_sections,
    check_server_options,
    optimiser_sections,
)
from fedsim_methods.supervised import supervised_method, validate_data_and_model

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment

DEFAULT_OPTIMISER = "fedavg"


def optimiser_of(exp: Experiment) -> str:
    """The Flower strategy the curriculum composes with (``strategy.name``)."""
    return exp.strategy.name or DEFAULT_OPTIMISER


def validate(exp: Experiment) -> None:
    """The curriculum method trains the small supervised models; it composes with a baseline."""
    validate_data_and_model(exp)
    name = optimiser_of(exp)
    if name not in OPTIMISER_SECTIONS:
        raise ValueError(
            f"strategy.name: the curriculum method composes with "
            f"{', '.join(OPTIMISER_SECTIONS)}, not '{name}'"
        )
    check_optimiser_sections(exp, name)
    check_server_options(exp, name)


CURRICULUM = supervised_method(
    name="curriculum",
    description="Curricula in FL (Vahidian et al. 2023): data + client curricula on FedAvg & co",
    strategy="fedsim_methods.strategies.curriculum:build_strategy",
    sections={"curriculum": CurriculumConfig},
    optional_sections=optimiser_sections(),
    validate="fedsim_methods.curriculum:validate",
    keeps_client_state="fedsim_methods.baselines:keeps_client_state",
    robust_aggregation=True,
    differential_privacy=True,
    chunked_aggregation=True,  # its optimiser is fedsim_methods.strategies.flower's
    streams=STREAMS,
)
