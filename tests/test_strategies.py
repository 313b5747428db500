"""Strategies against scripted clients (tests/helpers.StubGrid): milliseconds, no training.

Covers the federation context (ordering, accounting, failures, custom exchanges), SCAFFOLD's
server update, the client curriculum's scoring exchange, and that every stateful strategy's
checkpoint state continues exactly where it stopped.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import stub_context

from fedsim.config import load_experiment
from fedsim.federation.replies import same_arrays_as_sent
from fedsim.federation.strategy import load_strategy_state, strategy_state
from fedsim.seeding import seeded_python_random
from fedsim_methods.strategies.curriculum import SCORE_STAGE, ClientCurriculum
from fedsim_methods.strategies.scaffold import Scaffold

SHAPES = {"w": (3, 2), "b": (2,)}


def _arrays(seed: int, scale: float = 1.0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        array_dict={
            k: Array((scale * rng.standard_normal(s)).astype(np.float32)) for k, s in SHAPES.items()
        }
    )


def _train_reply(pid: int, msg: Message, n: int = 10) -> Message:
    content = RecordDict(
        {
            "arrays": _arrays(100 + pid),
            "metrics": MetricRecord({"train_loss": float(pid), "num-examples": n + pid}),
        }
    )
    return Message(content, reply_to=msg)


def _send(ctx, pids, arrays, message_type="train", stage=None, **kw):
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({})})
    return ctx.exchange([ctx.message(content, p, message_type) for p in pids], stage=stage, **kw)


# -- the federation context ------------------------------------------------------------------


def test_exchange_sorts_counts_and_reports_failures():
    def respond(pid, msg):
        if pid == 1:
            raise RuntimeError("disk on fire")
        if pid == 2:
            return None  # never answers
        reply = _train_reply(pid, msg)
        if pid == 3:
            bad = reply.content["arrays"]["w"].numpy().copy()
            bad[0, 0] = np.nan
            reply.content["arrays"]["w"] = Array(bad)
        if pid == 4:
            reply.content["arrays"]["b"] = Array(np.zeros(5, np.float32))
        return reply

    ctx = stub_context(6, respond)
    ctx.begin_round(1)
    replies = _send(ctx, [5, 4, 3, 2, 1, 0], _arrays(0))
    pids = [ctx.partition_of(r.metadata.src_node_id) for r in replies]
    assert pids == sorted(pids)  # the stub answers in reverse: fedsim sorts
    ok = [ctx.partition_of(r.metadata.src_node_id) for r in replies if not r.has_error()]
    assert ok == [0, 5]
    reasons = {f.partition_id: f.reason for f in ctx.round_failures("train")}
    assert sorted(reasons) == [1, 2, 3, 4]
    assert "disk on fire" in reasons[1] and "no reply" in reasons[2]
    assert "NaN" in reasons[3] and "shape (5,), expected (2,)" in reasons[4]
    (exchange,) = ctx.exchanges
    one_copy = sum(len(a.data) for a in _arrays(0).values())
    assert exchange.down == {p: one_copy for p in range(6)}
    assert sorted(exchange.up) == [0, 3, 4, 5]  # what arrived is counted, even if rejected


def test_a_method_validator_accepts_replies_unlike_what_was_sent():
    """Two exchanges in one round: statistics up (shape (1,)), then weights as FedAvg."""

    def respond(pid, msg):
        if msg.metadata.message_type == "train.stats":
            stats = {"w.norm": Array(np.ones(1, np.float32)), "b.norm": Array(np.ones(1))}
            return Message(RecordDict({"stats": ArrayRecord(array_dict=stats)}), reply_to=msg)
        return _train_reply(pid, msg)

    def stats_only(stage, sent, reply):
        if stage == "stats":
            shapes = {tuple(a.shape) for a in reply.content["stats"].values()}
            return None if shapes == {(1,)} else f"bad stats shapes {shapes}"
        return same_arrays_as_sent(stage, sent, reply)

    default = stub_context(3, respond)
    default.begin_round(1)
    rejected = _send(default, [0, 1], _arrays(0), "train.stats", stage="stats")
    assert all(r.has_error() for r in rejected)  # the default check: shapes as sent
    assert "unexpected array 'w.norm'" in default.round_failures()[0].reason

    ctx = stub_context(3, respond, validate_reply=stats_only)
    ctx.begin_round(1)
    stats = _send(ctx, [0, 1, 2], _arrays(0), "train.stats", stage="stats")
    trained = _send(ctx, [0, 2], _arrays(0), "train", stage="train")
    assert not any(r.has_error() for r in stats + trained)
    assert [ex.stage for ex in ctx.exchanges] == ["stats", "train"]
    assert ctx.exchanges[0].up[1] < ctx.exchanges[0].down[1]


# -- SCAFFOLD ----------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["uniform", "samples"])
def test_scaffold_server_update_follows_the_paper(weighting):
    num, x = 5, _arrays(0)
    deltas = {p: _arrays(200 + p, scale=0.1) for p in range(num)}

    def respond(pid, msg):
        reply = _train_reply(pid, msg)
        reply.content["control_delta"] = deltas[pid]
        return reply

    ctx = stub_context(num, respond)
    ctx.begin_round(1)
    strategy = Scaffold(
        global_lr=0.5, num_clients=num, weighting=weighting, fraction_train=1.0,
        min_train_nodes=num, min_available_nodes=num, fraction_evaluate=0.0,
    )  # fmt: skip
    messages = list(strategy.configure_train(1, x, ConfigRecord({}), ctx.grid))
    assert all("control" in m.content.array_records for m in messages)  # c travels down
    new, metrics = strategy.aggregate_train(1, ctx.exchange(messages))
    for key in SHAPES:
        ys = [_arrays(100 + p)[key].numpy().astype(np.float64) for p in range(num)]
        xk = x[key].numpy().astype(np.float64)
        # the paper's uniform mean, or FedAvg's n_i / sum n (replies report 10 + pid examples)
        weights = [1.0] * num if weighting == "uniform" else [10.0 + p for p in range(num)]
        expected = xk + 0.5 * np.average([y - xk for y in ys], axis=0, weights=weights)
        np.testing.assert_allclose(new[key].numpy(), expected, rtol=1e-6)
        c = sum(deltas[p][key].numpy() for p in range(num)) / num
        np.testing.assert_allclose(strategy.control[key], c, rtol=1e-6)
    assert metrics["train_loss"] == pytest.approx(np.average(range(5), weights=range(10, 15)))


def test_scaffold_weighted_by_samples_names_the_missing_count():
    """A reply without 'num-examples' cannot be weighted: the error names the key."""

    def respond(pid, msg):
        content = RecordDict(
            {
                "arrays": _arrays(100 + pid),
                "metrics": MetricRecord({"train_loss": 1.0}),
                "control_delta": _arrays(200 + pid, scale=0.1),
            }
        )
        return Message(content, reply_to=msg)

    ctx = stub_context(2, respond)
    ctx.begin_round(1)
    strategy = Scaffold(
        global_lr=1.0, num_clients=2, weighting="samples", fraction_train=1.0,
        min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0,
    )  # fmt: skip
    messages = list(strategy.configure_train(1, _arrays(0), ConfigRecord({}), ctx.grid))
    with pytest.raises(ValueError, match="no 'num-examples' metric"):
        strategy.aggregate_train(1, ctx.exchange(messages))


# -- the client curriculum -------------------------------------------------------------------


def test_client_curriculum_scores_every_client_in_its_own_stage(tiny_toml):
    exp = load_experiment(
        tiny_toml,
        ["curriculum.ordering='vanilla'", "curriculum.client_curriculum=true",
         "curriculum.client_b=0.7", "curriculum.client_a=0.5"],
    )  # fmt: skip

    def respond(pid, msg):
        if msg.metadata.message_type == "query.curriculum_score":
            if pid == 9:
                raise RuntimeError("no scores today")
            loss = MetricRecord({"score_loss": float(pid % 5) + pid / 100, "num-examples": 5})
            return Message(RecordDict({"metrics": loss}), reply_to=msg)
        return _train_reply(pid, msg)

    from fedsim_methods.strategies.baselines import build_strategy

    strategy = build_strategy(exp)
    assert isinstance(strategy, ClientCurriculum)
    ctx = stub_context(exp.clients.num, respond)
    strategy.bind(ctx)
    ctx.begin_round(1)
    messages = list(strategy.configure_train(1, _arrays(0), ConfigRecord({}), ctx.grid))
    scoring, = [ex for ex in ctx.exchanges if ex.stage == SCORE_STAGE]  # fmt: skip
    assert scoring.sent_to == tuple(range(10))
    assert [f.partition_id for f in scoring.failures] == [9]
    (choice,) = strategy.history
    assert 9 not in choice.order  # a client without a score is not eligible
    assert list(choice.order) == sorted(range(9), key=lambda p: (p % 5 + p / 100, p))
    assert exp.clients.per_round < len(choice.pool) < 9  # paced: not all eligible yet
    assert set(choice.chosen) <= set(choice.pool)
    pids = sorted(ctx.partition_of(m.metadata.dst_node_id) for m in messages)
    assert pids == list(choice.chosen) and len(pids) == exp.clients.per_round


def test_strategies_that_need_the_context_refuse_to_run_without_it(tiny_toml):
    from fedsim_methods.strategies.baselines import build_strategy

    exp = load_experiment(tiny_toml, ["curriculum.client_curriculum=true"])
    with pytest.raises(RuntimeError, match="needs fedsim's federation context"):
        build_strategy(exp).configure_train(1, _arrays(0), ConfigRecord({}), stub_context(10).grid)


# -- checkpoint state ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm", "scaffold", "curriculum"])
def test_strategy_state_continues_exactly_after_a_reload(tiny_toml, name):
    """Two rounds on one object == one round, state saved, a fresh object, one more round."""
    overrides = {
        "scaffold": ["method='scaffold'", "client.momentum=0"],
        "curriculum": [
            "method='curriculum'",
            "strategy.name='fedadam'",
            "curriculum.client_curriculum=true",
        ],  # fmt: skip
    }.get(name, [f"method='{name}'"])
    exp = load_experiment(tiny_toml, overrides)
    from fedsim.registry import get_method

    def respond(pid, msg):
        if msg.metadata.message_type == "query.curriculum_score":
            loss = MetricRecord({"score_loss": float(pid), "num-examples": 5})
            return Message(RecordDict({"metrics": loss}), reply_to=msg)
        reply = _train_reply(pid, msg)
        if "control" in msg.content.array_records:
            reply.content["control_delta"] = _arrays(300 + pid, 0.1)
        return reply

    def play(strategy, ctx, server_round, arrays):
        if hasattr(strategy, "bind"):
            strategy.bind(ctx)
        ctx.begin_round(server_round)
        with seeded_python_random(server_round):  # as the loop does: same clients each time
            messages = strategy.configure_train(server_round, arrays, ConfigRecord({}), ctx.grid)
        new, _ = strategy.aggregate_train(server_round, ctx.exchange(messages))
        return new

    method = get_method(exp.method)
    ctx = stub_context(exp.clients.num, respond)
    one = method.build_strategy(exp)
    after_1 = play(one, ctx, 1, _arrays(0))
    saved = strategy_state(one)
    assert len(saved) > 0, f"{name} has state to save"
    straight = play(one, ctx, 2, after_1)

    fresh = method.build_strategy(exp)
    load_strategy_state(fresh, saved)
    resumed = play(fresh, stub_context(exp.clients.num, respond), 2, after_1)
    for key in SHAPES:
        assert resumed[key].numpy().tobytes() == straight[key].numpy().tobytes()
