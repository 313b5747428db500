"""Checkpoints: everything a killed run needs to continue as if it never stopped.

Saved every ``run.checkpoint_every`` rounds, atomically (write, fsync, rename), so a
``kill -9`` at any moment leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, RecordDict

CHECKPOINT = "checkpoints/latest.pkl"


@dataclass
class Checkpoint:
    server_round: int
    arrays: ArrayRecord
    strategy: Any  # the Flower strategy object, with its optimiser state (FedAdam m_t, v_t...)
    rng_state: dict
    client_states: dict[int, RecordDict]  # partition id -> Context.state (in-process)
    extra: dict[str, Any]


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    path = Path(run_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(ckpt, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)
