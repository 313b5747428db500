"""``run.max_reply_mb``: a reply whose arrays are larger is a failure, refused from the sizes of
its raw buffers before anything decodes them (NaN scan, the method's check, aggregation)."""

from __future__ import annotations

import csv
import importlib
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

import fedsim_methods.clients.supervised as supervised
from fedsim.config import ConfigError, load_experiment
from fedsim.federation.replies import array_bytes
from fedsim.runner import run_experiment

replies_mod = importlib.import_module("fedsim.federation.replies")
BIG = 900_000  # float32 values: 3.6 MB on the wire, against a model of 0.32 MB


def _reply(msg: Message, pid: int) -> Message:
    """The model sent back untrained (no training needed to test the engine); partition 3
    puts 3.6 MB of NaN in place of one of its arrays."""
    arrays = ArrayRecord({k: v for k, v in msg.content["arrays"].items()})
    if pid == 3:
        arrays["classifier.0.weight"] = Array(np.full(BIG, np.nan, dtype=np.float32))
    metrics = MetricRecord({"train_loss": 1.0, "num-examples": 10})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def test_an_oversized_reply_is_left_out_before_it_is_decoded(tiny_toml, tmp_path, monkeypatch):
    monkeypatch.setattr(
        supervised,
        "train",
        lambda msg, context, exp: _reply(msg, int(context.node_config["partition-id"])),
    )
    scanned: list[int] = []  # array bytes of every reply the NaN scan decoded
    real_non_finite = replies_mod.non_finite

    def spy(content: RecordDict) -> str | None:
        scanned.append(array_bytes(content))
        return real_non_finite(content)

    monkeypatch.setattr(replies_mod, "non_finite", spy)
    exp = load_experiment(tiny_toml, ["run.rounds=1", "clients.per_round=10", "run.max_reply_mb=1"])
    run_dir, summary = run_experiment(exp, tmp_path / "run")

    assert summary["status"] == "completed"
    train = [
        r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if r["scope"] == "train"
    ]  # fmt: skip
    assert [(r["clients"], r["failures"]) for r in train] == [(9, 1)]
    with open(run_dir / "comm.csv") as f:
        up = {int(r["partition_id"]): int(r["bytes"]) for r in csv.DictReader(f)
              if r["direction"] == "up"}  # fmt: skip
    assert up[3] > 3.6e6 > 1e6 > max(v for k, v in up.items() if k != 3)  # counted as sent
    log = (run_dir / "log.txt").read_text()
    reason = f"reply of {up[3] / 1e6:.1f} MB exceeds run.max_reply_mb = 1"
    assert f"client 3 left out of train: {reason}" in log
    assert "NaN" not in log  # refused on its size: its NaN were never looked at
    assert len(scanned) == 9 and max(scanned) < 1e6  # only the small replies were decoded


def test_max_reply_mb_is_validated(tiny_toml):
    with pytest.raises(ConfigError, match=r"run\.max_reply_mb"):
        load_experiment(tiny_toml, ["run.max_reply_mb=-1"])
    assert load_experiment(tiny_toml).run.max_reply_mb == 0  # no bound by default
