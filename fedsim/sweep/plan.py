"""Expand a sweep file into planned runs: (experiment, grid point) = a cell, x seeds.

Runs are ordered seed by seed, so a sweep stopped half-way still covers every cell.
"""

from __future__ import annotations

import fnmatch
import glob
import itertools
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.config.load import ConfigError, parse_overrides
from fedsim.config.schema import RUN_NAME
from fedsim.sweep.spec import RESERVED, Group, SweepError, SweepFile, read_sweep

LOGS = "logs"
# Cells a sweep may plan unless --max-cells says more: every cell's config is validated
# before any run starts, and a typo'd grid of 10^8 cells must fail at once, not after 24 GB.
MAX_CELLS = 2_000


@dataclass(frozen=True, eq=False)  # hashed by identity: a dict key while the sweep runs
class PlannedRun:
    cell: str
    seed: int
    experiment: Path
    overrides: dict[str, Any]  # everything passed with --set, run.seed and run.name included
    run_dir: Path
    label: str  # the run directory relative to the sweep's out (``<cell>/seed<k>``)

    def set_args(self) -> list[str]:
        """``--set KEY=VALUE`` arguments that ``fedsim run`` parses back to ``overrides``."""
        return [arg for k, v in self.overrides.items() for arg in ("--set", f"{k}={toml_value(v)}")]


@dataclass
class Sweep:
    source: Path
    out: Path
    layout: str
    seeds: list[int]
    runs: list[PlannedRun] = field(default_factory=list)

    def cells(self) -> list[str]:
        """Cell names in plan order."""
        return list(dict.fromkeys(r.cell for r in self.runs))

    def log_of(self, run: PlannedRun) -> Path:
        """Where the run's process output goes (outside the run directory, which stays
        exactly what ``fedsim run`` writes)."""
        return self.out / LOGS / f"{run.label}.log"


def toml_value(value: Any) -> str:
    """A value as compact TOML, one ``--set KEY=VALUE`` argument (a value that is one TOML
    value is never split, spaces or not)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def label_of(value: Any) -> str:
    """A value as it appears in a cell name: ``0.01``, ``true``, ``[0, 1]`` -> ``0-1``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "-".join(label_of(v) for v in value)
    return str(value)


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Grid keys by their last part (``client.lr`` -> ``lr``) unless two share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def cell_name(template: str | None, stem: str, point: dict[str, Any], source: Path) -> str:
    """``template`` with ``{stem}`` and ``{<grid key>}`` (dotted or its last part) filled in;
    without a template: the stem, then ``-<key><value>`` per grid key."""
    short = _short_keys(list(point))
    if template is None:
        name = stem + "".join(f"-{short[k]}{label_of(v)}" for k, v in point.items())
    else:
        values = {"stem": stem}
        for key, value in point.items():
            values[key] = values[short[key]] = label_of(value)

        def fill(match: re.Match) -> str:
            if match.group(1) not in values:
                raise SweepError(
                    f"{source}: name: {{{match.group(1)}}} is neither {{stem}} nor a grid key"
                )
            return values[match.group(1)]

        name = re.sub(r"\{([^{}]+)\}", fill, template)
    if not name or "/" in name or name in (".", ".."):
        raise SweepError(f"{source}: name: {name!r} cannot be a directory name")
    return name


