"""Reply checks: what makes a client's reply unusable before any strategy sees it.

Two layers. ``non_finite`` applies to every reply of every method: NaN or Inf in an array
or a metric is never aggregatable. ``same_arrays_as_sent`` is the default shape check of
methods whose clients send back what they received (model weights, adapters); a method
whose replies differ in kind (activations up, gradients down, statistics) declares its own
``validate_reply`` in its ``Method`` and the engine uses that instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from flwr.app import Message, RecordDict

# (stage, sent, reply) -> why the reply cannot be used, or None.
ReplyValidator = Callable[[str, Message, Message], str | None]


def non_finite(reply: RecordDict) -> str | None:
    """Why a reply holds NaN/Inf (arrays or metrics), or None."""
    for rec in reply.array_records.values():
        for key, arr in rec.items():
            values = arr.numpy()
            if values.dtype.kind in "fc" and not np.isfinite(values).all():
                return f"array '{key}' holds NaN or Inf"
    for rec in reply.metric_records.values():
        for key, value in rec.items():
            vals = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in vals):
                return f"metric '{key}' is NaN or Inf"
    return None


def same_arrays_as_sent(stage: str, sent: Message, reply: Message) -> str | None:
    """Every array in the reply has a namesake of the same shape in what was sent."""
    sent_arrays = {k: a for rec in sent.content.array_records.values() for k, a in rec.items()}
    if not sent_arrays:
        return None
    for rec in reply.content.array_records.values():
        for key, arr in rec.items():
            ref = sent_arrays.get(key)
            if ref is None:
                return f"unexpected array '{key}'"
            if tuple(arr.shape) != tuple(ref.shape):
                return f"array '{key}' has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
    return None


def array_bytes(content: RecordDict) -> int:
    """Bytes of every array in a message: what dominates the wire."""
    return sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
