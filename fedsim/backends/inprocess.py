"""In-process backend: a Flower ``Grid`` that calls the ClientApp directly.

One persistent ``Context`` per virtual node (its ``state`` survives across rounds, as on
a SuperNode, and is checkpointed through ``InProcessClientStates``). No threads, no
serialisation, no actors: the overhead over a bare training loop is a few dictionary
operations per message, and results are exactly repeatable.

Calls run one after another, so an exchange's deadline (``timeout``, from
``run.exchange_timeout``) means: once it has passed, the remaining messages of that exchange
are not delivered and count as missing replies, as they would on a busy cluster.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedsim.compat import set_message_id
from fedsim.seeding import NODE_IDS, derive_seed

CLIENT_EXCEPTION = 1  # error code of a reply whose ClientApp raised


class InProcessGrid(Grid):
    """Grid over ``num_nodes`` virtual SuperNodes living in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        seed: int = 0,
        run_id: int = 1,
        node_configs: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """``node_configs``: extra node config per partition id (e.g. ``data-path``), as a
        SuperNode's ``--node-config`` would give it; ``clients.data_paths`` fills it."""
        self.client_app = client_app
        extra = list(node_configs) + [{}] * (num_nodes - len(node_configs))
        rng = np.random.default_rng(derive_seed(seed, NODE_IDS))
        ids = rng.choice(2**62, size=num_nodes, replace=False) + 1
        self._node_ids = [int(i) for i in ids]
        self.contexts: dict[int, Context] = {
            node_id: Context(
                run_id=run_id,
                node_id=node_id,
                node_config={"partition-id": pid, "num-partitions": num_nodes, **extra[pid]},
                state=RecordDict(),
                run_config={},
            )
            for pid, node_id in enumerate(self._node_ids)
        }
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        # called after each reply of an exchange (FederationContext sets it: live progress)
        self.on_reply: Callable[[], None] | None = None
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

    def known_partitions(self) -> dict[int, int]:
        """Node id -> partition id: fedsim made the nodes, so no discovery round is needed."""
        return {node: int(c.node_config["partition-id"]) for node, c in self.contexts.items()}

    def push_messages(
        self, messages: Iterable[Message], deadline: float | None = None
    ) -> Iterable[str]:
        ids = []
        for message in messages:
            set_message_id(message, uuid4().hex)
            ids.append(message.metadata.message_id)
            if deadline is not None and time.monotonic() > deadline:
                continue  # past the exchange's deadline: this client never answers
            reply = self._deliver(message)
            set_message_id(reply, uuid4().hex)
            self._replies[message.metadata.message_id] = reply
            if self.on_reply is not None:
                self.on_reply()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        deadline = time.monotonic() + timeout if timeout else None
        return self.pull_messages(self.push_messages(messages, deadline))

    # -- delivery ---------------------------------------------------------------------
    def _deliver(self, message: Message) -> Message:
        """Run the ClientApp for one message; failures become error replies, as on Flower."""
        context = self.contexts[message.metadata.dst_node_id]
        try:
            return self.client_app(message, context)
        except Exception as exc:  # a failing client must not end the run
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            return Message(Error(code=CLIENT_EXCEPTION, reason=reason), reply_to=message)


class InProcessClientStates:
    """Every virtual node's ``Context.state`` by partition id, for checkpoints."""

    def __init__(self, grid: InProcessGrid) -> None:
        self.grid = grid

    def capture(self) -> dict[int, RecordDict]:
        return {int(c.node_config["partition-id"]): c.state for c in self.grid.contexts.values()}

    def restore(self, states: dict[int, RecordDict]) -> None:
        for context in self.grid.contexts.values():
            pid = int(context.node_config["partition-id"])
            if pid in states:
                context.state = states[pid]
