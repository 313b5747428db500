"""``run.backend = "ray"``: fedsim's Grid over a pool of long-lived Ray actors.

The server side is the in-process one (same loop, same callbacks); only the delivery of
messages differs. Each actor ("worker") hosts any number of virtual clients: it runs the
ClientApp on a (message, context) pair and sends back the reply and the context's new state.
- Contexts live here, in the driver, as in-process: client state is checkpointed and a
  stateful method (SCAFFOLD) resumes on Ray too.
- A round's content (the global arrays) goes into Ray's object store once, however many
  clients receive it; workers load their data once and keep it (the client's own caches).
- No discovery round: fedsim created the nodes, so it knows their partition ids.
- Ray starts in the background (``ray_start``; ``fedsim run`` begins it before loading the
  experiment), as a lean local head (``ray_lean``); the workers are asked for as soon as
  it is up, while the driver loads data and evaluates round 0, and they load the clients'
  data then too (``fedsim.backends.warm``), not in round 1.
- A worker that dies (a segfault, the OOM killer, a CUDA OOM) is a failed client and is
  replaced; at ``run.exchange_timeout`` the busy workers are stopped and replaced, and
  their clients count as missing.

Results are byte-identical to in-process: the same messages, contexts and thread counts,
and replies sorted by partition id before aggregation.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict

from fedsim.backends.inprocess import CLIENT_EXCEPTION, InProcessGrid
from fedsim.backends.ray_start import RayBackendError, take_start, wait_for_ray_stop
from fedsim.compat import set_message_id
from fedsim.config.schema import Experiment
from fedsim.federation.chunks import ChunkOutcome, ChunkResult, summarise_chunk

__all__ = ["RayBackendError", "RayGrid", "wait_for_ray_stop", "worker_count"]

log = logging.getLogger("fedsim")
WORKER_LOST = 5  # error code of a reply whose worker died


def worker_count(exp: Experiment, cluster_cpus: float, cluster_gpus: float = 0.0) -> int:
    """``run.ray_workers``, or as many workers as the cluster's CPUs and GPUs hold at once
    (``clients.num_cpus`` and ``clients.num_gpus`` each), at most a round's clients. Asking
    for more than fit would leave workers waiting for resources forever: an error instead."""
    clients = exp.clients
    if clients.num_cpus > cluster_cpus:
        raise RayBackendError(
            f"clients.num_cpus = {clients.num_cpus}: the Ray cluster has {cluster_cpus} CPUs"
        )
    if clients.num_gpus > cluster_gpus:
        raise RayBackendError(
            f"clients.num_gpus = {clients.num_gpus}: the Ray cluster has {cluster_gpus} GPUs"
            + (" (set clients.num_gpus = 0 to train on CPUs)" if not cluster_gpus else "")
        )
    fits = int(cluster_cpus // clients.num_cpus)
    if clients.num_gpus > 0:  # 0.25 each: four workers share one GPU
        fits = min(fits, int(round(cluster_gpus / clients.num_gpus, 6)))
    if exp.run.ray_workers:
        if exp.run.ray_workers > fits:
            raise RayBackendError(
                f"run.ray_workers = {exp.run.ray_workers}: the Ray cluster ({cluster_cpus} "
                f"CPUs, {cluster_gpus} GPUs) holds {fits} at once with clients.num_cpus = "
                f"{clients.num_cpus} and clients.num_gpus = {clients.num_gpus}"
            )
        return exp.run.ray_workers
    return max(1, min(fits, clients.per_round))


def _message(content: RecordDict, meta: dict) -> Message:
    """The message a worker's client receives, rebuilt from its content and metadata."""
    message = Message(
        content,
        meta["dst_node_id"],
        meta["message_type"],
        ttl=meta["ttl"],
        group_id=meta["group_id"],
    )
    set_message_id(message, meta["message_id"])
    return message


def _meta(message: Message) -> dict:
    return {
        "dst_node_id": message.metadata.dst_node_id,
        "message_type": message.metadata.message_type,
        "message_id": message.metadata.message_id,
        "ttl": message.metadata.ttl,
        "group_id": message.metadata.group_id,
    }


