"""Tensors <-> Flower ``ArrayRecord``: what crosses the wire, and what a client keeps in
``Context.state`` between the exchanges of a round (trainable arrays, optimiser state).

Arrays go as numpy (Flower serialises them with ``np.save``: the raw bytes plus a 128-byte
header each, which is what ``comm.csv`` counts).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


def record_of(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord of detached CPU copies, keys and order kept."""
    arrays = {k: Array(np.ascontiguousarray(t.detach().cpu().numpy())) for k, t in tensors.items()}
    return ArrayRecord(array_dict=arrays)


def tensors_of(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Writable torch tensors (copies) from an ArrayRecord: ``Array.numpy`` already returns
    a new writable array (``fedsim.array_codec``, or np.load), so no second copy."""
    return {k: torch.from_numpy(a.numpy()) for k, a in record.items()}


def optimizer_record(optimizer: torch.optim.Optimizer) -> ArrayRecord:
    """The per-parameter state of ``optimizer`` (momentum, Adam moments and step), keyed
    ``"<param index>.<name>"``. Hyperparameters are not stored: they come from the config."""
    arrays = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if value is None:
                continue
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            arrays[f"{index}.{name}"] = tensor
    return record_of(arrays)


def load_optimizer(optimizer: torch.optim.Optimizer, record: ArrayRecord | None) -> None:
    """Restore what ``optimizer_record`` saved into a freshly built optimiser."""
    if record is None or not len(record):
        return
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors_of(record).items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = tensor
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
