"""Chunked aggregation (clients.chunk_size): a chunk of clients summed where it trained gives
the weighted mean, the same bytes on every backend and worker count, the per-client traffic
and failures of an unchunked run, and is refused where a method needs every reply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedsim.config import load_experiment
from fedsim.federation.chunks import chunks_of, combine, reduce_chunk
from fedsim.runner import run_experiment

CHUNKED = ["clients.num=6", "clients.per_round=5", "clients.chunk_size=2"]  # chunks 2, 2, 1


def _reply(rng: np.random.Generator, n: int) -> RecordDict:
    arrays = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4)}
    metrics = {"train_loss": float(rng.random()), "hist": [1.0, float(n)], "num-examples": n}
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return RecordDict({"arrays": record, "metrics": MetricRecord(metrics)})


def test_chunk_sums_combine_to_the_weighted_mean_in_each_arrays_dtype():
    rng = np.random.default_rng(0)
    sizes = [5, 17, 1, 40, 9, 23, 2]
    replies = [_reply(rng, n) for n in sizes]
    arrays, metrics = combine([reduce_chunk(c) for c in chunks_of(replies, 3)])
    weights = np.array(sizes, dtype=np.float64) / sum(sizes)
    for key in ("w", "b"):
        stacked = np.stack([r["arrays"][key].numpy().astype(np.float64) for r in replies])
        expected = np.tensordot(weights, stacked, axes=1)
        got = arrays[key].numpy()
        assert got.dtype == replies[0]["arrays"][key].numpy().dtype
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    losses = [r["metrics"]["train_loss"] for r in replies]
    assert metrics["train_loss"] == pytest.approx(float(np.dot(weights, losses)), rel=1e-12)
    assert metrics["hist"] == pytest.approx([1.0, float(np.dot(weights, sizes))], rel=1e-12)
    assert "num-examples" not in metrics
    assert [len(c) for c in chunks_of(replies, 3)] == [3, 3, 1]
    assert reduce_chunk([]) is None and combine([]) == (None, None)


def _run(tiny_toml: Path, out: Path, *overrides: str) -> Path:
    run_dir, summary = run_experiment(load_experiment(tiny_toml, list(overrides)), out)
    assert summary["status"] == "completed"
    return run_dir


def _rows(run_dir: Path, scope: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["scope"] == scope]


def test_a_chunked_run_learns_repeats_and_counts_each_clients_traffic(tiny_toml, tmp_path):
    chunked = _run(tiny_toml, tmp_path / "a", *CHUNKED)
    again = _run(tiny_toml, tmp_path / "b", *CHUNKED)
    plain = _run(tiny_toml, tmp_path / "plain", *CHUNKED[:2])
    assert (chunked / "metrics.jsonl").read_bytes() == (again / "metrics.jsonl").read_bytes()
    rows = _rows(chunked, "server-eval")
    assert rows[-1]["accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert rows[-1]["loss"] < rows[0]["loss"]
    # Every client's model still counts up and down, as a deployment would send it.
    assert (chunked / "comm.csv").read_bytes() == (plain / "comm.csv").read_bytes()
    # The same mean up to float rounding: float64 sums of chunks vs Flower's float32 sum.
    assert abs(rows[-1]["accuracy"] - _rows(plain, "server-eval")[-1]["accuracy"]) < 0.02


def test_a_bad_reply_leaves_only_its_client_out_of_the_chunk(tiny_toml, tmp_path):
    run_dir = _run(tiny_toml, tmp_path / "run", *CHUNKED, "faults.nan_prob=0.3")
    failed = {r["round"]: r["clients"] for r in _rows(run_dir, "failures")}
    assert failed and all("NaN" in f["reason"] for rows in failed.values() for f in rows)
    for row in _rows(run_dir, "train"):  # the chunk's other clients were aggregated
        assert row["clients"] + len(failed.get(row["round"], [])) == 5
        assert row["failures"] == len(failed.get(row["round"], []))
    assert all(np.isfinite(r["loss"]) for r in _rows(run_dir, "server-eval"))


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["method='scaffold'", "client.momentum=0.0"], "needs every client's own reply"),
        (["strategy.aggregator='median'"], "looks at every client's model"),
        (["privacy.mode='server-fixed'"], "clips each client's update"),
    ],
)
def test_methods_and_options_that_need_every_reply_refuse_chunks(tiny_toml, overrides, named):
    with pytest.raises(ValueError, match="clients.chunk_size") as info:
        load_experiment(tiny_toml, ["clients.chunk_size=2", *overrides])
    assert named in str(info.value)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_ray_with_1_2_and_3_workers_gives_the_inprocess_bytes(tiny_toml, tmp_path):
    reference = _run(tiny_toml, tmp_path / "inprocess", *CHUNKED)
    for workers in (1, 2, 3):
        # Half a CPU each, so that 3 workers fit 2 cores: still one torch thread per client.
        ray = _run(
            tiny_toml, tmp_path / f"ray-{workers}", *CHUNKED, "clients.num_cpus=0.5",
            "run.backend='ray'", f"run.ray_workers={workers}",
        )  # fmt: skip
        assert (reference / "metrics.jsonl").read_bytes() == (ray / "metrics.jsonl").read_bytes()
        assert (reference / "comm.csv").read_bytes() == (ray / "comm.csv").read_bytes()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_flwr_run_gives_the_chunked_inprocess_bytes(tmp_path):
    from test_flwr_run import ROOT, flwr_run

    experiment = ROOT / "experiments" / "quickstart.toml"
    overrides = "run.rounds=2 clients.num=6 clients.per_round=5 data.max_train_samples=3000"
    overrides += " clients.chunk_size=2"
    out = flwr_run(experiment, overrides, 6, tmp_path)
    local, _ = run_experiment(load_experiment(experiment, overrides.split()), tmp_path / "local")
    assert (local / "metrics.jsonl").read_bytes() == (out / "metrics.jsonl").read_bytes()
    assert (local / "comm.csv").read_bytes() == (out / "comm.csv").read_bytes()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_chunks_carry_client_state_scoring_exchanges_and_faults_to_the_same_bytes(
    tiny_toml, tmp_path
):
    """The curriculum's local-model scoring (Context.state across rounds), its scoring
    exchange (never chunked) and crashing clients inside chunks, in-process and on Ray."""
    overrides = [
        *CHUNKED, "run.rounds=2", "data.max_train_samples=3000", "method='curriculum'",
        "client.lr=0.01", "curriculum.scoring='both'", "curriculum.client_curriculum=true",
        "curriculum.client_b=0.5", "faults.crash_prob=0.2", "clients.num_cpus=0.5",
    ]  # fmt: skip
    local = _run(tiny_toml, tmp_path / "inprocess", *overrides)
    ray = _run(tiny_toml, tmp_path / "ray", *overrides, "run.backend='ray'", "run.ray_workers=2")
    assert _rows(local, "failures")  # some clients crashed inside their chunks
    assert (local / "metrics.jsonl").read_bytes() == (ray / "metrics.jsonl").read_bytes()
    assert (local / "comm.csv").read_bytes() == (ray / "comm.csv").read_bytes()
    assert "curriculum-score" in (local / "comm.csv").read_text()
