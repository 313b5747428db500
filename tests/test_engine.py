"""The engine on real MNIST: learning, bitwise determinism, traffic accounting, failures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import clients.supervised as supervised
from fedsim.config import load_experiment
from fedsim.runner import RunError, run_experiment


def _run(toml: Path, out: Path, *overrides: str) -> tuple[Path, dict]:
    return run_experiment(load_experiment(toml, list(overrides)), out)


def _rows(run_dir: Path, scope: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["scope"] == scope]


def test_fedavg_learns_mnist(tiny_toml, tmp_path):
    run_dir, summary = _run(tiny_toml, tmp_path / "run")
    evals = _rows(run_dir, "server-eval")
    assert [r["round"] for r in evals] == [0, 1, 2, 3]
    assert evals[0]["accuracy"] < 0.2  # an untrained 10-class model is near chance
    assert evals[-1]["accuracy"] > 0.6  # far above chance (0.1) after 3 short rounds
    assert evals[-1]["loss"] < evals[0]["loss"]
    assert summary["status"] == "completed"
    for name in ("config.toml", "metrics.jsonl", "comm.csv", "summary.json", "log.txt"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "plots" / "metrics.png").stat().st_size > 1000
    assert (run_dir / "checkpoints" / "latest.pkl").is_file()


def test_same_seed_gives_bitwise_identical_metrics(tiny_toml, tmp_path):
    a, _ = _run(tiny_toml, tmp_path / "a", "run.rounds=2")
    b, _ = _run(tiny_toml, tmp_path / "b", "run.rounds=2")
    c, _ = _run(tiny_toml, tmp_path / "c", "run.rounds=2", "run.seed=1")
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    assert (a / "comm.csv").read_bytes() == (b / "comm.csv").read_bytes()
    assert (a / "metrics.jsonl").read_bytes() != (c / "metrics.jsonl").read_bytes()


def test_comm_csv_counts_the_arrays_sent(tiny_toml, tmp_path):
    run_dir, _ = _run(tiny_toml, tmp_path / "run", "run.rounds=2")
    exp = load_experiment(tiny_toml)
    arrays = supervised.initial_arrays(exp)
    wire_bytes = sum(len(a.data) for a in arrays.values())  # serialised payload
    raw_bytes = sum(a.numpy().nbytes for a in arrays.values())  # the float32 values
    with open(run_dir / "comm.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * exp.clients.per_round  # rounds x (down, up) x clients
    assert {int(r["bytes"]) for r in rows} == {wire_bytes}
    assert 0 < wire_bytes - raw_bytes <= 128 * len(arrays)  # only a .npy header per array
    per_round = {(r["round"], r["direction"]) for r in rows}
    assert per_round == {("1", "down"), ("1", "up"), ("2", "down"), ("2", "up")}


def test_failing_and_nan_clients_are_left_out(tiny_toml, tmp_path, monkeypatch):
    original = supervised.train

    def flaky(msg, context, exp):
        pid = int(context.node_config["partition-id"])
        if pid % 3 == 0:
            raise RuntimeError("disk on fire")
        reply = original(msg, context, exp)
        if pid % 3 == 1:
            arrays = reply.content["arrays"]
            key = next(iter(arrays.keys()))
            bad = arrays[key].numpy().copy()
            bad.flat[0] = np.nan
            from flwr.app import Array

            arrays[key] = Array(bad)
        return reply

    monkeypatch.setattr(supervised, "train", flaky)
    run_dir, summary = _run(tiny_toml, tmp_path / "run", "run.rounds=2", "clients.per_round=6")
    train = _rows(run_dir, "train")
    assert all(r["failures"] > 0 for r in train)
    assert all(r["clients"] + r["failures"] == 6 for r in train)
    assert summary["client_failures"] == sum(r["failures"] for r in train)
    log = (run_dir / "log.txt").read_text()
    assert "disk on fire" in log and "NaN" in log
    assert _rows(run_dir, "server-eval")[-1]["accuracy"] > 0.5  # the healthy clients still learn


def test_a_run_where_every_client_fails_exits_with_error(tiny_toml, tmp_path, monkeypatch):
    def broken(msg, context, exp):
        raise RuntimeError("no data")

    monkeypatch.setattr(supervised, "train", broken)
    with pytest.raises(RunError, match="every client failed"):
        _run(tiny_toml, tmp_path / "run", "run.rounds=1")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"


@pytest.mark.parametrize("method", ["fedprox", "fedadam", "fedyogi"])
def test_baseline_strategies_run_and_learn(tiny_toml, tmp_path, method):
    run_dir, _ = _run(tiny_toml, tmp_path / method, f"method='{method}'", "run.rounds=2")
    assert _rows(run_dir, "server-eval")[-1]["accuracy"] > 0.3


def test_existing_run_dir_is_not_overwritten(tiny_toml, tmp_path):
    run_dir, _ = _run(tiny_toml, tmp_path / "run", "run.rounds=1")
    before = (run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(RunError, match="fedsim resume"):
        _run(tiny_toml, run_dir, "run.rounds=1")
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def test_client_side_evaluation_is_aggregated(tiny_toml, tmp_path):
    run_dir, _ = _run(tiny_toml, tmp_path / "run", "run.rounds=1", "strategy.fraction_evaluate=0.5")
    rows = _rows(run_dir, "client-eval")
    assert len(rows) == 1 and 0 <= rows[0]["eval_accuracy"] <= 1


def test_tensorboard_writer(tiny_toml, tmp_path):
    run_dir, _ = _run(tiny_toml, tmp_path / "run", "run.rounds=1", "run.tensorboard=true")
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
