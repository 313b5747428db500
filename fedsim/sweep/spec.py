"""The sweep file: which experiments, which overrides, which seeds, where the runs go.

```toml
experiments = ["dir0.2-*.toml"]      # globs, relative to this file
seeds = [0, 1, 2]
out = "../../runs/sweep"             # relative to this file (``--out`` overrides)
layout = "{cell}/seed{seed}"         # run directory of a cell and seed under ``out``
name = "{stem}-lr{lr}"               # optional cell name template (default: stem + grid)

[set]                                # fixed overrides for every run
"run.rounds" = 10

[grid]                               # cartesian product of these values
"client.lr" = [0.01, 0.05]

[[group]]                            # more experiments with their own grid / set / name
experiments = ["local.toml"]
grid = { "fedit.train_clients" = [[0], [1]] }
name = "local{train_clients}"
```

Problems are reported like experiment files: one line naming the file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedsim.config.load import ConfigError

Value = bool | int | float | str | list[Any]
RESERVED = ("run.seed",)  # seeds come from ``seeds``, one run directory each


class SweepError(ConfigError):
    """A sweep-file problem, phrased for the user: ``FILE: KEY: what is wrong``."""


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"client": {"lr": x}}`` and ``{"client.lr": x}`` both become ``{"client.lr": x}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


class Group(BaseModel):
    """Experiment files that share a grid, fixed overrides and a cell-name template."""

    model_config = ConfigDict(extra="forbid")

    experiments: list[str] = Field(default_factory=list)
    grid: dict[str, list[Value]] = Field(default_factory=dict)
    set: dict[str, Value] = Field(default_factory=dict)
    name: str | None = None

    @field_validator("grid", "set", mode="before")
    @classmethod
    def _dotted(cls, value: Any) -> Any:
        return flatten(value) if isinstance(value, dict) else value

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Value]]) -> dict[str, list[Value]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid.{key}: give at least one value")
        return grid

    @model_validator(mode="after")
    def _reserved(self) -> Group:
        for table in ("grid", "set"):
            for key in RESERVED:
                if key in getattr(self, table):
                    raise ValueError(f"{table}.{key}: seeds come from `seeds = [...]`")
        return self


class SweepFile(Group):
    """The whole file: a top-level group (optional) plus ``[[group]]`` tables."""

    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    out: str
    layout: str = "{cell}/seed{seed}"
    group: list[Group] = Field(default_factory=list)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds: a seed is listed twice")
        return seeds

    @field_validator("layout")
    @classmethod
    def _layout(cls, layout: str) -> str:
        if "{cell}" not in layout or "{seed}" not in layout:
            raise ValueError("layout: must contain {cell} and {seed}")
        if layout.startswith("/") or ".." in Path(layout).parts:
            raise ValueError("layout: must stay under `out` (relative, no '..')")
        try:
            layout.format(cell="c", seed=0)
        except (KeyError, IndexError, ValueError):
            raise ValueError("layout: only {cell} and {seed} can be filled in") from None
        return layout

    @model_validator(mode="after")
    def _some_experiments(self) -> SweepFile:
        if not self.experiments and not self.group:
            raise ValueError("experiments: name at least one experiment file (or a [[group]])")
        for i, group in enumerate(self.group):
            if not group.experiments:
                raise ValueError(f"group.{i}.experiments: name at least one experiment file")
        return self

    def groups(self) -> list[Group]:
        """The top-level group (when it names experiments) then each ``[[group]]``; every
        group's ``set`` starts from the top-level one."""
        top = [Group(experiments=self.experiments, grid=self.grid, set=self.set, name=self.name)]
        more = [g.model_copy(update={"set": {**self.set, **g.set}}) for g in self.group]
        return (top if self.experiments else []) + more


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if not loc or msg.startswith(loc.split(".")[0]):
        return msg
    if error["type"] != "missing" and not isinstance(error.get("input"), dict):
        return f"{loc}: {msg} (got {error.get('input')!r})"
    return f"{loc}: {msg}"


def read_sweep(path: str | Path) -> SweepFile:
    """Parse and validate a sweep file; SweepError names the file and the first bad key."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: not valid TOML: {exc}") from None
    try:
        return SweepFile.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = len(errors) - 1
        suffix = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
        raise SweepError(f"{path}: {_describe(errors[0])}{suffix}") from None
