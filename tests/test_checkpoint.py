"""Checkpoints are versioned, checksummed state: damage is reported and the previous one used."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng_state,
    checkpoint_files,
    load_checkpoint,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _ckpt(server_round: int) -> Checkpoint:
    rng = np.random.default_rng(server_round)
    arrays = ArrayRecord(
        array_dict={
            "w": Array(rng.standard_normal((4, 3)).astype(np.float32)),
            "steps": Array(np.array([server_round], dtype=np.int64)),
        }
    )
    strategy = RecordDict(
        {"m_t": ArrayRecord(array_dict={"w": Array(np.full((4, 3), 0.5))}),
         "scores": ConfigRecord({"pids": [0, 2], "values": [0.1, 0.2]})}
    )  # fmt: skip
    clients = {
        0: RecordDict({"control": ArrayRecord(array_dict={"w": Array(np.ones(3))})}),
        3: RecordDict({"calls": MetricRecord({"n": 2})}),
        5: RecordDict(),
    }
    return Checkpoint(server_round, arrays, strategy, capture_rng_state(), clients, {"method": "x"})


def _same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.server_round == b.server_round and a.meta == b.meta
    for key in a.arrays:
        assert a.arrays[key].numpy().tobytes() == b.arrays[key].numpy().tobytes()
        assert a.arrays[key].numpy().dtype == b.arrays[key].numpy().dtype
    assert list(a.arrays) == list(b.arrays)  # key order is model order
    assert (
        a.strategy_state["m_t"]["w"].numpy().tolist()
        == b.strategy_state["m_t"]["w"].numpy().tolist()
    )
    assert dict(a.strategy_state["scores"]) == dict(b.strategy_state["scores"])
    # A client with no state is not written: a resumed run starts it empty, as it was.
    assert sorted(a.client_states) == [0, 3, 5] and sorted(b.client_states) == [0, 3]
    assert b.client_states[3]["calls"]["n"] == 2 and len(a.client_states[5]) == 0


def test_round_trip_keeps_every_value_and_dtype(tmp_path):
    ckpt = _ckpt(3)
    save_checkpoint(tmp_path, ckpt)
    _same(ckpt, load_checkpoint(tmp_path))


def test_rng_state_round_trips():
    import random

    import torch

    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_only_the_newest_and_the_previous_good_one_are_kept(tmp_path):
    for r in (1, 2, 3, 4):
        save_checkpoint(tmp_path, _ckpt(r))
    assert [p.name for p in checkpoint_files(tmp_path)] == [
        "round-000004.ckpt",
        "round-000003.ckpt",
    ]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda b: b[:100], "truncated"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch"),
        (lambda b: b"", "not a fedsim checkpoint"),
        (lambda b: b.replace(b'"format": 2', b'"format": 9', 1), "format 9"),
    ],
)
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_used(
    tmp_path, caplog, damage, words
):
    save_checkpoint(tmp_path, _ckpt(1))
    newest = save_checkpoint(tmp_path, _ckpt(2))
    newest.write_bytes(damage(newest.read_bytes()))
    with pytest.raises(CheckpointError, match=words):
        read_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        ckpt = load_checkpoint(tmp_path)
    assert ckpt.server_round == 1
    assert words in caplog.text and "round-000002.ckpt" in caplog.text


def test_no_usable_checkpoint_is_an_error_naming_the_files(tmp_path):
    assert load_checkpoint(tmp_path) is None  # a run that saved none
    path = save_checkpoint(tmp_path, _ckpt(1))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="no usable checkpoint: .*round-000001.ckpt"):
        load_checkpoint(tmp_path)
