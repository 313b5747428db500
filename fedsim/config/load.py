"""Load an experiment TOML, apply ``--set`` overrides, validate, and explain errors in one line."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from fedsim.config.schema import Experiment


class ConfigError(ValueError):
    """A config problem, already phrased for the user: ``FILE: KEY: what is wrong``."""


def parse_value(text: str) -> Any:
    """Read an override value as TOML (``3``, ``0.1``, ``true``, ``"x"``), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["run.seed=3", "clients.num=50"]`` into ``{"run.seed": 3, "clients.num": 50}``."""
    out: dict[str, Any] = {}
    for item in items:
        for token in item.split():
            key, sep, value = token.partition("=")
            if not sep or not key:
                raise ConfigError(f"--set {token!r}: expected KEY=VALUE, e.g. run.seed=3")
            out[key.strip()] = parse_value(value.strip())
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """Set dotted keys in a nested dict; a path through a non-table is an error."""
    for dotted, value in overrides.items():
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: {dotted}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    # Model-level validators already lead with the key they are about.
    if not loc or msg.split(":")[0].strip() == loc or msg.startswith(loc):
        return msg
    received = error.get("input")
    if error["type"] not in ("missing",) and not isinstance(received, dict):
        return f"{loc}: {msg} (got {received!r})"
    return f"{loc}: {msg}"


def validate(raw: dict[str, Any], source: str) -> Experiment:
    """Validate a raw dict; raise ConfigError naming the file and the first bad key."""
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
        raise ConfigError(f"{source}: {_describe(first)}{suffix}") from None


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_experiment(path: str | Path, overrides: Iterable[str] | dict[str, Any] = ()) -> Experiment:
    """The one entry point: file + overrides -> validated Experiment (or ConfigError)."""
    path = Path(path)
    raw = read_toml(path)
    if not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    raw = apply_overrides(raw, overrides, str(path))
    raw.setdefault("run", {}).setdefault("name", path.stem)
    return validate(raw, str(path))


def to_toml(experiment: Experiment) -> str:
    """The resolved config as TOML text: written to the run directory and sent to clients."""
    return tomli_w.dumps(experiment.model_dump(mode="json", exclude_none=True))


def from_toml(text: str, source: str = "<resolved config>") -> Experiment:
    return validate(tomllib.loads(text), source)