def experiment_files(patterns: list[str], source: Path, key: str) -> list[Path]:
    """Files matching the globs (relative to the sweep file), the sweep file itself left out."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.join(glob.escape(str(source.parent)), pattern)))
        matches = [Path(os.path.normpath(m)) for m in matches]
        matches = [m for m in matches if m.is_file() and m.resolve() != source.resolve()]
        if not matches:
            raise SweepError(f"{source}: {key}: {pattern!r} matches no file")
        files += [m for m in matches if m not in files]
    return files


def _cells(group: Group, source: Path, key: str) -> list[tuple[str, Path, dict[str, Any]]]:
    keys = list(group.grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*group.grid.values())]
    return [
        (cell_name(group.name, path.stem, point, source), path, {**group.set, **point})
        for path in experiment_files(group.experiments, source, key)
        for point in points
    ]


def expand(
    source: Path,
    *,
    out: Path | None = None,
    seeds: list[int] | None = None,
    overrides: Iterable[str] = (),
    only: Iterable[str] = (),
    max_cells: int = MAX_CELLS,
) -> Sweep:
    """The sweep file as planned runs; ``out``, ``seeds``, ``overrides`` (``--set``, applied
    last), ``only`` (globs over cell names) and ``max_cells`` (the cap on cells, checked
    before the grid is built) come from the command line."""
    source = Path(source)
    spec = read_sweep(source)
    try:
        extra = parse_overrides(list(overrides))
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    for key in RESERVED:
        if key in extra:
            raise SweepError(f"--set {key}: seeds come from the sweep file's `seeds` (or --seeds)")
    root = Path(out) if out is not None else Path(os.path.normpath(source.parent / spec.out))
    above = next((p for p in (root, *root.parents) if p.exists()), None)
    if above is not None and not above.is_dir():
        raise SweepError(f"--out {root}: {above} is a file, not a folder for the runs")
    sweep = Sweep(source, root, spec.layout, list(seeds or spec.seeds))
    repeated = sorted({s for s in sweep.seeds if sweep.seeds.count(s) > 1})
    if repeated:
        raise SweepError(f"--seeds: seed {repeated[0]} is given twice (each seed runs once)")
    count = count_cells(spec, source)
    if count > max_cells:
        raise SweepError(
            f"{source}: {count:,} cells x {len(sweep.seeds)} seeds is more than --max-cells "
            f"{max_cells:,}; shrink the grid, or raise the cap with --max-cells {count}"
        )

    cells: dict[str, tuple[Path, dict[str, Any]]] = {}
    for i, group in enumerate(spec.groups()):
        j = i - 1 if spec.experiments else i
        key = "experiments" if j < 0 else f"group.{j}.experiments"
        for name, path, sets in _cells(group, source, key):
            if name in cells:
                raise SweepError(
                    f"{source}: name: two runs would share the cell {name!r} "
                    "(put the grid keys in `name`)"
                )
            cells[name] = (path, sets)
    patterns = list(only)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in cells):
            raise SweepError(f"--only {pattern!r}: matches no cell of {source}")
    chosen = [n for n in cells if not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    for name in chosen:
        path, sets = cells[name]
        if "run.name" not in {**sets, **extra} and not re.match(RUN_NAME, name):
            raise SweepError(
                f"{source}: cell {name!r} (of {path.name}) cannot name its runs "
                "(run.name: letters, digits, spaces and . _ + = -); set `name` in the sweep "
                'file, e.g. name = "lora-{stem}"'
            )
    for seed in sweep.seeds:
        for name in chosen:
            path, sets = cells[name]
            values = {**sets, **extra, "run.seed": seed}
            values.setdefault("run.name", name)
            label = spec.layout.format(cell=name, seed=seed)
            sweep.runs.append(PlannedRun(name, seed, path, values, root / label, label))
    _refuse_shared_folders(sweep)
    return sweep


def count_cells(spec: SweepFile, source: Path) -> int:
    """How many cells the sweep file makes, computed without building the grid."""
    total = 0
    for i, group in enumerate(spec.groups()):
        j = i - 1 if spec.experiments else i
        key = "experiments" if j < 0 else f"group.{j}.experiments"
        points = math.prod(len(values) for values in group.grid.values())
        total += len(experiment_files(group.experiments, source, key)) * points
    return total


def _refuse_shared_folders(sweep: Sweep) -> None:
    """Two planned runs must never write one folder (a ``layout`` such as ``{cell}{seed}``
    can map cell ``x1`` seed 0 and cell ``x`` seed 10 to the same ``x10``)."""
    seen: dict[str, PlannedRun] = {}
    for run in sweep.runs:
        key = os.path.normcase(os.path.normpath(str(run.run_dir)))
        if key in seen:
            first = seen[key]
            raise SweepError(
                f"{sweep.source}: layout: cell {first.cell!r} seed {first.seed} and cell "
                f"{run.cell!r} seed {run.seed} would share {run.run_dir}; separate {{cell}} "
                'and {seed} in the layout (e.g. "{cell}/seed{seed}")'
            )
        seen[key] = run


def load_sweep(path: str | Path, **kwargs: Any) -> Sweep:
    """Read, check and expand a sweep file (see ``expand`` for the keyword arguments)."""
    return expand(Path(path), **kwargs)
