"""Experiment configuration: a typed schema, TOML loading, dotted overrides."""

from fedsim.config.load import ConfigError, load_experiment, parse_overrides
from fedsim.config.schema import Experiment

__all__ = ["ConfigError", "Experiment", "load_experiment", "parse_overrides"]
