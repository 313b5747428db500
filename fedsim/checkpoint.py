"""Checkpoints as state, not pickles: a versioned, checksummed file per saved round.

A checkpoint holds the global arrays, the strategy's ``state_dict``, the global RNG states and,
where the backend can reach them, every client's ``Context.state``. It is one Flower
``RecordDict`` serialised with Flower's protobuf serde (the format SuperLinks use on the wire,
so it survives renamed classes and Python upgrades), behind a header that states the format
version, the round and the payload's sha256.

Files: ``checkpoints/round-000007.ckpt``. Writes are atomic (temp file, fsync, rename) and the
previous good checkpoint is kept, so a ``kill -9`` at any moment, a truncated file or a
flipped bit leaves a checkpoint to resume from; a damaged one is reported and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedsim.atomic import write_atomically
from fedsim.errors import FedsimError

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 2
MAGIC = b"FEDSIM-CHECKPOINT\n"
KEEP = 2  # the newest checkpoint and the previous good one
log = logging.getLogger("fedsim")


class CheckpointError(FedsimError, RuntimeError):
    """No usable checkpoint where one was expected; the message says which file and why.
    A run's damaged files are bad input to the command that reads them: exit 2."""

    exit_code = 2


@dataclass
class Checkpoint:
    server_round: int
    arrays: ArrayRecord
    strategy_state: RecordDict
    rng_state: ConfigRecord
    # partition id -> Context.state; None when the backend keeps client state out of reach
    client_states: dict[int, RecordDict] | None
    meta: dict = field(default_factory=dict)  # method, backend: for messages, not for logic


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"round-{server_round:06d}.ckpt"


def checkpoint_files(run_dir: Path) -> list[Path]:
    """Checkpoint files, newest round first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    return sorted(folder.glob("round-*.ckpt"), reverse=True) if folder.is_dir() else []


# -- RNG state ------------------------------------------------------------------------------


def capture_rng_state() -> ConfigRecord:
    """Python's, numpy's and torch's global RNG states as plain values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return ConfigRecord(
        {
            "python_version": int(version),
            "python_state": [int(v) for v in internal],
            "python_gauss": json.dumps(gauss),
            "numpy_name": str(name),
            "numpy_keys": np.asarray(keys, dtype=np.uint32).tobytes(),
            "numpy_pos": int(pos),
            "numpy_has_gauss": int(has_gauss),
            "numpy_cached": float(cached),
            "torch": torch.get_rng_state().numpy().tobytes(),
        }
    )


def restore_rng_state(state: ConfigRecord) -> None:
    random.setstate(
        (
            int(state["python_version"]),
            tuple(int(v) for v in state["python_state"]),
            json.loads(str(state["python_gauss"])),
        )
    )
    np.random.set_state(
        (
            str(state["numpy_name"]),
            np.frombuffer(state["numpy_keys"], dtype=np.uint32).copy(),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_cached"]),
        )
    )
    torch.set_rng_state(torch.frombuffer(bytearray(state["torch"]), dtype=torch.uint8))


# -- encoding -------------------------------------------------------------------------------

_SEP = "::"


def _encode(ckpt: Checkpoint) -> bytes:
    record = RecordDict()
    record["global"] = ckpt.arrays
    record["rng"] = ckpt.rng_state
    for key, value in ckpt.strategy_state.items():
        record[f"strategy{_SEP}{key}"] = value
    # Only clients that hold state: a resumed run starts every other one empty, as it was
    # (a population of 100,000 stateless clients adds nothing to the file).
    for pid, state in sorted((ckpt.client_states or {}).items()):
        if not len(state):
            continue
        record[f"client{_SEP}{pid}{_SEP}"] = ConfigRecord({})  # marks the client
        for key, value in state.items():
            record[f"client{_SEP}{pid}{_SEP}{key}"] = value
    meta = {
        **ckpt.meta,
        "round": ckpt.server_round,
        "client_states": ckpt.client_states is not None,
    }
    record["meta"] = ConfigRecord({"json": json.dumps(meta, sort_keys=True)})
    return recorddict_to_proto(record).SerializeToString()


def _decode(payload: bytes) -> Checkpoint:
    proto = ProtoRecordDict()
    proto.ParseFromString(payload)
    record = recorddict_from_proto(proto)
    meta = json.loads(str(record["meta"]["json"]))
    strategy, clients = RecordDict(), {}
    for key, value in record.items():
        kind, _, rest = key.partition(_SEP)
        if kind == "strategy":
            strategy[rest] = value
        elif kind == "client":
            pid, _, name = rest.partition(_SEP)
            state = clients.setdefault(int(pid), RecordDict())
            if name:
                state[name] = value
    return Checkpoint(
        server_round=int(meta.pop("round")),
        arrays=record["global"],
        strategy_state=strategy,
        rng_state=record["rng"],
        client_states=clients if meta.pop("client_states") else None,
        meta=meta,
    )


# -- files ------------------------------------------------------------------------------------


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write atomically, then drop all but the ``KEEP`` newest checkpoints."""
    payload = _encode(ckpt)
    header = {
        "format": FORMAT_VERSION,
        "round": ckpt.server_round,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    path = checkpoint_path(run_dir, ckpt.server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = MAGIC + json.dumps(header).encode() + b"\n" + payload
    write_atomically(path, blob, fsync=True)  # a full disk: no .tmp left, the file named
    for old in checkpoint_files(run_dir)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path) -> Checkpoint:
    """One checkpoint file, verified; CheckpointError says what is wrong with it."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    if not blob.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a fedsim checkpoint (format {FORMAT_VERSION})")
    head, sep, payload = blob[len(MAGIC) :].partition(b"\n")
    if not sep:
        raise CheckpointError(f"{path}: truncated (the header is incomplete)")
    try:
        header = json.loads(head)
    except ValueError:
        raise CheckpointError(f"{path}: damaged header") from None
    if header.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {header.get('format')}, this fedsim reads {FORMAT_VERSION}"
        )
    if len(payload) != header.get("bytes"):
        raise CheckpointError(
            f"{path}: truncated ({len(payload)} of {header.get('bytes')} payload bytes)"
        )
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch (the file is damaged)")
    try:
        return _decode(payload)
    except Exception as exc:  # a payload that hashes right but does not parse
        raise CheckpointError(f"{path}: unreadable payload ({exc})") from None


def load_checkpoint(run_dir: Path, skipped: list[str] | None = None) -> Checkpoint | None:
    """The newest good checkpoint (damaged newer ones are reported and skipped).

    None when the run saved none; CheckpointError when checkpoints exist and none is usable.
    Each skipped file's problem is appended to ``skipped`` when given, else logged.
    """
    files = checkpoint_files(run_dir)
    legacy = Path(run_dir) / CHECKPOINT_DIR / "latest.pkl"
    if not files and legacy.exists():
        raise CheckpointError(
            f"{legacy}: a pickled checkpoint of fedsim < 0.2; this version resumes only its "
            f"own format ({FORMAT_VERSION}): run the experiment again"
        )
    problems = []
    for path in files:
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            note = f"skipping a damaged checkpoint: {exc}"
            if skipped is not None:
                skipped.append(note)
            else:
                log.warning(note)
            continue
        return ckpt
    if problems:
        raise CheckpointError("no usable checkpoint: " + "; ".join(problems))
    return None


def latest_round(run_dir: Path) -> int:
    """The round of the newest checkpoint file (by name; not verified), 0 if none."""
    files = checkpoint_files(run_dir)
    return int(files[0].stem.split("-")[1]) if files else 0
