"""Central differential privacy (``[privacy]``): clipping bounds every update, the noise is
seeded (same config and seed, same bytes; resumed runs too), and ``dp-epsilon`` is what
dp-accounting's RDP accountant says."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import CrashAfter, stub_context

import fedsim_methods.clients.supervised as supervised
from fedsim.config import load_experiment
from fedsim.config.load import ConfigError
from fedsim.privacy import server as dp_server
from fedsim.privacy.accountant import ORDERS
from fedsim.runner import RunError, resume_run, run_experiment
from fedsim.seeding import derive_seed
from fedsim_methods.strategies.baselines import build_strategy
from fedsim_methods.strategies.supervised import initial_arrays

SMALL = ["data.max_train_samples=2000", "eval.max_samples=500", "run.rounds=2"]
CLIP = 0.3  # below every local update's norm on SMALL (0.4 .. 1)
FIXED = [
    "privacy.mode='server-fixed'",
    "privacy.noise_multiplier=0.8",
    f"privacy.clipping_norm={CLIP}",
]
ADAPTIVE = [
    "privacy.mode='server-adaptive'",
    "privacy.noise_multiplier=0.8",
    "privacy.clipped_count_stddev=1.0",
    "privacy.clipping_norm=0.2",
]


def _rows(run_dir: Path, scope: str) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["scope"] == scope]


def _flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays.values()])


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


# -- clipping ----------------------------------------------------------------------------------


def test_server_clipping_bounds_every_update_and_noise_is_seeded(tiny_toml):
    """The aggregate is exactly current + mean(clipped updates) + the seeded Gaussian noise of
    std noise_multiplier * C / per_round; each update's norm is at most C afterwards."""
    exp = load_experiment(tiny_toml, FIXED)
    clip, per_round = CLIP, exp.clients.per_round
    rng = np.random.default_rng(0)
    current = {"w": rng.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)}
    scales = {p: 0.02 * 3**p for p in range(exp.clients.num)}  # update norms ~0.05 .. ~1000
    raw: dict[int, dict[str, np.ndarray]] = {}

    def respond(pid, msg):
        update = {
            k: (scales[pid] * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in current.items()
        }
        raw[pid] = update
        arrays = ArrayRecord({k: Array(current[k] + u) for k, u in update.items()})
        metrics = MetricRecord({"train_loss": 1.0, "num-examples": 10 + pid})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    strategy = build_strategy(exp)
    assert isinstance(strategy, dp_server.ServerFixed)
    ctx = stub_context(exp.clients.num, respond)
    strategy.bind(ctx)
    ctx.begin_round(1)
    sent = ArrayRecord({k: Array(v) for k, v in current.items()})
    replies = ctx.exchange(list(strategy.configure_train(1, sent, ConfigRecord({}), ctx.grid)))
    new, metrics = strategy.aggregate_train(1, replies)

    clipped = []
    for reply in replies:  # Flower's wrapper replaced each reply's arrays by the clipped ones
        pid = ctx.partition_of(reply.metadata.src_node_id)
        update = {k: v - current[k] for k, v in _numpy(reply.content["arrays"]).items()}
        norm, raw_norm = np.linalg.norm(_flat(update)), np.linalg.norm(_flat(raw[pid]))
        assert norm <= clip * (1 + 1e-5)
        assert norm == pytest.approx(min(raw_norm, clip), rel=1e-4)  # scaled, not cut
        clipped.append(update)
    assert max(np.linalg.norm(_flat(u)) for u in raw.values()) > clip  # clipping did work

    std = 0.8 * clip / per_round
    with dp_server.seeded_numpy_random(derive_seed(exp.run.seed, 1, dp_server.DP_NOISE)):
        noise = {
            k: np.random.normal(0, std, v.shape).astype(np.float32) for k, v in current.items()
        }
    for key, value in _numpy(new).items():
        mean = np.mean([u[key] for u in clipped], axis=0)  # uniform: weights are not used
        np.testing.assert_allclose(value, current[key] + mean + noise[key], rtol=1e-5, atol=1e-6)
    assert metrics["dp-clipping-norm"] == clip and metrics["dp-epsilon"] > 0


def test_client_side_clipping_bounds_what_clients_send(tiny_toml, tmp_path, monkeypatch):
    """client-fixed: the ClientApp's mod clips each reply (seen at the server), scaling the
    update the client computed, and the run equals server-fixed byte for byte."""
    exp = load_experiment(tiny_toml, [*SMALL, "run.rounds=1", *FIXED])
    start = _numpy(initial_arrays(exp))
    trained, received = [], []
    original_train = supervised.train

    def train(msg, context, exp):  # what the handler returns, before the mod clips it
        reply = original_train(msg, context, exp)
        trained.append({k: v - start[k] for k, v in _numpy(reply.content["arrays"]).items()})
        return reply

    original_aggregate = dp_server.ClientFixed.aggregate_train

    def aggregate(self, server_round, replies):
        for reply in replies:
            arrays = _numpy(reply.content["arrays"])
            received.append({k: v - start[k] for k, v in arrays.items()})
        return original_aggregate(self, server_round, replies)

    monkeypatch.setattr(supervised, "train", train)
    monkeypatch.setattr(dp_server.ClientFixed, "aggregate_train", aggregate)
    client_overrides = [*SMALL, "run.rounds=1", *FIXED, "privacy.mode='client-fixed'"]
    client_run, _ = run_experiment(load_experiment(tiny_toml, client_overrides), tmp_path / "c")
    assert len(received) == len(trained) == exp.clients.per_round
    raw_norms = sorted(np.linalg.norm(_flat(u)) for u in trained)
    sent_norms = sorted(np.linalg.norm(_flat(u)) for u in received)
    assert min(raw_norms) > CLIP  # every local update was longer than the bound ...
    assert sent_norms == pytest.approx([CLIP] * len(sent_norms), rel=1e-4)  # ... and was clipped
    server_run, _ = run_experiment(
        load_experiment(tiny_toml, [*SMALL, "run.rounds=1", *FIXED]), tmp_path / "s"
    )
    assert (client_run / "metrics.jsonl").read_bytes() == (
        server_run / "metrics.jsonl"
    ).read_bytes()


# -- accounting and determinism ------------------------------------------------------------------


def test_epsilon_is_the_rdp_accountants_and_runs_repeat_bytewise(tiny_toml, tmp_path):
    overrides = [*SMALL, *FIXED]
    a, _ = run_experiment(load_experiment(tiny_toml, overrides), tmp_path / "a")
    b, _ = run_experiment(load_experiment(tiny_toml, overrides), tmp_path / "b")
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()

    exp = load_experiment(tiny_toml, overrides)
    n, k = exp.clients.num, exp.clients.per_round
    train = _rows(a, "train")
    assert [r["round"] for r in train] == [1, 2]
    gaussian = dp_accounting.GaussianDpEvent(0.8)
    for row in train:
        replace_one = dp_accounting.NeighboringRelation.REPLACE_ONE
        accountant = RdpAccountant(list(ORDERS), neighboring_relation=replace_one)
        accountant.compose(
            dp_accounting.SampledWithoutReplacementDpEvent(n, k, gaussian), row["round"]
        )
        assert row["dp-epsilon"] == accountant.get_epsilon(1e-5)
        poisson = RdpAccountant(list(ORDERS))
        poisson.compose(dp_accounting.PoissonSampledDpEvent(k / n, gaussian), row["round"])
        assert row["dp-epsilon-poisson"] == poisson.get_epsilon(1e-5)
    assert 0 < train[0]["dp-epsilon"] < train[1]["dp-epsilon"]
    # noise is on: the same run without [privacy] ends elsewhere
    plain, _ = run_experiment(load_experiment(tiny_toml, SMALL), tmp_path / "plain")
    assert _rows(plain, "server-eval")[-1] != _rows(a, "server-eval")[-1]


def test_adaptive_clipping_resumes_to_the_same_bytes(tiny_toml, tmp_path):
    """The adaptive norm is checkpointed and epsilon depends on rounds done only."""
    overrides = [*SMALL, "run.rounds=3", *ADAPTIVE]
    reference, _ = run_experiment(load_experiment(tiny_toml, overrides), tmp_path / "reference")
    crashed = tmp_path / "crashed"
    with pytest.raises(RunError):
        run_experiment(load_experiment(tiny_toml, overrides), crashed, callbacks=[CrashAfter(2)])
    resume_run(crashed)
    assert (crashed / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    norms = [r["dp-clipping-norm"] for r in _rows(reference, "train")]
    assert len(set(norms)) == 3  # the norm adapts every round


# -- configs that cannot work ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["method='scaffold'", "client.momentum=0", *FIXED], "privacy.mode", "scaffold"),
        (["method='fedadam'", *FIXED], "privacy.mode", "server optimiser"),
        (["strategy.aggregator='krum'", *FIXED], "strategy.aggregator", "sensitivity"),
        (["privacy.mode='client-adaptive'"], "privacy.clipped_count_stddev", "2 x"),
        (
            ["privacy.mode='server-fixed'", "privacy.noise_multiplier=0"],
            "privacy.noise_multiplier",
            "greater than 0",
        ),
        (["privacy.mode='server-fixed'", "privacy.delta=1"], "privacy.delta", "less than 1"),
        (["privacy.mode='local'"], "privacy.mode", "server-fixed"),
        (
            ["method='curriculum'", "curriculum.client_curriculum=true", *FIXED],
            "privacy.mode",
            "curriculum.client_curriculum",
        ),
    ],
)
def test_bad_privacy_configs_name_the_key(tiny_toml, overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_experiment(tiny_toml, overrides)
    message = str(info.value)
    assert key in message and words in message, message


def test_epsilon_accounts_for_the_sampling_done_not_poissons():
    """10 of 100 clients, z = 1.0, 50 rounds, delta 1e-5: dp-accounting's own figures."""
    from fedsim.privacy.accountant import epsilon, poisson_epsilon

    without = epsilon(1.0, 100, 10, 50, 1e-5)
    assert round(without, 2) == 9.43
    assert round(poisson_epsilon(1.0, 0.1, 50, 1e-5), 2) == 6.02
    assert epsilon(1.0, 100, 10, 0, 1e-5) == 0.0
    assert epsilon(1.0, 100, 10, 51, 1e-5) > without
