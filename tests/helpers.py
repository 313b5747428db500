"""Test doubles: a crash at a chosen round, and a Grid of scripted nodes for strategy tests.

``StubGrid`` answers fedsim's node discovery like real nodes and every other message with a
function of (partition id, message), so a strategy runs against a real
``FederationContext`` in milliseconds, without any client training.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedsim.federation.callbacks import Callback
from fedsim.federation.context import WHOAMI, FederationContext

Respond = Callable[[int, Message], Message]


class CrashAfter(Callback):
    """Raises after round ``n`` (its checkpoint is written first): a crash mid-run."""

    def __init__(self, n: int, message: str = "simulated crash") -> None:
        self.n, self.message = n, message

    def on_round_end(self, run, server_round, metrics):
        if server_round == self.n:
            raise RuntimeError(self.message)


class RepliesSeen(Callback):
    """Records every ``on_reply``: (round, stage, replies so far, messages sent)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, int, int]] = []

    def on_reply(self, run, stage, done, total) -> None:
        self.seen.append((run.server_round, stage, done, total))


class StubGrid(Grid):
    """``num`` nodes (node id = 1000 + partition id) answering with ``respond``."""

    def __init__(self, num: int, respond: Respond | None = None) -> None:
        TaskIdentity.task_id, TaskIdentity.run_id = 1, 1  # Flower needs it to build messages
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self.num = num
        self.respond = respond
        self.sent: list[Message] = []  # every non-discovery message, in order

    def set_run(self, run) -> None:  # pragma: no cover - the Grid ABC requires it
        pass

    @property
    def run(self):  # pragma: no cover
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [1000 + pid for pid in range(self.num)]

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}-{i}"
            pid = msg.metadata.dst_node_id - 1000
            if WHOAMI in msg.content.config_records.get("config", ConfigRecord()):
                content = RecordDict({"whoami": ConfigRecord({"partition-id": pid})})
                reply = Message(content, reply_to=msg)
            else:
                self.sent.append(msg)
                try:
                    reply = self.respond(pid, msg)
                except Exception as exc:
                    reply = Message(Error(1, f"{type(exc).__name__}: {exc}"), reply_to=msg)
                if reply is None:  # no reply at all: a missing client
                    continue
            reply.metadata.__dict__["_message_id"] = f"r-{msg.metadata.message_id}"
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            replies.append(reply)
        return list(reversed(replies))  # completion order is not partition order


def stub_context(num: int, respond: Respond | None = None, **kwargs) -> FederationContext:
    """A discovered FederationContext over ``num`` scripted nodes."""
    ctx = FederationContext(StubGrid(num, respond), expected_nodes=num, **kwargs)
    ctx.discover()
    return ctx


def fedsim_with(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m fedsim ARGS`` with the packages installed in ``site`` importable (the
    Ray workers it starts inherit the path)."""
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


def rounds_done(run_dir: Path) -> int:
    """The round of the run's newest whole checkpoint (0 before the first), for tests that
    kill a run part-way: a checkpoint caught mid-rename reads as 0, so they just poll again."""
    from fedsim.checkpoint import checkpoint_files, load_checkpoint

    if not checkpoint_files(run_dir):
        return 0
    try:
        return load_checkpoint(run_dir).server_round
    except Exception:  # caught mid-rename: try again
        return 0


def wait_for_rounds(proc: subprocess.Popen, run_dir: Path, rounds: int, within: float = 300):
    """Poll until ``run_dir`` has a checkpoint of ``rounds`` rounds; the run must still be
    alive (its output is shown if it ended) and get there within ``within`` seconds."""
    import time

    deadline = time.monotonic() + within
    while rounds_done(run_dir) < rounds:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no round-{rounds} checkpoint in {within} s"
        time.sleep(0.05)


def kill_9_then_resume(toml: Path, overrides: list[str], killed: Path, after: int, rounds: int):
    """``fedsim run`` of ``toml`` in a subprocess, SIGKILLed once round ``after`` is
    checkpointed (and before round ``rounds``, the last), then ``fedsim resume``d to the end;
    the run directory is ``killed``."""
    import signal

    sets = [arg for o in overrides for arg in ("--set", o)]
    env = {**os.environ, "FEDSIM_RUNS": str(killed.parent / "runs")}
    command = [sys.executable, "-m", "fedsim", "run", str(toml), *sets, "--out", str(killed)]
    proc = subprocess.Popen(command, cwd=killed.parent, env=env, stderr=subprocess.PIPE, text=True)
    wait_for_rounds(proc, killed, after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (killed / "summary.json").exists()
    assert after <= rounds_done(killed) < rounds, "the run must be killed before it finished"
    resumed = subprocess.run(
        [sys.executable, "-m", "fedsim", "resume", str(killed)], cwd=killed.parent, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the OS says are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
