"""Every random stream derives from (seed, round, partition id, purpose).

Deriving instead of carrying one RNG forward makes results independent of how many
clients ran before, of the backend's scheduling, and of where a run was resumed.

The engine's purposes are the small integers in ``ENGINE_STREAMS``; a method names its own
streams with ``purpose("my-method.what")`` or fixed integers kept in its own modules, and
declares them on its ``Method`` (``streams``); the registry refuses two streams, of the
engine or of any two methods, with one number. No method's stream is declared here.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Purposes, so that two streams of one (seed, round, client) never coincide.
MODEL_INIT = 1
CLIENT_SAMPLING = 2
LOCAL_SHUFFLE = 3
EVAL_SAMPLING = 4
DATA_SUBSET = 5
NODE_IDS = 6
# 7 and 8 are the curriculum's (fedsim_methods.curriculum.streams).
DISPARITY_SCORER = 9  # disparity partitioner: scoring model init and its shuffles
EVAL_SUBSET = 10  # eval.max_samples: which test samples the server evaluates on
SERVER_SHARE = 11  # data.server_share: which training samples stay with the server
CLIENT_DATA = 12  # data.partitioner = "sampled": each client's own draw of training rows
VALIDATION = 13  # data.validation_share: which training samples are held out for validation


def purpose(name: str) -> int:
    """A stable purpose number for a named stream (same name, same number, every process)."""
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return (1 << 20) + int.from_bytes(digest, "big") % (1 << 30)


# The engine's named streams (faults and central DP noise draw from them).
FAULT_DRAW = purpose("fedsim.faults")
DROPOUT_DRAW = purpose("fedsim.faults.dropout")
BYZANTINE_DRAW = purpose("fedsim.faults.byzantine")
DP_NOISE = purpose("privacy.noise")
SYSTEMS_DRAW = purpose("fedsim.systems")  # [systems]: each client's speeds and online window
# Every stream of the engine by name; methods declare theirs on ``Method.streams``.
ENGINE_STREAMS = {
    "model-init": MODEL_INIT,
    "client-sampling": CLIENT_SAMPLING,
    "local-shuffle": LOCAL_SHUFFLE,
    "eval-sampling": EVAL_SAMPLING,
    "data-subset": DATA_SUBSET,
    "node-ids": NODE_IDS,
    "disparity-scorer": DISPARITY_SCORER,
    "eval-subset": EVAL_SUBSET,
    "server-share": SERVER_SHARE,
    "client-data": CLIENT_DATA,
    "validation": VALIDATION,
    "faults": FAULT_DRAW,
    "faults.dropout": DROPOUT_DRAW,
    "faults.byzantine": BYZANTINE_DRAW,
    "privacy.noise": DP_NOISE,
    "systems": SYSTEMS_DRAW,
}


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from the base seed and integer parts (round, partition id, purpose)."""
    state = np.random.SeedSequence([seed, *parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def torch_generator(seed: int, *parts: int) -> torch.Generator:
    import torch  # here: the registry reads this module's stream table without torch

    gen = torch.Generator()
    gen.manual_seed(derive_seed(seed, *parts))
    return gen


@contextmanager
def seeded_python_random(seed: int) -> Iterator[random.Random]:
    """Seed Python's global ``random`` for a block, then restore it; yields a private
    ``random.Random`` seeded the same, which draws the same numbers.

    Flower's strategies sample clients with the global ``random.sample``; seeding it
    around ``configure_train`` makes any Flower strategy's sampling reproducible. Code that
    draws after an exchange must use the private one: under ``flwr run`` Flower itself draws
    from the global ``random`` meanwhile (its heartbeat thread's and its object pulls' retry
    jitter), as often as timing makes it.
    """
    saved = random.getstate()
    random.seed(seed)
    try:
        yield random.Random(seed)
    finally:
        random.setstate(saved)
