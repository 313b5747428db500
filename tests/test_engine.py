"""The engine on real MNIST: learning, bitwise determinism, traffic accounting, failures."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import RepliesSeen

import fedsim_methods.clients.supervised as supervised
from fedsim.config import load_experiment
from fedsim.errors import UsageError
from fedsim.runner import RunError, run_experiment
from fedsim_methods.strategies.supervised import initial_arrays


def _run(toml: Path, out: Path, *overrides: str) -> tuple[Path, dict]:
    return run_experiment(load_experiment(toml, list(overrides)), out)


def _rows(run_dir: Path, scope: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["scope"] == scope]


def test_fedavg_learns_mnist(fedavg_run):
    run_dir = fedavg_run
    summary = json.loads((run_dir / "summary.json").read_text())
    evals = _rows(run_dir, "server-eval")
    assert [r["round"] for r in evals] == [0, 1, 2, 3]
    assert evals[0]["accuracy"] < 0.2  # an untrained 10-class model is near chance
    assert evals[-1]["accuracy"] > 0.6  # far above chance (0.1) after 3 short rounds
    assert evals[-1]["loss"] < evals[0]["loss"]
    assert summary["status"] == "completed"
    for name in ("config.toml", "metrics.jsonl", "comm.csv", "summary.json", "log.txt"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "plots" / "metrics.png").stat().st_size > 1000
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [
        "round-000002.ckpt",
        "round-000003.ckpt",
    ]  # the newest checkpoint and the previous good one


def test_same_seed_gives_bitwise_identical_metrics(fedavg_run, tiny_toml, tmp_path):
    a = fedavg_run
    b, _ = _run(tiny_toml, tmp_path / "b")
    c, _ = _run(tiny_toml, tmp_path / "c", "run.rounds=1", "run.seed=1")
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    assert (a / "comm.csv").read_bytes() == (b / "comm.csv").read_bytes()
    first_round = [line for line in (a / "metrics.jsonl").read_text().splitlines()][:3]
    assert (c / "metrics.jsonl").read_text().splitlines()[1:3] != first_round[1:3]


def test_comm_csv_counts_the_arrays_sent(fedavg_run, tiny_toml):
    run_dir = fedavg_run
    exp = load_experiment(tiny_toml)
    arrays = initial_arrays(exp)
    wire_bytes = sum(len(a.data) for a in arrays.values())  # serialised payload
    raw_bytes = sum(a.numpy().nbytes for a in arrays.values())  # the float32 values
    with open(run_dir / "comm.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * exp.clients.per_round  # rounds x (down, up) x clients
    assert {int(r["bytes"]) for r in rows} == {wire_bytes}
    assert 0 < wire_bytes - raw_bytes <= 128 * len(arrays)  # only a .npy header per array
    per_round = {(r["round"], r["direction"]) for r in rows}
    assert per_round == {(r, d) for r in "123" for d in ("down", "up")}


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


def test_lenet5_learns_fashion_mnist(tiny_toml, tmp_path):
    """The curricula paper's second setting: LeNet-5 on the Fashion-MNIST asset."""
    run_dir, _ = _run(
        tiny_toml,
        tmp_path / "fmnist",
        "data.dataset='fashion_mnist'",
        "model.name='lenet5'",
        "data.partitioner='iid'",
        "client.local_epochs=2",
        "run.rounds=2",
    )
    evals = _rows(run_dir, "server-eval")
    assert evals[0]["accuracy"] < 0.2 and evals[-1]["accuracy"] > 0.3  # chance: 0.1
    assert evals[-1]["loss"] < evals[0]["loss"]


def test_existing_run_dir_is_refused_before_anything_runs(tiny_toml, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"round": 0}\n')
    with pytest.raises(UsageError, match="fedsim resume"):
        _run(tiny_toml, run_dir, "run.rounds=1")
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl"]
    assert (run_dir / "metrics.jsonl").read_text() == '{"round": 0}\n'


def test_client_evaluation_and_tensorboard(tiny_toml, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = _run(
        tiny_toml, tmp_path / "run", "run.rounds=1", "strategy.fraction_evaluate=0.5",
        "run.tensorboard=true",
    )  # fmt: skip
    (client,) = _rows(run_dir, "client-eval")
    (_, server) = _rows(run_dir, "server-eval")
    # 5 clients score the trained model on their own data: above chance (0.1), as the test set
    assert client["eval_accuracy"] > 0.15 and client["failures"] == 0
    assert abs(client["eval_accuracy"] - server["accuracy"]) < 0.25
    with open(run_dir / "comm.csv") as f:
        evaluate = [r for r in csv.DictReader(f) if r["stage"] == "evaluate"]
    assert len({r["partition_id"] for r in evaluate}) == 5
    assert {int(r["bytes"]) for r in evaluate if r["direction"] == "up"} == {0}  # metrics only
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/train_loss", "server-eval/accuracy", "client-eval/eval_accuracy"} <= tags
    assert events.Scalars("server-eval/accuracy")[-1].value == pytest.approx(server["accuracy"])


def test_each_reply_is_reported_as_it_arrives(tiny_toml, tmp_path):
    seen = RepliesSeen()
    exp = load_experiment(tiny_toml, ["run.rounds=1", "strategy.fraction_evaluate=0.5"])
    run_experiment(exp, tmp_path / "run", callbacks=[seen])
    train = [(1, "train", n, 4) for n in range(1, 5)]
    evaluate = [(1, "evaluate", n, 5) for n in range(1, 6)]
    assert seen.seen == train + evaluate


def _lazy_reply(msg, seconds: float):
    """A client that sleeps, then sends the model back untrained: timing without training."""
    from flwr.app import Message, MetricRecord, RecordDict

    time.sleep(seconds)
    metrics = MetricRecord({"train_loss": 1.0, "num-examples": 10})
    return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg)


def test_a_slow_client_times_out_on_its_own_clock(tiny_toml, tmp_path, monkeypatch):
    def slow_for_one(msg, context, exp):
        return _lazy_reply(msg, 1.0 if int(context.node_config["partition-id"]) == 3 else 0.0)

    monkeypatch.setattr(supervised, "train", slow_for_one)
    run_dir, _ = _run(
        tiny_toml, tmp_path / "run", "run.rounds=1", "clients.per_round=10", "client.timeout=0.5"
    )
    (train,) = _rows(run_dir, "train")
    assert (train["clients"], train["failures"]) == (9, 1)
    assert "client 3 left out of train: timed out" in (run_dir / "log.txt").read_text()


def test_an_exchange_deadline_leaves_the_rest_out(tiny_toml, tmp_path, monkeypatch):
    monkeypatch.setattr(supervised, "train", lambda msg, context, exp: _lazy_reply(msg, 1.0))
    run_dir, _ = _run(tiny_toml, tmp_path / "run", "run.rounds=1", "run.exchange_timeout=1.5")
    (train,) = _rows(run_dir, "train")
    # in-process calls run one after another: the first two start before the deadline
    assert (train["clients"], train["failures"]) == (2, 2)
    assert "no reply before the deadline" in (run_dir / "log.txt").read_text()
