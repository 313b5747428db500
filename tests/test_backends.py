"""One code path, three backends: fedsim's Ray workers and Flower's simulation engine give the
in-process results byte for byte, for a run that uses every mechanism the backends carry:
seeded sampling, a second exchange per round (the client curriculum's scoring), and clients'
Context.state across rounds (local-model scoring)."""

from __future__ import annotations

import pytest

from fedsim.config import load_experiment
from fedsim.runner import run_experiment

# Ray clusters and local SuperLinks (fixed ports) run one at a time under pytest-xdist.
pytestmark = pytest.mark.xdist_group("ray")

OVERRIDES = [
    "run.rounds=2",
    "clients.num=6",
    "clients.per_round=3",
    "data.max_train_samples=3000",
    "method='curriculum'",
    "client.lr=0.01",
    "curriculum.scoring='both'",
    "curriculum.client_curriculum=true",
    "curriculum.client_b=0.5",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process run both other backends must reproduce."""
    from conftest import TINY

    root = tmp_path_factory.mktemp("backends")
    (root / "tiny.toml").write_text(TINY)
    run_dir, _ = run_experiment(load_experiment(root / "tiny.toml", OVERRIDES), root / "run")
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ray", "flower-simulation"])
def test_backend_gives_the_inprocess_bytes(tiny_toml, tmp_path, backend, reference):
    exp = load_experiment(tiny_toml, [*OVERRIDES, f"run.backend='{backend}'"])
    remote, summary = run_experiment(exp, tmp_path / backend)
    assert summary["backend"] == backend and summary["status"] == "completed"
    assert summary["client_failures"] == 0
    assert "curriculum-score" in (remote / "comm.csv").read_text()
    # Torch threads are pinned to clients.num_cpus in every client call and the server
    # evaluator, on every backend, so every sum reduces in the same order.
    assert (reference / "metrics.jsonl").read_bytes() == (remote / "metrics.jsonl").read_bytes()
    assert (reference / "comm.csv").read_bytes() == (remote / "comm.csv").read_bytes()
