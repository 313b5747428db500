"""Results that travel with the repo: each experiment whose compact runs are committed under
``experiments/<name>/results/`` regenerates its README's results block byte for byte from them
(``report.block``), without running anything."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WITH_RESULTS = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/results"))


def _report(name: str):
    path = ROOT / "experiments" / name / "report.py"
    spec = importlib.util.spec_from_file_location(f"report_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_experiments_with_committed_results():
    assert {"baselines", "robustness"} <= set(WITH_RESULTS)


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

    runs = [p for p in (ROOT / "experiments" / name / "results").iterdir() if p.is_dir()]
    assert runs
    for run in runs:
        assert run_status(run) == "completed", run
        for path in run.iterdir():
            assert path.name in KEPT or path.suffix == ".csv", path
            assert path.stat().st_size < 200_000, path
