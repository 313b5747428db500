"""One code path, two backends: Ray gives the in-process results byte for byte, for a run that
uses every mechanism the backends carry: seeded sampling, a second exchange per round (the
client curriculum's scoring), clients' Context.state across rounds (local-model scoring)."""

from __future__ import annotations

import pytest

from fedsim.config import load_experiment
from fedsim.runner import run_experiment


@pytest.mark.slow
def test_ray_matches_inprocess_byte_for_byte(tiny_toml, tmp_path):
    overrides = [
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
    local, _ = run_experiment(load_experiment(tiny_toml, overrides), tmp_path / "inprocess")
    ray_exp = load_experiment(tiny_toml, [*overrides, "run.backend='ray'", "clients.num_cpus=1"])
    remote, summary = run_experiment(ray_exp, tmp_path / "ray")
    assert summary["backend"] == "ray" and summary["status"] == "completed"
    assert summary["client_failures"] == 0
    assert "curriculum-score" in (remote / "comm.csv").read_text()
    # Torch threads are pinned to clients.num_cpus in every client call and the server
    # evaluator, on both backends, so every sum reduces in the same order.
    assert (local / "metrics.jsonl").read_bytes() == (remote / "metrics.jsonl").read_bytes()
    assert (local / "comm.csv").read_bytes() == (remote / "comm.csv").read_bytes()
