"""Every random stream derives from (seed, round, partition id, purpose).

Deriving instead of carrying one RNG forward makes results independent of how many
clients ran before, of the backend's scheduling, and of where a run was resumed.

The engine's purposes are the small integers below; a method names its own streams with
``purpose("my-method.what")`` (or fixed integers >= 100 kept in its own modules, as FedIT's
in ``fedsim/llm/seeds.py``), so no method's streams are declared here.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

# Purposes, so that two streams of one (seed, round, client) never coincide.
MODEL_INIT = 1
CLIENT_SAMPLING = 2
LOCAL_SHUFFLE = 3
EVAL_SAMPLING = 4
DATA_SUBSET = 5
NODE_IDS = 6
CURRICULUM_ORDER = 7  # data curriculum: 'random' sample order
CLIENT_CURRICULUM = 8  # client curriculum: random client order, the round's draw
DISPARITY_SCORER = 9  # disparity partitioner: scoring model init and its shuffles
EVAL_SUBSET = 10  # eval.max_samples: which test samples the server evaluates on
SERVER_SHARE = 11  # data.server_share: which training samples stay with the server


def purpose(name: str) -> int:
    """A stable purpose number for a named stream (same name, same number, every process)."""
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return (1 << 20) + int.from_bytes(digest, "big") % (1 << 30)


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from the base seed and integer parts (round, partition id, purpose)."""
    state = np.random.SeedSequence([seed, *parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def torch_generator(seed: int, *parts: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(derive_seed(seed, *parts))
    return gen


@contextmanager
def seeded_python_random(seed: int) -> Iterator[None]:
    """Seed Python's global ``random`` for a block, then restore it.

    Flower's strategies sample clients with the global ``random.sample``; seeding it
    around ``configure_train`` makes any Flower strategy's sampling reproducible.
    """
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)
