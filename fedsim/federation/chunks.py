"""Chunked aggregation (``clients.chunk_size``): a round's clients in fixed chunks, each
chunk summed where it trained, so a worker returns one partial sum instead of every model.

For methods whose aggregate is the weighted mean by ``num-examples`` (``Method.
chunked_aggregation``: FedAvg, FedProx and the first step of FedAdam, FedYogi and FedAvgM).
The arithmetic is fixed by the config, never by the backend or the number of workers:

1. the round's messages are sorted by partition id and cut into chunks of ``chunk_size``
   (the last one shorter), whoever trains them;
2. a chunk's usable replies (each checked as every reply is: ``check_reply``) are summed in
   partition order, in float64: ``S_c = sum_i n_i * a_i`` per array, ``sum_i n_i * m_i`` per
   metric, and ``N_c = sum_i n_i`` (``reduce_chunk``);
3. the server sums the chunks in order and divides once: ``mean = (sum_c S_c) / (sum_c N_c)``,
   cast back to each array's dtype (``combine``).

So metrics.jsonl is byte-identical in-process, on Ray with any number of workers and under
``flwr run`` for the same ``chunk_size`` (in-process and on Flower's runtimes the server
reduces the per-client replies itself, with the same functions). It differs in the last bits
from ``chunk_size = 0``, which is Flower's own mean (a float32 running sum of ``a_i *
n_i / N``). Traffic (comm.csv) still counts each client's own model up and down: what a
deployment, where every client is its own machine, sends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.array_codec import read_only
from fedsim.federation.replies import ReplyValidator, check_reply, records

WEIGHT_KEY = "num-examples"  # Flower's FedAvg weights replies by this metric
DTYPES = "fedsim.dtypes"  # a partial's ConfigRecord: array key -> the clients' dtype
Metric = float | list[float]


def chunks_of(items: Sequence, size: int) -> list[list]:
    """``items`` (already in partition order) cut into consecutive chunks of ``size``."""
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


@dataclass
class ChunkOutcome:
    """One client of a chunk: the array bytes of its reply, and why it was left out."""

    node_id: int
    up_bytes: int
    failure: str | None  # None: its reply is in the chunk's sum


@dataclass
class ChunkResult:
    """What a chunk sends back: its partial sum (None when no reply was usable) and one
    outcome per message, in the chunk's order."""

    partial: RecordDict | None
    outcomes: list[ChunkOutcome]


def reduce_chunk(replies: Sequence[RecordDict]) -> RecordDict | None:
    """The weighted sums of a chunk's usable replies, in the order given (see the module
    docstring); None for no replies."""
    if not replies:
        return None
    sums: dict[str, np.ndarray] = {}
    scratch: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    metric_sums: dict[str, Metric] = {}
    total = 0
    for content in replies:
        metrics = records(content, MetricRecord)[0]
        weight = metrics[WEIGHT_KEY]
        total += weight
        for record in records(content, ArrayRecord):
            for key, array in record.items():
                values = read_only(array)
                total_so_far = sums.get(key)
                if total_so_far is None:
                    dtypes[key] = str(values.dtype)
                    sums[key] = np.multiply(values, weight, dtype=np.float64)
                else:  # the same float64 product and sum, without temporaries
                    term = scratch.setdefault(key, np.empty(values.shape, np.float64))
                    np.multiply(values, weight, out=term, dtype=np.float64)
                    total_so_far += term
        for key, value in metrics.items():
            if key != WEIGHT_KEY:
                metric_sums[key] = _add(metric_sums.get(key), _scaled(value, weight))
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in sums.items()}),
            "metrics": MetricRecord({**metric_sums, WEIGHT_KEY: total}),
            "config": ConfigRecord({DTYPES: [f"{k}={d}" for k, d in dtypes.items()]}),
        }
    )


def combine(partials: Sequence[RecordDict]) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """The weighted mean from the chunks' partial sums, summed in the order given."""
    if not partials:
        return None, None
    sums: dict[str, np.ndarray] = {}
    metric_sums: dict[str, Metric] = {}
    dtypes: dict[str, str] = {}
    total = 0
    for partial in partials:
        for entry in partial["config"][DTYPES]:
            key, _, dtype = str(entry).partition("=")
            dtypes.setdefault(key, dtype)
        for key, array in partial["arrays"].items():
            values = read_only(array)
            if key in sums:
                sums[key] += values
            else:
                sums[key] = values.copy()
        metrics = partial["metrics"]
        total += metrics[WEIGHT_KEY]
        for key, value in metrics.items():
            if key != WEIGHT_KEY:
                metric_sums[key] = _add(metric_sums.get(key), _scaled(value, 1))
    if total <= 0:
        return None, None
    arrays = ArrayRecord(
        {k: Array(np.asarray(v / total).astype(dtypes[k], copy=False)) for k, v in sums.items()}
    )
    means = {k: [x / total for x in v] if isinstance(v, list) else v / total
             for k, v in metric_sums.items()}  # fmt: skip
    return arrays, MetricRecord(means)


def _scaled(value, factor: float) -> Metric:
    if isinstance(value, list):
        return [float(v) * factor for v in value]
    return float(value) * factor


def _add(old: Metric | None, term: Metric) -> Metric:
    if old is None:
        return term
    if isinstance(term, list):
        return [a + b for a, b in zip(old, term)]  # type: ignore[arg-type]
    return old + term  # type: ignore[operator]


def summarise_chunk(
    chunk: Sequence[Message],
    replies: Mapping[str, Message],
    stage: str,
    validate: ReplyValidator,
    max_reply_mb: float = 0.0,
) -> ChunkResult:
    """A chunk's result from its clients' replies (by the id of the message each answers):
    every reply checked (``check_reply``), the usable ones summed in the chunk's order."""
    outcomes: list[ChunkOutcome] = []
    usable: list[RecordDict] = []
    for sent in chunk:
        node = sent.metadata.dst_node_id
        reply = replies.get(sent.metadata.message_id)
        if reply is None:
            outcomes.append(ChunkOutcome(node, 0, "no reply before the deadline"))
            continue
        size, problem = check_reply(stage, sent, reply, validate, max_reply_mb)
        outcomes.append(ChunkOutcome(node, size, problem))
        if problem is None:
            usable.append(reply.content)
    return ChunkResult(reduce_chunk(usable), outcomes)
