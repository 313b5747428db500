"""Results that travel with the repo: each experiment whose compact runs are committed under
``experiments/<name>/results/`` regenerates its README's results block byte for byte from them
(``report.block``), without running anything."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WITH_RESULTS = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/results"))


def _report(name: str):
    path = ROOT / "experiments" / name / "report.py"
    spec = importlib.util.spec_from_file_location(f"report_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a report's dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_experiments_with_committed_results():
    assert {"baselines", "curriculum", "robustness"} <= set(WITH_RESULTS)


@pytest.mark.parametrize("name", WITH_RESULTS)
def test_the_readme_block_is_what_the_committed_results_give(name):
    report = _report(name)
    readme = (ROOT / "experiments" / name / "README.md").read_text(encoding="utf-8")
    committed = readme.split(report.START, 1)[1].split(report.END, 1)[0]
    assert committed == "\n" + report.block(report.RESULTS) + "\n"


@pytest.mark.parametrize("name", WITH_RESULTS)
def test_committed_results_are_compact(name):
    from fedsim.results.compact import KEPT
    from fedsim.results.status import run_status

    results = ROOT / "experiments" / name / "results"
    runs = sorted(config.parent for config in results.rglob("config.toml"))  # any sweep layout
    assert runs
    leftovers = {p for p in results.rglob("*") if p.is_file()} - {
        f for run in runs for f in run.iterdir()
    }
    # outside the runs only measurement tables (e.g. distillation's convergence curves)
    assert all(p.suffix == ".csv" and p.stat().st_size < 200_000 for p in leftovers), leftovers
    for run in runs:
        assert run_status(run) == "completed", run
        for path in run.iterdir():
            assert path.name in KEPT or path.suffix == ".csv", path
            # 1 MB: the client curriculum's scoring exchange puts all 100 clients in every
            # round of comm.csv (~0.7 MB for 100 rounds); anything larger is not compact
            assert path.stat().st_size < 1_000_000, path
