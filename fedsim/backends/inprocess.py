"""In-process backend: a Flower ``Grid`` that calls the ClientApp directly.

One persistent ``Context`` per virtual node (its ``state`` survives across rounds, as on
a SuperNode). No threads, no serialisation, no actors: the overhead over a bare training
loop is a few dictionary operations per message, and results are exactly repeatable.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable
from uuid import uuid4

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedsim.seeding import NODE_IDS, derive_seed

# Error codes carried by replies that never came back properly.
CLIENT_EXCEPTION = 1
CLIENT_TIMEOUT = 2


class InProcessGrid(Grid):
    """Grid over ``num_nodes`` virtual SuperNodes living in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        seed: int = 0,
        run_id: int = 1,
        client_timeout: float = 0.0,
    ) -> None:
        self.client_app = client_app
        self.client_timeout = client_timeout
        rng = np.random.default_rng(derive_seed(seed, NODE_IDS))
        ids = rng.choice(2**62, size=num_nodes, replace=False) + 1
        self._node_ids = [int(i) for i in ids]
        self.contexts: dict[int, Context] = {
            node_id: Context(
                run_id=run_id,
                node_id=node_id,
                node_config={"partition-id": pid, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for pid, node_id in enumerate(self._node_ids)
        }
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    # -- Grid ABC ---------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run  # type: ignore[return-value]

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid4().hex
            reply = self._deliver(message)
            reply.metadata.__dict__["_message_id"] = uuid4().hex
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    # -- delivery ---------------------------------------------------------------------
    def _deliver(self, message: Message) -> Message:
        """Run the ClientApp for one message; failures become error replies, as on Flower."""
        context = self.contexts[message.metadata.dst_node_id]
        start = time.perf_counter()
        try:
            reply = self.client_app(message, context)
        except Exception as exc:  # a failing client must not end the run
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            return Message(Error(code=CLIENT_EXCEPTION, reason=reason), reply_to=message)
        elapsed = time.perf_counter() - start
        if self.client_timeout and elapsed > self.client_timeout:
            reason = f"timed out: {elapsed:.1f}s > client.timeout={self.client_timeout}s"
            return Message(Error(code=CLIENT_TIMEOUT, reason=reason), reply_to=message)
        return reply
