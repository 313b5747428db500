"""A Grid wrapper that makes any backend deterministic, accountable and failure-tolerant.

It sits between a Flower strategy and the real Grid (ours in-process, Flower's under Ray
or a SuperLink) and does four things no strategy should have to:
- lists nodes in partition-id order, so seeded sampling picks the same clients on every
  backend (node ids themselves are random);
- sorts replies by partition id before the strategy aggregates them (sums in a fixed
  order give bitwise-identical results);
- counts the array bytes sent down and up per client, from the records actually sent;
- turns replies that are errors, missing, non-finite or mis-shaped into reported
  failures that the strategy never aggregates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

WHOAMI = "fedsim.whoami"
INVALID_REPLY = 3
NO_REPLY = 4


def array_bytes(content: RecordDict) -> int:
    """Bytes of every array in a message: what dominates the wire."""
    return sum(len(a.data) for rec in content.array_records.values() for a in rec.values())


@dataclass
class Failure:
    partition_id: int
    stage: str
    reason: str


@dataclass
class RoundTraffic:
    """What crossed the wire in one stage of one round, per partition id."""

    down: dict[int, int] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)


def check_reply_arrays(sent: RecordDict, reply: RecordDict) -> str | None:
    """Why a reply's arrays cannot be aggregated against what was sent, or None if fine."""
    sent_arrays = {k: a for rec in sent.array_records.values() for k, a in rec.items()}
    for rec in reply.array_records.values():
        for key, arr in rec.items():
            ref = sent_arrays.get(key)
            if sent_arrays and ref is None:
                return f"unexpected array '{key}'"
            if ref is not None and tuple(arr.shape) != tuple(ref.shape):
                return f"array '{key}' has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
            values = arr.numpy()
            if values.dtype.kind in "fc" and not np.isfinite(values).all():
                return f"array '{key}' holds NaN or Inf"
    for rec in reply.metric_records.values():
        for key, value in rec.items():
            vals = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in vals):
                return f"metric '{key}' is NaN or Inf"
    return None


class FederationGrid(Grid):
    """Wraps a Grid; see the module docstring."""

    def __init__(self, inner: Grid, expected_nodes: int, wait_s: float = 120.0) -> None:
        self.inner = inner
        self.expected_nodes = expected_nodes
        self.wait_s = wait_s
        self.partition_of: dict[int, int] = {}
        self.node_of: dict[int, int] = {}
        self.stage = "train"
        self.failures: list[Failure] = []
        self.traffic = RoundTraffic()
        self.validate: Callable[[RecordDict, RecordDict], str | None] = check_reply_arrays

    # -- discovery --------------------------------------------------------------------
    def discover(self, timeout: float | None = None) -> None:
        """Ask every node for its partition id (a QUERY round); wait for all to register."""
        deadline = time.monotonic() + self.wait_s
        while len(ids := list(self.inner.get_node_ids())) < self.expected_nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(ids)} of {self.expected_nodes} nodes connected "
                    f"after {self.wait_s:.0f}s"
                )
            time.sleep(0.2)
        query = RecordDict({"config": ConfigRecord({WHOAMI: 1})})
        messages = [Message(query, node_id, MessageType.QUERY) for node_id in ids]
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                raise RuntimeError(f"node discovery failed: {reply.error.reason}")
            pid = int(reply.content["whoami"]["partition-id"])
            self.partition_of[reply.metadata.src_node_id] = pid
        if len(self.partition_of) != self.expected_nodes:
            raise RuntimeError(
                f"node discovery: {len(self.partition_of)} of {self.expected_nodes} replied"
            )
        self.node_of = {pid: node for node, pid in self.partition_of.items()}

    # -- Grid ABC ---------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [self.node_of[pid] for pid in sorted(self.node_of)]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send, then return valid replies and error replies, sorted by partition id."""
        messages = list(messages)
        for msg in messages:
            pid = self.partition_of[msg.metadata.dst_node_id]
            self.traffic.down[pid] = self.traffic.down.get(pid, 0) + array_bytes(msg.content)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        sent_by_id = {m.metadata.message_id: m for m in messages}
        checked: list[Message] = []
        for reply in replies:
            sent = sent_by_id.get(reply.metadata.reply_to_message_id)
            pid = self.partition_of.get(reply.metadata.src_node_id, -1)
            if reply.has_error():
                self.failures.append(Failure(pid, self.stage, reply.error.reason))
                checked.append(reply)
                continue
            self.traffic.up[pid] = self.traffic.up.get(pid, 0) + array_bytes(reply.content)
            problem = self.validate(sent.content, reply.content) if sent is not None else None
            if problem:
                self.failures.append(Failure(pid, self.stage, problem))
                checked.append(Message(Error(INVALID_REPLY, problem), reply_to=sent))
            else:
                checked.append(reply)
        answered = {r.metadata.reply_to_message_id for r in replies}
        for msg in messages:
            if msg.metadata.message_id not in answered:
                pid = self.partition_of[msg.metadata.dst_node_id]
                self.failures.append(Failure(pid, self.stage, "no reply before the timeout"))
        checked.sort(key=lambda m: self.partition_of.get(m.metadata.src_node_id, -1))
        return checked

    def take_round_log(self) -> tuple[RoundTraffic, list[Failure]]:
        """Traffic and failures since the last call, then reset."""
        traffic, failures = self.traffic, self.failures
        self.traffic, self.failures = RoundTraffic(), []
        return traffic, failures


__all__ = ["FederationGrid", "array_bytes", "check_reply_arrays", "ArrayRecord"]
