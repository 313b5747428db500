"""The experiment as it travels: the resolved config in every message the server sends.

Clients learn the experiment from the ``CONFIG_KEY`` entry of a message's ``config`` record
(the resolved TOML text), parsed once per process and text. Here, below the ClientApp, so
that the privacy mods, the backends and the ClientApp share one parse.
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import Message

from fedsim.config.load import from_toml
from fedsim.config.schema import Experiment

CONFIG_KEY = "fedsim.config"


@lru_cache(maxsize=8)
def experiment_from_text(text: str) -> Experiment:
    """The experiment a resolved config text describes (cached: every message carries it)."""
    return from_toml(text)


def experiment_of(msg: Message) -> Experiment:
    """The experiment of the run that sent ``msg``."""
    return experiment_from_text(str(msg.content["config"][CONFIG_KEY]))
