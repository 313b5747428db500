"""Robust aggregation (``strategy.aggregator``): Flower's Krum, MultiKrum, Bulyan, FedMedian and
FedTrimmedAvg keep learning on MNIST while one client poisons every round, where the mean is
wrecked; they compose with FedProx's messages and FedAdam's server step; impossible settings
are refused naming the key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, Krum
from helpers import stub_context

import fedsim_methods.clients.supervised as supervised
from fedsim.config import load_experiment
from fedsim.config.load import ConfigError
from fedsim.federation.strategy import strategy_state
from fedsim.runner import run_experiment
from fedsim.seeding import seeded_python_random
from fedsim_methods.strategies.baselines import build_strategy

# Seven IID clients, all of them every round, one of which (partition 0) is malicious.
POISONED = [
    "data.partitioner='iid'",
    "clients.num=7",
    "clients.per_round=7",
    "run.rounds=2",
    "run.checkpoint_every=0",
]
SETTINGS = {
    "krum": ["strategy.num_malicious_nodes=1"],
    "multikrum": ["strategy.num_malicious_nodes=1"],
    "bulyan": ["strategy.num_malicious_nodes=1"],
    "median": [],
    "trimmed-mean": ["strategy.trim_beta=0.15"],  # one model cut from each tail of seven
}


def _poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """Partition 0 answers the global model plus large (finite) noise."""
    honest = supervised.train

    def train(msg, context, exp):
        pid = int(context.node_config["partition-id"])
        if pid != 0:
            return honest(msg, context, exp)
        rng = np.random.default_rng(int(msg.content["config"]["server-round"]))
        arrays = {
            k: Array((a.numpy() + 5.0 * rng.standard_normal(a.shape)).astype(a.numpy().dtype))
            for k, a in msg.content["arrays"].items()
        }
        metrics = MetricRecord({"train_loss": 0.0, "num-examples": 1000})
        return Message(
            RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg
        )

    monkeypatch.setattr(supervised, "train", train)


def _final_accuracy(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["scope"] == "server-eval"][-1]["accuracy"]


@pytest.mark.parametrize("aggregator", list(SETTINGS))
def test_robust_aggregators_learn_despite_a_poisoned_client(
    tiny_toml, tmp_path, monkeypatch, aggregator
):
    _poison(monkeypatch)
    overrides = [*POISONED, f"strategy.aggregator='{aggregator}'", *SETTINGS[aggregator]]
    run_dir, summary = run_experiment(load_experiment(tiny_toml, overrides), tmp_path / "run")
    assert summary["status"] == "completed"
    assert _final_accuracy(run_dir) > 0.75  # as if the attacker were not there (mean: 0.1)


def test_the_mean_is_wrecked_by_the_same_client(tiny_toml, tmp_path, monkeypatch):
    _poison(monkeypatch)
    run_dir, _ = run_experiment(load_experiment(tiny_toml, POISONED), tmp_path / "run")
    assert _final_accuracy(run_dir) < 0.3


# -- composition with the method's strategy ------------------------------------------------------


def _arrays(seed: int, scale: float = 1.0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    shapes = {"w": (3, 2), "b": (2,)}
    return ArrayRecord(
        {k: Array((scale * rng.standard_normal(s)).astype(np.float32)) for k, s in shapes.items()}
    )


def _reply(pid: int, msg: Message) -> Message:
    arrays = _arrays(100 + pid, scale=1000.0 if pid == 0 else 0.1)  # partition 0: poison
    metrics = MetricRecord({"train_loss": float(pid), "num-examples": 10})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def _round(strategy, num: int) -> tuple[list[Message], ArrayRecord]:
    ctx = stub_context(num, _reply)
    ctx.begin_round(1)
    with seeded_python_random(1):
        messages = list(strategy.configure_train(1, _arrays(0), ConfigRecord({}), ctx.grid))
    new, _ = strategy.aggregate_train(1, ctx.exchange(messages))
    return messages, new


def test_krum_composes_with_fedprox_messages(tiny_toml, caplog):
    exp = load_experiment(
        tiny_toml,
        [
            "method='fedprox'",
            "strategy.aggregator='krum'",
            "clients.per_round=10",
            "strategy.num_malicious_nodes=1",
        ],
    )
    strategy = build_strategy(exp)
    assert isinstance(strategy, Krum) and type(strategy).__name__ == "FedProx+Krum"
    messages, new = _round(strategy, exp.clients.num)
    assert all(m.content["config"]["proximal-mu"] == 0.01 for m in messages)  # FedProx's
    honest = [{k: a.numpy() for k, a in _arrays(100 + p, 0.1).items()} for p in range(1, 10)]
    chosen = {k: a.numpy() for k, a in new.items()}
    assert any(all(np.array_equal(chosen[k], h[k]) for k in h) for h in honest)  # one honest model
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        assert len(strategy_state(strategy)) == 0  # stateless, and known to be
    assert "has no state_dict" not in caplog.text


def test_fedadam_steps_on_the_median_not_the_mean(tiny_toml):
    overrides = ["method='fedadam'", "clients.per_round=10"]
    robust = build_strategy(
        load_experiment(tiny_toml, [*overrides, "strategy.aggregator='median'"])
    )
    assert isinstance(robust, FedAdam) and type(robust).__name__ == "FedAdam+FedMedian"
    _, new = _round(robust, 10)
    assert len(strategy_state(robust)["m_t"]) == 2  # FedAdam's moments are checkpointed

    # the same Adam step taken by plain FedAdam on replies that all carry the median
    median = {
        k: np.median(
            [_arrays(100 + p, 1000.0 if p == 0 else 0.1)[k].numpy() for p in range(10)], axis=0
        )
        for k in ("w", "b")
    }
    plain = build_strategy(load_experiment(tiny_toml, overrides))

    def same(pid, msg):
        arrays = ArrayRecord({k: Array(v) for k, v in median.items()})
        metrics = MetricRecord({"train_loss": float(pid), "num-examples": 10})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    ctx = stub_context(10, same)
    ctx.begin_round(1)
    with seeded_python_random(1):
        messages = list(plain.configure_train(1, _arrays(0), ConfigRecord({}), ctx.grid))
    expected, _ = plain.aggregate_train(1, ctx.exchange(messages))
    for key in ("w", "b"):
        np.testing.assert_allclose(new[key].numpy(), expected[key].numpy(), rtol=1e-5)
        assert np.abs(new[key].numpy()).max() < 10  # the poison (scale 1000) did not get in


# -- configs that cannot work ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (
            ["strategy.aggregator='krum'", "strategy.num_malicious_nodes=1"],
            "strategy.num_malicious_nodes",
            "n >= 2f + 3",
        ),
        (
            [
                "strategy.aggregator='bulyan'",
                "strategy.num_malicious_nodes=1",
                "clients.per_round=6",
            ],
            "strategy.num_malicious_nodes",
            ">= 4f + 3",
        ),
        (
            [
                "strategy.aggregator='multikrum'",
                "strategy.num_malicious_nodes=1",
                "clients.per_round=5",
                "strategy.num_nodes_to_select=5",
            ],
            "strategy.num_nodes_to_select",
            "at most",
        ),
        (
            ["strategy.aggregator='trimmed-mean'", "strategy.trim_beta=0.1"],
            "strategy.trim_beta",
            "trims no model",
        ),
        (
            ["strategy.aggregator='trimmed-mean'", "strategy.trim_beta=0.5"],
            "strategy.trim_beta",
            "less than 0.5",
        ),
        (
            ["strategy.aggregator='median'", "strategy.num_malicious_nodes=1"],
            "strategy.num_malicious_nodes",
            "only krum",
        ),
        (["strategy.num_nodes_to_select=2"], "strategy.num_nodes_to_select", "only multikrum"),
        (["strategy.aggregator='geomedian'"], "strategy.aggregator", "krum"),
        (
            ["method='scaffold'", "client.momentum=0", "strategy.aggregator='median'"],
            "strategy.aggregator",
            "'scaffold' combines",
        ),
    ],
)
def test_bad_aggregator_configs_name_the_key(tiny_toml, overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_experiment(tiny_toml, overrides)
    message = str(info.value)
    assert key in message and words in message, message
