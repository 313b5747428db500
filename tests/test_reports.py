"""Results that travel with the repo: each experiment whose compact runs are committed under
``experiments/<name>/results/`` regenerates its README's results block byte for byte from them
(``report.block``), without running anything."""

from __future__ import annotations

import importlib.util
import json
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
    """Every generated block: ``report.blocks`` where a README has several, else the one
    between ``report.START`` and ``report.END``."""
    report = _report(name)
    readme = (ROOT / "experiments" / name / "README.md").read_text(encoding="utf-8")
    if hasattr(report, "blocks"):
        blocks = report.blocks(report.RESULTS)
    else:
        blocks = [(report.START, report.END, report.block(report.RESULTS))]
    for start, end, text in blocks:
        committed = readme.split(start, 1)[1].split(end, 1)[0]
        assert committed == "\n" + text + "\n", start


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


def _finished_run(run_dir: Path, accuracy: float, loss: float = 1.0) -> None:
    """A compact run as a report reads it: its last server-eval accuracy, completed."""
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"round": 1, "scope": "server-eval", "loss": loss, "accuracy": accuracy}) + "\n"
    )
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))


def test_distillation_rows_pair_seeds_against_the_best_baseline_and_check_fedprox_mu(tmp_path):
    report = _report("distillation")
    finals = {  # seed -> accuracy: FedProx has the best mean of the weight-averaging columns
        "mnist-fedavg-b0.1": (0.50, 0.52, 0.54),
        "mnist-fedprox-b0.1": (0.55, 0.50, 0.60),
        "mnist-scaffold-b0.1": (0.40, 0.41, 0.42),
        "mnist-pixel-b0.1": (0.60, 0.58, 0.64),
    }
    for cell, values in finals.items():
        for seed, accuracy in enumerate(values):
            _finished_run(tmp_path / "main" / f"{cell}-seed{seed}", accuracy)
    text = report.grid_block(tmp_path)
    row = next(line for line in text.splitlines() if "MNIST, beta 0.1 | pixel > best of" in line)
    # paired per seed against FedProx: +5, +8, +4 points; all positive, mean 5.7 > std 2.1
    assert "(FedProx)" in row and "s0: +5.0, s1: +8.0, s2: +4.0" in row
    assert row.endswith("| holds |")
    against_feddm = next(
        line for line in text.splitlines() if "MNIST, beta 0.1 | pixel > FedDM" in line
    )
    assert against_feddm.endswith("| pending (n=0) |")

    assert "no committed run" in report.check_mu(tmp_path)
    for ds in report.DATASETS:
        for mu in report.MUS:  # mu 0.01 and 0.1 tie on accuracy; 0.1 has the lower loss
            accuracy = 0.9 if mu in ("0.01", "0.1") else 0.8
            loss = 0.2 if mu == "0.1" else 0.3
            _finished_run(tmp_path / "fedprox-mu" / f"{ds}-fedprox-mu{mu}-seed0", accuracy, loss)
    assert report.chosen_mu(report.mu_scores(tmp_path / "fedprox-mu", "mnist")) == "0.1"
    used = report.files_mu("mnist")
    problem = report.check_mu(tmp_path)
    assert (problem == "") == (used == "0.1" and report.files_mu("cifar10") == "0.1")
    if used != "0.1":
        assert f"uses proximal_mu = {used}, the mu sweep chose 0.1" in problem


def test_a_curve_plateaus_where_its_moving_average_reaches_its_level():
    from fedsim.results.plateau import plateau_from

    # rises 10 points a round to 60 at round 6, then holds: rounds 6-10's average is 60
    rising = [0, 10, 20, 30, 40, 50] + [60] * 15
    assert plateau_from(list(range(21)), rising) == 10
    # round 0 (the untrained model) never enters a window: a flat curve is flat from round 5
    assert plateau_from(list(range(21)), [0] + [50] * 20) == 5
    # still rising a point a round at the end: no 5-round average is within 1 of the level
    assert plateau_from(list(range(31)), list(range(0, 62, 2))) is None
    assert plateau_from(list(range(6)), [50] * 6) is None  # fewer than 10 trained rounds
