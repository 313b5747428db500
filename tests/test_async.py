"""FedAsync and FedBuff: the event order and aggregation against hand-computed updates on
scripted clients, then whole runs (learning, byte-identical repeats, resume with updates in
flight, Ray)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from helpers import CrashAfter, kill_9_then_resume, stub_context

from fedsim.config import load_experiment
from fedsim.config.load import ConfigError
from fedsim.config.systems import SystemsConfig
from fedsim.federation.strategy import arrays_of
from fedsim.runner import RunError, resume_run, run_experiment
from fedsim.systems.clock import VirtualClock
from fedsim.systems.population import Population
from fedsim.systems.traces import Device
from fedsim_methods.strategies.asynchronous import build_strategy

# The model message and the reply each hold 136 bytes of arrays: at this many kbit/s each
# takes exactly 1 s, so a client's time is 1 s down + 1 s per sample + 1 s up, exactly.
LINK = 8 * 136 / 1000


def _respond(pid: int, msg: Message) -> Message:
    """Client p returns the model it was sent plus p + 1 and trains on its time in samples."""
    w = msg.content["arrays"]["w"].numpy()
    metrics = MetricRecord({"num-examples": TIMES[pid], "train_loss": float(pid)})
    content = RecordDict({"arrays": arrays_of({"w": w + (pid + 1)}), "metrics": metrics})
    return Message(content, reply_to=msg)


TIMES = [10, 25, 46]  # samples, so seconds of compute, of clients 0, 1, 2: 12, 27, 48 s in all


def _server(tmp_path: Path, method: str, section: str, num: int = 3):
    """An asynchronous strategy over ``num`` scripted clients, always online (as many as it
    keeps in flight, so which client is sent is forced, not drawn)."""
    path = tmp_path / "async.toml"
    text = TINY.replace('method = "fedavg"', f'method = "{method}"')
    path.write_text(text + f"\n[systems]\n[{method}]\n{section}\n")
    exp = load_experiment(path, [f"clients.num={num}", "clients.per_round=2"])
    ctx = stub_context(num, _respond)
    devices = tuple(Device(1000.0, LINK, LINK) for _ in TIMES[:num])
    cfg = SystemsConfig(backward_factor=1.0)
    ctx.clock = VirtualClock(cfg, Population(devices, None), per_round=2, need=2, local_epochs=1)
    strategy = build_strategy(exp)
    strategy.bind(ctx)
    return strategy, ctx


def _step(strategy, ctx, server_round: int, w: float):
    ctx.begin_round(server_round)
    arrays = arrays_of({"w": np.array([w], dtype=np.float64)})
    new, metrics = strategy.train_round(server_round, arrays, ConfigRecord({}), ctx)
    row = ctx.end_round()
    return float(new["w"].numpy()[0]), dict(metrics), row


def test_fedbuff_buffers_staleness_weighted_updates_in_arrival_order(tmp_path):
    strategy, ctx = _server(tmp_path, "fedbuff", "buffer_size = 2\nconcurrency = 3")
    # step 1: all three sent at 0 s; 0 arrives at 12 s and is sent again (model 0), arriving
    # at 24 s: two fresh updates of +1
    w1, m1, row1 = _step(strategy, ctx, 1, 0.0)
    assert w1 == 1.0
    assert (m1["aggregated"], m1["staleness-max"]) == (2, 0)
    assert row1["virtual-time-s"] == 24.0
    # step 2: 0 is sent model 1 at 24 s (back at 36 s); 1 arrives at 27 s, one step old
    # (+2 x 2^-0.5), and 0 at 36 s (+1)
    w2, m2, row2 = _step(strategy, ctx, 2, w1)
    assert w2 == pytest.approx(w1 + (2 / math.sqrt(2) + 1) / 2)
    assert (m2["staleness-max"], row2["virtual-time-s"]) == (1, 36.0)
    # step 3: 0 (sent at 36 s, model 2) and 2 (sent at 0 s, model 0) both arrive at 48 s:
    # the tie goes to the lower partition id, and the two fill the buffer
    w3, m3, row3 = _step(strategy, ctx, 3, w2)
    assert w3 == pytest.approx(w2 + (1 + 3 / math.sqrt(3)) / 2)
    assert (m3["staleness-max"], m3["staleness-mean"]) == (2, 1.0)
    assert row3["virtual-time-s"] == 48.0
    sent = [(m.metadata.dst_node_id - 1000, int(m.content["config"]["server-round"]))
            for m in ctx.inner.sent]  # fmt: skip
    # one number per dispatch; 0 is sent again at 40 s, in the step that its tie won
    assert sent == [(0, 1), (1, 2), (2, 3), (0, 4), (0, 5), (1, 6), (0, 7), (0, 8)]


def test_fedasync_mixes_each_arrival_and_drops_the_too_stale(tmp_path):
    section = "alpha = 0.5\nconcurrency = 2\nmax_staleness = 1"
    strategy, ctx = _server(tmp_path, "fedasync", section, num=2)
    x0 = 0.0
    w1, _, _ = _step(strategy, ctx, 1, x0)  # clients 0 and 1 sent at 0 s; 0 arrives at 12 s
    assert w1 == pytest.approx(0.5 * x0 + 0.5 * (x0 + 1))
    w2, m2, _ = _step(strategy, ctx, 2, w1)  # 0 again: sent at 12 s on model 1, back at 24 s
    assert w2 == pytest.approx(0.5 * w1 + 0.5 * (w1 + 1))
    assert m2["staleness-max"] == 0
    # step 3: 0 is sent at 24 s (back at 36 s); 1 arrives at 27 s two steps old, more than
    # max_staleness: dropped and reported, its slot refilled; then 0 arrives
    w3, m3, row3 = _step(strategy, ctx, 3, w2)
    assert w3 == pytest.approx(0.5 * w2 + 0.5 * (w2 + 1))
    assert row3["virtual-time-s"] == 36.0
    failures = ctx.round_failures("train")
    assert [(f.partition_id, f.reason.split(":")[0]) for f in failures] == [(1, "staleness")]
    assert "more than fedasync.max_staleness = 1" in failures[0].reason


def test_fedasync_weights_stale_updates_polynomially(tmp_path):
    strategy, ctx = _server(tmp_path, "fedasync", "alpha = 0.5\nconcurrency = 2", num=2)
    w1, _, _ = _step(strategy, ctx, 1, 0.0)
    w2, _, _ = _step(strategy, ctx, 2, w1)
    w3, m3, _ = _step(strategy, ctx, 3, w2)  # client 1's update of model 0, two steps old
    a = 0.5 * 3**-0.5
    assert w3 == pytest.approx((1 - a) * w2 + a * (0.0 + 2))
    assert m3["staleness-max"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("", "systems: method 'fedbuff' is asynchronous"),
        ("[systems]\ndeadline_s = 10\n", "systems.deadline_s: a round deadline"),
        ("[systems]\n[fedbuff]\nconcurrency = 11\n", "fedbuff.concurrency: 11 clients"),
        ("[systems]\n[fedbuff]\nbuffer_size = 11\n", "fedbuff.buffer_size: 11 is more"),
        ("[systems]\n[fedbuff]\nstaleness = 'linear'\n", "fedbuff.staleness"),
    ],
)
def test_bad_async_settings_are_refused_naming_the_key(tmp_path, extra, message):
    path = tmp_path / "a.toml"
    path.write_text(TINY.replace('method = "fedavg"', 'method = "fedbuff"') + "\n" + extra)
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)


# -- whole runs ---------------------------------------------------------------------------

FEDBUFF = """
[systems]
[fedbuff]
buffer_size = 3
concurrency = 6
"""
OVERRIDES = ["run.rounds=8", "clients.num=10", "data.partitioner=iid"]


def _rows(run_dir: Path, scope: str) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["scope"] == scope]


@pytest.fixture(scope="module")
def buffered(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fedbuff")
    toml = root / "fedbuff.toml"
    toml.write_text(TINY.replace('method = "fedavg"', 'method = "fedbuff"') + FEDBUFF)
    run_dir, summary = run_experiment(load_experiment(toml, OVERRIDES), root / "run")
    assert summary["status"] == "completed"
    return toml, run_dir


def test_fedbuff_learns_with_stale_updates(buffered):
    _, run_dir = buffered
    accuracy = [r["accuracy"] for r in _rows(run_dir, "server-eval")]
    assert accuracy[-1] > 0.5 > accuracy[0]  # MNIST, 10 classes: chance is 0.1
    train = _rows(run_dir, "train")
    assert all(r["aggregated"] == 3 for r in train)
    assert max(r["staleness-max"] for r in train) >= 1  # updates did arrive stale
    times = [r["virtual-time-s"] for r in _rows(run_dir, "systems")]
    assert times == sorted(times) and times[0] > 0


def test_fedbuff_repeats_and_resumes_with_updates_in_flight(buffered, tmp_path):
    toml, reference = buffered
    crashed = tmp_path / "crashed"
    with pytest.raises(RunError, match="simulated crash"):
        run_experiment(load_experiment(toml, OVERRIDES), crashed, callbacks=[CrashAfter(3)])
    assert _rows(crashed, "systems")[-1]["in-flight"] > 0  # the checkpoint holds updates
    resume_run(crashed)
    for name in ("metrics.jsonl", "comm.csv"):
        assert (crashed / name).read_bytes() == (reference / name).read_bytes(), name


def test_global_random_draws_during_exchanges_change_nothing(buffered, tmp_path, monkeypatch):
    """Under ``flwr run`` Flower draws from the global ``random`` while a round waits on its
    clients (heartbeat and object-pull jitter, as often as timing makes it): the clients
    sent after an arrival must not depend on those draws."""
    import random

    from fedsim.federation.context import FederationContext

    toml, reference = buffered
    exchange = FederationContext.exchange

    def exchange_with_flower_jitter(self, *args, **kwargs):
        random.uniform(0.7, 0.9)
        return exchange(self, *args, **kwargs)

    monkeypatch.setattr(FederationContext, "exchange", exchange_with_flower_jitter)
    run_dir, _ = run_experiment(load_experiment(toml, OVERRIDES), tmp_path / "jitter")
    for name in ("metrics.jsonl", "comm.csv"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_fedbuff_on_ray_gives_the_inprocess_bytes(buffered, tmp_path):
    toml, reference = buffered
    run_dir, summary = run_experiment(
        load_experiment(toml, [*OVERRIDES, "run.backend=ray"]), tmp_path / "ray"
    )
    assert summary["status"] == "completed"
    for name in ("metrics.jsonl", "comm.csv"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
def test_kill_9_of_a_fedbuff_run_then_resume_gives_the_same_bytes(buffered, tmp_path):
    toml, reference = buffered
    killed = tmp_path / "killed"
    kill_9_then_resume(toml, OVERRIDES, killed, after=3, rounds=8)
    for name in ("metrics.jsonl", "comm.csv"):
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name


def test_the_real_clock_aggregates_updates_as_they_are_pulled(tmp_path):
    """clock = "real" on the in-process grid (every reply is there at the first poll): each
    step takes buffer_size updates in partition order and holds the rest for the next."""
    path = tmp_path / "real.toml"
    text = TINY.replace('method = "fedavg"', 'method = "fedbuff"')
    path.write_text(text + '\n[fedbuff]\nclock = "real"\nbuffer_size = 2\nconcurrency = 3\n')
    exp = load_experiment(path, ["run.rounds=4", "data.max_train_samples=2000"])
    run_dir, summary = run_experiment(exp, tmp_path / "run")
    assert summary["status"] == "completed"
    train = _rows(run_dir, "train")
    assert [r["aggregated"] for r in train] == [2, 2, 2, 2]
    assert all(r["step-s"] >= 0 for r in train) and not _rows(run_dir, "systems")
    assert max(r["staleness-max"] for r in train) >= 1  # the held update is a step old
    ups = [line.split(",") for line in (run_dir / "comm.csv").read_text().splitlines()[1:]]
    assert sum(1 for u in ups if u[3] == "up") >= 8


def test_the_real_clock_refuses_a_systems_section(tmp_path):
    path = tmp_path / "real.toml"
    text = TINY.replace('method = "fedavg"', 'method = "fedbuff"')
    path.write_text(text + '\n[systems]\n[fedbuff]\nclock = "real"\n')
    with pytest.raises(ConfigError, match="systems: fedbuff.clock = 'real' times real devices"):
        load_experiment(path)
