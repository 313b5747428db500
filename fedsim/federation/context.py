"""The federation a strategy talks to: partition ids, stages, failures, exchanges.

Flower's Strategy API hands a strategy a ``Grid`` and nothing else. fedsim strategies that
need more (who is partition 3? run a scoring query before training; several exchanges per
round) get this object explicitly through ``bind(ctx)`` instead of looking attributes up on
the Grid. Every message goes through ``exchange``, which does what no strategy should have to:
- lists nodes in partition-id order, so seeded sampling picks the same clients on every
  backend (node ids themselves are random);
- sorts replies by partition id (sums in a fixed order give bitwise-identical results);
- counts the array bytes sent down and up per client and stage (``comm.csv``);
- turns error replies, missing replies, replies larger than ``run.max_reply_mb`` (refused
  before any array is decoded) and replies that fail the method's check into reported
  failures that strategies never aggregate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsim.errors import FedsimError
from fedsim.federation.chunks import chunks_of, summarise_chunk
from fedsim.federation.replies import (
    ReplyValidator,
    array_bytes,
    check_reply,
    same_arrays_as_sent,
)

if TYPE_CHECKING:
    from fedsim.systems.clock import VirtualClock

WHOAMI = "fedsim.whoami"
INVALID_REPLY = 3
LATE_REPLY = 5  # error code of a reply the virtual clock left out (deadline, over-commitment)


class FederationError(FedsimError, RuntimeError):
    """The federation could not be formed or used (nodes missing, discovery failed)."""


@dataclass(frozen=True)
class Failure:
    partition_id: int
    stage: str
    reason: str


@dataclass
class Exchange:
    """What one exchange moved: bytes per partition each way, and who failed."""

    server_round: int
    stage: str
    sent_to: tuple[int, ...]
    down: dict[int, int] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)


class FederationContext:
    """See the module docstring. One per run; the loop sets ``server_round`` and ``stage``."""

    def __init__(
        self,
        grid: Grid,
        *,
        expected_nodes: int,
        node_wait: float = 120.0,
        exchange_timeout: float = 0.0,
        validate_reply: ReplyValidator | None = None,
        on_exchange: Callable[[Exchange], None] | None = None,
        max_reply_mb: float = 0.0,
        on_reply: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.inner = grid
        self.expected_nodes = expected_nodes
        self.node_wait = node_wait
        self.exchange_timeout = exchange_timeout
        self.max_reply_mb = max_reply_mb
        self.validate_reply = validate_reply or same_arrays_as_sent
        self.on_exchange = on_exchange
        self.on_reply = on_reply  # (stage, replies so far, messages sent), per reply
        self.server_round = 0
        self.stage = "train"
        self.exchanges: list[Exchange] = []  # this round's, in order
        self._partition_of: dict[int, int] = {}
        self._node_of: dict[int, int] = {}
        self.grid = FederationGrid(self)
        # [systems]: the virtual clock (fedsim.systems.clock); None = instant rounds, every
        # client always online. The loop sets it before round 1.
        self.clock: VirtualClock | None = None
        self._online: list[int] | None = None
        # The training stage's own seeded ``random.Random`` (the loop sets it each round): a
        # strategy that runs its own round (``train_round``) samples with it, never with the
        # global ``random``, which Flower's threads also draw from (fedsim.seeding).
        self.random = random.Random(0)

    # -- who is who -----------------------------------------------------------------------
    @property
    def partition_ids(self) -> list[int]:
        """The partitions a round may sample: every one, or under ``[systems]`` those online
        at the round's start."""
        return list(self._online) if self._online is not None else sorted(self._node_of)

    @property
    def all_partition_ids(self) -> list[int]:
        return sorted(self._node_of)

    def node_of(self, partition_id: int) -> int:
        return self._node_of[partition_id]

    def partition_of(self, node_id: int) -> int:
        return self._partition_of.get(node_id, -1)

    def discover(self) -> None:
        """Learn every node's partition id.

        fedsim's own grids know them (``known_partitions()``: no message at all); on Flower's
        runtimes the server waits for every node and asks each one (a QUERY message).
        """
        known = getattr(self.inner, "known_partitions", None)
        if known is not None:
            self._partition_of = dict(known())
            self._node_of = {pid: node for node, pid in self._partition_of.items()}
            return
        deadline = time.monotonic() + self.node_wait
        while len(ids := list(self.inner.get_node_ids())) < self.expected_nodes:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(ids)} of {self.expected_nodes} nodes connected after "
                    f"{self.node_wait:.0f}s (run.node_wait)"
                )
            time.sleep(0.2)
        query = RecordDict({"config": ConfigRecord({WHOAMI: 1})})
        messages = [Message(query, node_id, MessageType.QUERY) for node_id in ids]
        for reply in self.inner.send_and_receive(messages, timeout=self._timeout()):
            if reply.has_error():
                raise FederationError(f"node discovery failed: {reply.error.reason}")
            pid = int(reply.content["whoami"]["partition-id"])
            self._partition_of[reply.metadata.src_node_id] = pid
        if len(self._partition_of) != self.expected_nodes:
            raise FederationError(
                f"node discovery: {len(self._partition_of)} of {self.expected_nodes} replied"
            )
        self._node_of = {pid: node for node, pid in self._partition_of.items()}

    # -- rounds and exchanges -------------------------------------------------------------
    def begin_round(self, server_round: int) -> None:
        self.server_round = server_round
        self.exchanges = []
        if self.clock is not None:
            self._online = self.clock.begin_round()

    def end_round(self) -> dict[str, float] | None:
        """The virtual clock's row for the round just run (None without ``[systems]``)."""
        return self.clock.end_round() if self.clock is not None else None

    def message(self, content: RecordDict, partition_id: int, message_type: str) -> Message:
        """A message to one partition (``message_type`` may be ``"train.<action>"``)."""
        return Message(content, self.node_of(partition_id), message_type)

    def _progress(self, stage: str, total: int) -> Callable[[], None] | None:
        """A callable to run after each client's reply: ``on_reply(stage, done, total)``."""
        report, done = self.on_reply, 0
        if report is None:
            return None

        def replied() -> None:
            nonlocal done
            done += 1
            report(stage, done, total)

        return replied

    def _send_and_receive(self, messages: list[Message], stage: str) -> list[Message]:
        """The grid's ``send_and_receive``; fedsim's own grids (in-process, Ray) also report
        each reply as it arrives, to ``on_reply``: a round of slow clients shows progress."""
        replied = self._progress(stage, len(messages))
        hooked = replied is not None and hasattr(self.inner, "on_reply")
        if hooked:
            self.inner.on_reply = replied
        try:
            return list(self.inner.send_and_receive(messages, timeout=self._timeout()))
        finally:
            if hooked:
                self.inner.on_reply = None

    def exchange(
        self,
        messages: Iterable[Message],
        *,
        stage: str | None = None,
        validate: ReplyValidator | None = None,
        chunk_size: int = 0,
    ) -> list[Message]:
        """Send, wait, check; return replies (errors included) sorted by partition id.

        ``stage`` names the exchange in ``comm.csv`` and failure reports (default: the
        loop's current stage); ``validate`` overrides the method's reply check for it.
        With ``chunk_size`` the replies are the chunks' partial sums instead, one per chunk
        with a usable reply (``fedsim.federation.chunks``); failures are per client as ever.
        """
        if chunk_size and validate is not None:
            # a worker summing a chunk applies the method's own check (it has no other)
            raise ValueError("exchange: a chunked exchange checks replies by the method's rule")
        stage = stage or self.stage
        check = validate or self.validate_reply
        messages = list(messages)
        record = self._outgoing(messages, stage)
        if chunk_size:
            return self._finish(record, self._chunked(record, messages, stage, check, chunk_size))
        replies = self._send_and_receive(messages, stage)
        sent_by_id = {m.metadata.message_id: m for m in messages}
        checked: list[Message] = []
        for reply in replies:
            sent = sent_by_id.get(reply.metadata.reply_to_message_id)
            checked.append(self._check_one(record, sent, reply, check))
        answered = {r.metadata.reply_to_message_id for r in replies}
        for msg in messages:
            if msg.metadata.message_id not in answered:
                pid = self.partition_of(msg.metadata.dst_node_id)
                record.failures.append(Failure(pid, stage, "no reply before the deadline"))
        if self.clock is not None and self.clock.synchronous and stage.split(".")[0] == "train":
            checked = self._timed(record, checked, sent_by_id)
        checked.sort(key=lambda m: self.partition_of(m.metadata.src_node_id))
        return self._finish(record, checked)

    def _timed(
        self, record: Exchange, replies: list[Message], sent_by_id: dict[str, Message]
    ) -> list[Message]:
        """Charge each usable training reply its virtual time; a client the clock leaves out
        (deadline, over-commitment) becomes a failure like any other."""
        assert self.clock is not None
        times: dict[int, float] = {}
        for reply in replies:
            if reply.has_error():
                continue
            pid = self.partition_of(reply.metadata.src_node_id)
            records = reply.content.metric_records.values()
            metrics = {k: v for rec in records for k, v in rec.items()}
            times[pid] = self.clock.charge(
                pid, metrics, record.down.get(pid, 0), record.up.get(pid, 0)
            )
        dropped = self.clock.settle(times)
        if not dropped:
            return replies
        out = []
        for reply in replies:
            pid = self.partition_of(reply.metadata.src_node_id)
            if pid in dropped and not reply.has_error():
                record.failures.append(Failure(pid, record.stage, dropped[pid]))
                sent = sent_by_id[reply.metadata.reply_to_message_id]
                reply = Message(Error(LATE_REPLY, dropped[pid]), reply_to=sent)
            out.append(reply)
        return out

    def _outgoing(self, messages: list[Message], stage: str) -> Exchange:
        """The record of messages about to be sent: who, and the array bytes each gets."""
        record = Exchange(
            self.server_round,
            stage,
            tuple(sorted(self.partition_of(m.metadata.dst_node_id) for m in messages)),
        )
        for msg in messages:
            pid = self.partition_of(msg.metadata.dst_node_id)
            record.down[pid] = record.down.get(pid, 0) + array_bytes(msg.content)
        return record

    def _check_one(
        self, record: Exchange, sent: Message | None, reply: Message, check: ReplyValidator
    ) -> Message:
        """One reply checked: its bytes up counted, a refused one turned into an error reply
        and a failure of ``record``."""
        if reply.has_error() and sent is not None:
            # An error the SuperLink writes for a node it lost ("Node Unavailable") does
            # not come from that node: it is the node the message was sent to.
            reply = Message(reply.error, reply_to=sent)
        pid = self.partition_of(reply.metadata.src_node_id)
        size, problem = check_reply(record.stage, sent, reply, check, self.max_reply_mb)
        if not reply.has_error():
            record.up[pid] = record.up.get(pid, 0) + size
        if problem is not None:
            record.failures.append(Failure(pid, record.stage, problem))
        if problem is not None and not reply.has_error():
            return Message(Error(INVALID_REPLY, problem), reply_to=sent)
        return reply

    def _finish(self, record: Exchange, replies: list[Message]) -> list[Message]:
        record.failures.sort(key=lambda f: f.partition_id)
        self.exchanges.append(record)
        if self.on_exchange is not None:
            self.on_exchange(record)
        return replies

    def _chunked(
        self,
        record: Exchange,
        messages: list[Message],
        stage: str,
        check: ReplyValidator,
        chunk_size: int,
    ) -> list[Message]:
        """The chunks' partial sums, each as a reply to its chunk's first message. A grid
        that runs whole chunks (``run_chunks``: Ray's workers) sums them where they train;
        on any other the clients answer one by one and the sums are made here, by the same
        functions, so the bytes are the same."""
        messages.sort(key=lambda m: self.partition_of(m.metadata.dst_node_id))
        chunks = chunks_of(messages, chunk_size)
        run_chunks = getattr(self.inner, "run_chunks", None)
        if run_chunks is not None:
            progress = self._progress(stage, len(messages))
            results = run_chunks(chunks, stage, self.max_reply_mb, self._timeout(), progress)
        else:
            replies = self._send_and_receive(messages, stage)
            by_sent = {reply.metadata.reply_to_message_id: reply for reply in replies}
            results = [
                summarise_chunk(chunk, by_sent, stage, check, self.max_reply_mb) for chunk in chunks
            ]
        partials: list[Message] = []
        for chunk, result in zip(chunks, results):
            for outcome in result.outcomes:
                pid = self.partition_of(outcome.node_id)
                if outcome.failure is None or outcome.up_bytes:
                    record.up[pid] = record.up.get(pid, 0) + outcome.up_bytes
                if outcome.failure is not None:
                    record.failures.append(Failure(pid, stage, outcome.failure))
            if result.partial is not None:
                partials.append(Message(result.partial, reply_to=chunk[0]))
        return partials

    # -- asynchronous: send now, collect replies as they come ------------------------------
    def push(self, messages: Iterable[Message], *, stage: str) -> dict[str, Message]:
        """Send without waiting (a real-time asynchronous server); returns the messages by
        id, for ``pull``. Their bytes down count in this round's ``stage``."""
        messages = list(messages)
        record = self._outgoing(messages, stage)
        ids = list(self.inner.push_messages(messages))
        self._finish(record, [])
        return dict(zip(ids, messages))

    def pull(self, sent: dict[str, Message], *, stage: str) -> list[tuple[str, Message]]:
        """The replies to ``sent`` that have arrived, as (message id, reply) in partition
        order, checked like an exchange's (a refused reply becomes an error reply and a
        failure). Their bytes up count in the round in which they arrive."""
        record = Exchange(self.server_round, stage, ())
        out = []
        for reply in self.inner.pull_messages(list(sent)):
            msg_id = reply.metadata.reply_to_message_id
            original = sent.get(msg_id)
            if original is not None:
                out.append((msg_id, self._check_one(record, original, reply, self.validate_reply)))
        out.sort(key=lambda item: self.partition_of(sent[item[0]].metadata.dst_node_id))
        if out:
            self._finish(record, [])
        return out

    def report_failures(self, stage: str, failures: list[Failure]) -> None:
        """Failures a strategy decides on without an exchange (an asynchronous server's
        too-stale arrival): recorded like an exchange's, moving no bytes."""
        record = Exchange(self.server_round, stage, ())
        record.failures.extend(failures)
        self._finish(record, [])

    def round_failures(self, stage_prefix: str | None = None) -> list[Failure]:
        """This round's failures, optionally only of stages starting with ``stage_prefix``."""
        return [
            f
            for ex in self.exchanges
            if stage_prefix is None or ex.stage.split(".")[0] == stage_prefix
            for f in ex.failures
        ]

    def _timeout(self) -> float | None:
        return self.exchange_timeout or None


class FederationGrid(Grid):
    """The Grid Flower's strategies see: nodes in partition order, sends through ``exchange``."""

    def __init__(self, ctx: FederationContext) -> None:
        self.ctx = ctx

    def set_run(self, run: Run) -> None:
        self.ctx.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.ctx.inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [self.ctx.node_of(pid) for pid in self.ctx.partition_ids]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.ctx.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.ctx.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.ctx.exchange(messages)
