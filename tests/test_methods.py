"""SCAFFOLD and FedAvgM, added through the method contract: they learn, and a run that
crashed resumes to the same bytes (SCAFFOLD's client control variates included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import CrashAfter

from fedsim.checkpoint import load_checkpoint
from fedsim.config import load_experiment
from fedsim.federation.context import FederationError
from fedsim.resume import ResumeRefused
from fedsim.runner import RunError, resume_run, run_experiment

SMALL = ["clients.per_round=5", "data.max_train_samples=3000"]
METHODS = {
    "scaffold": ["method='scaffold'", "client.momentum=0", "client.lr=0.1"],
    "fedavgm": ["method='fedavgm'", "fedavgm.server_momentum=0.5"],
}


def _rows(run_dir: Path, scope: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["scope"] == scope]


def test_scaffold_learns_and_resumes_as_if_never_stopped(tiny_toml, tmp_path):
    exp = load_experiment(tiny_toml, [*METHODS["scaffold"], "run.rounds=3", *SMALL])
    reference, _ = run_experiment(exp, tmp_path / "reference")
    evals = _rows(reference, "server-eval")
    assert evals[-1]["loss"] < evals[0]["loss"] and evals[-1]["accuracy"] > 0.3

    crashed = tmp_path / "crashed"
    with pytest.raises(RunError, match="simulated crash"):
        run_experiment(exp, crashed, callbacks=[CrashAfter(2)])
    resume_run(crashed)  # the clients' control variates come back from the checkpoint
    for name in ("metrics.jsonl", "comm.csv"):
        assert (crashed / name).read_bytes() == (reference / name).read_bytes()


def test_fedavgm_learns(tiny_toml, tmp_path):
    """Its server momentum continuing across a resume: test_strategies.py (state reload)."""
    exp = load_experiment(tiny_toml, [*METHODS["fedavgm"], "run.rounds=3", *SMALL])
    run_dir, _ = run_experiment(exp, tmp_path / "run")
    evals = _rows(run_dir, "server-eval")
    assert evals[-1]["loss"] < evals[0]["loss"] and evals[-1]["accuracy"] > 0.3


def test_scaffold_sends_model_and_control_both_ways(tiny_toml, tmp_path, fedavg_run):
    exp = load_experiment(tiny_toml, [*METHODS["scaffold"], "run.rounds=1"])
    a, _ = run_experiment(exp, tmp_path / "scaffold")

    def first_round(run_dir):
        rows = (run_dir / "comm.csv").read_text().split()[1:]
        return [(r.split(",")[2:4], int(r.split(",")[-1])) for r in rows if r.startswith("1,")]

    scaffold, fedavg = first_round(a), first_round(fedavg_run)  # the same clients, sampled alike
    assert [who for who, _ in scaffold] == [who for who, _ in fedavg]
    assert [n for _, n in scaffold] == [2 * n for _, n in fedavg]  # c with x down, dc with y up


def test_a_stateful_method_does_not_resume_where_client_state_is_out_of_reach(tiny_toml, tmp_path):
    from fedsim.backends.inprocess import InProcessGrid
    from fedsim.client_app import client_app
    from fedsim.federation.loop import run_federation

    exp = load_experiment(tiny_toml, [*METHODS["scaffold"], "run.rounds=3"])
    crashed = tmp_path / "crashed"
    with pytest.raises(RunError):
        run_experiment(exp, crashed, callbacks=[CrashAfter(1)])
    grid = InProcessGrid(client_app, exp.clients.num, exp.run.seed)
    ckpt = load_checkpoint(crashed)
    with pytest.raises(FederationError, match="keeps client state"):  # the loop's own guard
        run_federation(grid, exp, crashed, checkpoint=ckpt, client_states=None)
    flower = (crashed / "config.toml").read_text().replace('"inprocess"', '"flower-simulation"')
    (crashed / "config.toml").write_text(flower)
    with pytest.raises(ResumeRefused, match="'flower-simulation' cannot restore"):  # no Ray yet
        resume_run(crashed)


def test_scaffold_refuses_momentum(tiny_toml):
    from fedsim.config import ConfigError

    with pytest.raises(ConfigError, match="client.optimizer: SCAFFOLD's control update"):
        load_experiment(tiny_toml, ["method='scaffold'"])  # tiny.toml has momentum 0.9