class _Worker:
    """One Ray actor: runs the ClientApp for (message, context) pairs, any partition."""

    def __init__(self, run_id: int, gpu_fraction: float) -> None:
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id = 1, run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        self.gpu_fraction = gpu_fraction
        import torch

        if gpu_fraction > 0 and torch.cuda.is_available():
            # A client cannot take more of the GPU than it was given.
            torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_fraction))
        from fedsim.client_app import client_app

        self.client_app = client_app

    def ready(self) -> int:
        return os.getpid()

    def warm(self, config_text: str) -> str | None:
        """Load what the clients' first call would (``fedsim.backends.warm``),
        while the driver prepares round 0. A failure is returned, not raised: the first
        client call meets it again and reports it as that client's failure."""
        from fedsim.backends.warm import warm_up
        from fedsim.config.wire import experiment_from_text
        from fedsim.threads import torch_threads

        try:
            exp = experiment_from_text(config_text)
            with torch_threads(exp.clients.num_cpus):
                warm_up(exp)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def run(self, content: RecordDict, meta: dict, context: Context) -> tuple[Message, RecordDict]:
        return self._call(_message(content, meta), context), context.state

    def run_chunk(
        self,
        content: RecordDict,
        metas: list[dict],
        contexts: list[Context],
        stage: str,
        max_reply_mb: float,
    ) -> tuple[ChunkResult, list[RecordDict]]:
        """Train a chunk's clients one after another and return their checked, summed
        replies (``fedsim.federation.chunks``) and their contexts' new states."""
        from fedsim.config.wire import experiment_of
        from fedsim.federation.replies import same_arrays_as_sent
        from fedsim.registry import get_method

        sent = [_message(content, meta) for meta in metas]
        replies = {m.metadata.message_id: self._call(m, c) for m, c in zip(sent, contexts)}
        states = [context.state for context in contexts]
        try:  # the server's checks (FederationContext), here: a bad reply leaves its client out
            method = get_method(experiment_of(sent[0]).method)
            validate = method.reply_validator() or same_arrays_as_sent
            return summarise_chunk(sent, replies, stage, validate, max_reply_mb), states
        except Exception as exc:  # the chunk cannot be summed: each of its clients failed
            return _failed(sent, f"chunk not summed: {type(exc).__name__}: {exc}"), states

    def _call(self, message: Message, context: Context) -> Message:
        try:
            return self.client_app(message, context)
        except Exception as exc:  # a failing client must not kill its worker
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            return Message(Error(code=CLIENT_EXCEPTION, reason=reason), reply_to=message)
        finally:
            if self.gpu_fraction > 0:
                self._free_gpu()

    @staticmethod
    def _free_gpu() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class RayGrid(InProcessGrid):
    """An InProcessGrid whose deliveries run on Ray workers (see the module docstring)."""

    def __init__(self, client_app, exp: Experiment, run_id: int = 1) -> None:
        from fedsim.data.client import node_configs

        super().__init__(
            client_app, exp.clients.num, exp.run.seed, run_id=run_id, node_configs=node_configs(exp)
        )
        from fedsim.config.load import to_toml

        self.exp = exp
        self.run_id = run_id
        self._config_text = to_toml(exp)
        self.workers: list = []
        self._ready = False
        self._start()

    # -- workers --------------------------------------------------------------------------
    def _start(self) -> None:
        """Take over Ray's start (begun early by ``fedsim run``, or begun now: both in the
        background, ``fedsim.backends.ray_start``) and ask for the workers as soon as Ray is
        up, from a short-lived thread: the driver meanwhile builds the model, loads the
        server's data and evaluates round 0, and ``wait_ready`` joins them."""
        self._ray = take_start(self.exp.run.ray_address)
        self._booted = threading.Event()
        self._boot_error: BaseException | None = None
        threading.Thread(target=self._boot, name="fedsim-ray-workers", daemon=True).start()

    def _boot(self) -> None:
        try:
            self._cluster = self._ray.wait()
            self._start_workers()
        except BaseException as exc:  # raised in the driver's thread, by wait_ready
            self._boot_error = exc
        finally:
            self._booted.set()

    def _start_workers(self) -> None:
        import ray

        exp = self.exp
        cpus, gpus = self._cluster
        count = worker_count(exp, cpus, gpus)
        self._actor = ray.remote(num_cpus=exp.clients.num_cpus, num_gpus=exp.clients.num_gpus)(
            _Worker
        )
        self.workers = [self._new_worker() for _ in range(count)]
        log.info("ray backend: %d workers starting (%s CPUs, %s GPUs)", count, cpus, gpus)

    def _new_worker(self):
        worker = self._actor.remote(self.run_id, self.exp.clients.num_gpus)
        worker.warm.remote(self._config_text)  # queued first: runs before any client call
        return worker

    def wait_ready(self) -> None:
        """Block until Ray is up and every worker has booted (once)."""
        if self._ready:
            return
        self._booted.wait()
        if self._boot_error is not None:
            raise self._boot_error
        import ray

        try:
            ray.get([w.ready.remote() for w in self.workers])
        except ray.exceptions.RayError as exc:
            raise RayBackendError(f"a ray worker failed to start: {exc}") from exc
        self._ready = True

    def shutdown(self) -> None:
        """Stop the workers, and the local Ray this grid started: in the background, as
        that waits about a second for Ray's processes to exit, while the run writes its
        summary and plots. The next ``RayGrid`` (and the interpreter's exit) waits for it."""
        self._booted.wait()  # a start still under way finishes first
        import gc

        import ray

        # Object refs caught in reference cycles (a lost worker's error keeps the frames that
        # held the round's pending refs) must go while Ray is up: freed after it stops, they
        # end the process with "the core worker has already been shutdown".
        gc.collect()

        if ray.is_initialized():
            for worker in self.workers:
                ray.kill(worker)
        self.workers = []
        self._ray.stop()

    # -- Grid --------------------------------------------------------------------------------
    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self.wait_ready()
        messages = list(messages)
        shared = self._share(messages)
        replies: list[Message] = []

        def submit(worker, message: Message):
            context = self.contexts[message.metadata.dst_node_id]
            return worker.run.remote(shared[id(message.content)], _meta(message), context)

        def collect(ref, index: int, message: Message) -> None:
            replies.append(self._collect(ref, index, message))
            if self.on_reply is not None:
                self.on_reply()

        self._on_workers(messages, submit, collect, timeout)
        return replies

    def _share(self, messages: Iterable[Message]) -> dict[int, object]:
        """Give each message its id, and each distinct content one object-store copy."""
        import ray

        shared: dict[int, object] = {}
        for message in messages:
            set_message_id(message, uuid4().hex)
            if id(message.content) not in shared:
                shared[id(message.content)] = ray.put(message.content)
        return shared

    def _on_workers(
        self,
        jobs: list,
        submit: Callable[[object, object], object],
        collect: Callable[[object, int, object], None],
        timeout: float | None,
    ) -> None:
        """Each job to the next idle worker (``submit(worker, job) -> ref``), each result to
        ``collect(ref, worker index, job)`` as it comes; at ``timeout`` the busy workers are
        stopped and replaced, and their jobs are never collected."""
        import ray

        queue, idle = deque(jobs), deque(range(len(self.workers)))
        pending: dict = {}
        deadline = time.monotonic() + timeout if timeout else None
        while queue or pending:
            while queue and idle:
                index, job = idle.popleft(), queue.popleft()
                pending[submit(self.workers[index], job)] = (index, job)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            if not done:  # the deadline passed: busy workers are replaced, the rest missing
                for index, _ in pending.values():
                    ray.kill(self.workers[index])
                    self.workers[index] = self._new_worker()
                return
            for ref in done:
                index, job = pending.pop(ref)
                collect(ref, index, job)
                idle.append(index)

    def _collect(self, ref, index: int, message: Message) -> Message:
        import ray

        try:
            reply, state = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker died: a failed client
            self.workers[index] = self._new_worker()
            reason = f"worker lost: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            reply, state = Message(Error(code=WORKER_LOST, reason=reason), reply_to=message), None
        if state is not None:
            self.contexts[message.metadata.dst_node_id].state = state
        set_message_id(reply, uuid4().hex)
        return reply

    def run_chunks(
        self,
        chunks: list[list[Message]],
        stage: str,
        max_reply_mb: float,
        timeout: float | None,
        progress: Callable[[], None] | None,
    ) -> list[ChunkResult]:
        """Each chunk trained and summed on one worker (``clients.chunk_size``); a chunk
        whose worker died or passed the deadline counts each of its clients as failed."""
        self.wait_ready()
        shared = self._share(m for chunk in chunks for m in chunk)
        results: dict[int, ChunkResult] = {}

        def submit(worker, at: int):
            chunk = chunks[at]
            contexts = [self.contexts[m.metadata.dst_node_id] for m in chunk]
            metas = [_meta(m) for m in chunk]
            content = shared[id(chunk[0].content)]
            return worker.run_chunk.remote(content, metas, contexts, stage, max_reply_mb)

        def collect(ref, index: int, at: int) -> None:
            results[at] = self._collect_chunk(ref, index, chunks[at])
            for _ in chunks[at] if progress is not None else ():
                progress()

        self._on_workers(list(range(len(chunks))), submit, collect, timeout)
        missing = "no reply before the deadline"
        return [results.get(at) or _failed(chunk, missing) for at, chunk in enumerate(chunks)]

    def _collect_chunk(self, ref, index: int, chunk: list[Message]) -> ChunkResult:
        import ray

        try:
            result, states = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker died: the chunk's clients failed
            self.workers[index] = self._new_worker()
            return _failed(chunk, f"worker lost: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        for message, state in zip(chunk, states):
            self.contexts[message.metadata.dst_node_id].state = state
        return result

    def push_messages(self, messages: Iterable[Message], deadline: float | None = None):
        raise NotImplementedError("the ray backend delivers through send_and_receive")


def _failed(chunk: list[Message], reason: str) -> ChunkResult:
    """A chunk none of whose clients answered, each for ``reason``."""
    return ChunkResult(None, [ChunkOutcome(m.metadata.dst_node_id, 0, reason) for m in chunk])
