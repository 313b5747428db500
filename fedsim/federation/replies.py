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
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedsim.array_codec import read_only

# (stage, sent, reply) -> why the reply cannot be used, or None.
ReplyValidator = Callable[[str, Message, Message], str | None]


def records(content: RecordDict, kind: type) -> list:
    """``content``'s records of one kind, in order. ``RecordDict.array_records`` and
    ``metric_records`` build a type-checked dict on every access, which for a round of
    many small clients costs more than the checks that read them."""
    return [record for record in content.values() if isinstance(record, kind)]


def non_finite(reply: RecordDict) -> str | None:
    """Why a reply holds NaN/Inf (arrays or metrics), or None."""
    for rec in records(reply, ArrayRecord):
        for key, arr in rec.items():
            values = read_only(arr)
            if values.dtype.kind in "fc" and not np.isfinite(values).all():
                return f"array '{key}' holds NaN or Inf"
    for rec in records(reply, MetricRecord):
        for key, value in rec.items():
            vals = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in vals):
                return f"metric '{key}' is NaN or Inf"
    return None


def same_arrays_as_sent(stage: str, sent: Message, reply: Message) -> str | None:
    """Every array in the reply has a namesake of the same shape in what was sent."""
    sent_arrays = {k: a for rec in records(sent.content, ArrayRecord) for k, a in rec.items()}
    if not sent_arrays:
        return None
    for rec in records(reply.content, ArrayRecord):
        for key, arr in rec.items():
            ref = sent_arrays.get(key)
            if ref is None:
                return f"unexpected array '{key}'"
            if tuple(arr.shape) != tuple(ref.shape):
                return f"array '{key}' has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
    return None


def too_large(size: int, max_reply_mb: float) -> str | None:
    """Why a reply of ``size`` array bytes is refused (``run.max_reply_mb``), or None.
    Checked before NaN scans and the method's check turn the buffers into arrays."""
    if max_reply_mb and size > max_reply_mb * 1e6:
        return f"reply of {size / 1e6:.1f} MB exceeds run.max_reply_mb = {max_reply_mb:g}"
    return None


def check_reply(
    stage: str,
    sent: Message | None,
    reply: Message,
    validate: ReplyValidator,
    max_reply_mb: float = 0.0,
) -> tuple[int, str | None]:
    """(array bytes of the reply, why it cannot be used or None): an error reply, one over
    ``max_reply_mb``, one holding NaN/Inf, or one the method's check refuses. The same checks
    wherever replies are gathered: the server's exchange, or a worker summing a chunk."""
    if reply.has_error():
        return 0, reply.error.reason
    size = array_bytes(reply.content)  # lengths of the raw buffers: nothing decoded
    problem = too_large(size, max_reply_mb) or non_finite(reply.content)
    if problem is None and sent is not None:
        problem = validate(stage, sent, reply)
    return size, problem


def array_bytes(content: RecordDict) -> int:
    """Bytes of every array in a message: what dominates the wire."""
    return sum(len(a.data) for rec in records(content, ArrayRecord) for a in rec.values())
