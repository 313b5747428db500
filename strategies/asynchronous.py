"""FedAsync and FedBuff: the server half (declared in ``fedsim_methods.asynchronous``).

An event simulation on the virtual clock of ``[systems]``, one server step per round:

- ``concurrency`` clients are in flight at once. A client is sent the current model when a
  slot frees (at the start, and whenever an update arrives) and, among the clients online and
  idle at that moment, drawn by the round's seeded ``ctx.random``.
- Its update arrives at ``sent_at + duration`` (``VirtualClock.duration``: compute for the
  samples it trained on, its bytes over its bandwidth). Arrivals are handled in order of
  (time, partition id), so ties are broken the same way on every backend.
- Staleness = server steps since the client was sent. FedAsync mixes each arrival in:
  ``x <- (1 - a) x + a y`` with ``a = alpha s(staleness)``. FedBuff adds ``s(staleness) x
  (y - x_sent)`` to a buffer and, every ``buffer_size`` arrivals, steps
  ``x <- x + server_lr x buffer / buffer_size`` (Nguyen et al. 2022, Algorithm 1).

Clients are trained when they are sent, not when they arrive: an update depends only on the
model sent and the client's own data and seed, so training it early changes nothing but lets
every client sent at one virtual moment train in one exchange (Ray runs them side by side).
Clients sent while the buffer fills are trained in one exchange as late as the order of
events allows: before the first arrival one of them could precede (its download alone is a
lower bound on its time) or before the step. Updates trained but not yet arrived are this
strategy's state, so a checkpoint holds them with the clock, and a killed run resumes to the
same bytes.

With ``clock = "real"`` (a deployment on a SuperLink) there is no virtual clock: models are
pushed to idle nodes and updates pulled as they really arrive (Flower's Grid push/pull), in
the order they come (partition order within one poll). Nothing is trained early, so a
checkpoint cannot hold updates in flight: a resumed real-time run starts with none.

Each dispatch is numbered; a client's message carries that number as ``server-round``, so its
local shuffle (and any fault drawn for it) differs per dispatch even when the model version
does not.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedsim.config.schema import Experiment
from fedsim.federation.context import Failure, FederationContext
from fedsim.federation.replies import array_bytes
from fedsim.federation.sampling import sampling_kwargs
from fedsim.federation.strategy import UsesFederation, arrays_of
from fedsim.systems.clock import VirtualClock

STALE = "staleness"


@dataclass
class Flight:
    """A client sent the model of step ``version`` at ``sent_at``; once trained, its update
    arrives at ``arrives_at``."""

    pid: int
    version: int
    sent_at: float
    dispatch: int
    arrives_at: float = 0.0
    num_examples: int = 0
    train_loss: float = 0.0


class AsyncServer(UsesFederation, FedAvg):
    """FedAvg's evaluation and sampling settings; an event loop for training."""

    def __init__(self, exp: Experiment, **kwargs) -> None:
        super().__init__(**kwargs)
        self.exp = exp
        self.cfg = exp.section(exp.method)
        self.buffered = exp.method == "fedbuff"
        self.buffer_size = self.cfg.buffer_size if self.buffered else 1
        self.concurrency = self.cfg.concurrency or exp.clients.per_round
        self.dispatches = 0
        self.trained: list[Flight] = []  # trained, not arrived yet
        self.updates: dict[int, dict[str, np.ndarray]] = {}  # dispatch -> y (fedasync) or y - x
        self.pending: list[Flight] = []  # sent, not trained yet (this step's model)
        self._down_bytes = 0  # the bytes of this step's model message
        self.real = self.cfg.clock == "real"
        self.live: dict[str, tuple[Flight, Message]] = {}  # real clock: message id -> sent
        self.held: list[tuple[Flight, Message]] = []  # real clock: pulled, for the next step
        self.models: dict[int, dict[str, np.ndarray]] = {}  # real clock: version -> x sent

    def bind(self, ctx: FederationContext) -> None:
        super().bind(ctx)
        if self.real:
            return
        if ctx.clock is None:  # pragma: no cover - the method's validate requires [systems]
            raise RuntimeError(f"{self.exp.method} needs the virtual clock ([systems])")
        ctx.clock.synchronous = False

    @property
    def clock(self) -> VirtualClock:
        clock = self.ctx.clock
        assert clock is not None
        return clock

    # -- one server step ------------------------------------------------------------------
    def train_round(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, ctx: FederationContext
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.real:
            return self._real_round(server_round, arrays, config, ctx)
        version = server_round - 1
        sent = {k: a.numpy() for k, a in arrays.items()}
        base = dict(config)
        self._down_bytes = array_bytes(RecordDict({"arrays": arrays}))
        self._fill(self.clock.now, version)
        arrived: list[tuple[Flight, float]] = []  # (flight, staleness weight)
        stale: list[Failure] = []
        waits = 0
        while len(arrived) < self.buffer_size:
            if self.pending and self._pending_may_come_first():
                self._train_pending(arrays, sent, base)
                continue
            if not self.trained:
                if not self.pending:  # nobody in flight, nobody online and idle: wait
                    waits += 1
                    if waits > len(ctx.all_partition_ids) + 1:
                        break  # every client keeps failing: the step has what it has
                    self.clock.now = self._next_online(self.clock.now)
                    self._fill(self.clock.now, version)
                continue
            flight = min(self.trained, key=lambda f: (f.arrives_at, f.pid))
            self.trained.remove(flight)
            self.clock.now = flight.arrives_at
            staleness = version - flight.version
            if self._too_stale(staleness):
                self.updates.pop(flight.dispatch)
                stale.append(self._stale_failure(flight, staleness))
            else:
                arrived.append((flight, self.cfg.weight(staleness)))
            if len(arrived) < self.buffer_size:  # else the slot gets the next step's model
                self._fill(self.clock.now, version)
        if self.pending:  # sent during this step: they train on its model
            self._train_pending(arrays, sent, base)
        if stale:
            ctx.report_failures("train", stale)
        if not arrived:
            return None, None
        new = self._step(sent, arrived)
        return arrays_of(new), self._metrics(arrived, version)

    def _step(self, x: dict[str, np.ndarray], arrived: list[tuple[Flight, float]]):
        """The server's new model from the arrivals, in arrival order (float64 sums)."""
        out = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in x.items()}
        if self.buffered:
            total = {k: np.zeros_like(v) for k, v in out.items() if v.dtype.kind == "f"}
            for flight, s in arrived:
                update = self.updates.pop(flight.dispatch)
                for k in total:
                    total[k] += s * update[k].astype(np.float64)
            eta = self.cfg.server_lr / self.buffer_size
            for k in total:
                out[k] = out[k] + eta * total[k]
        else:
            for flight, s in arrived:
                y = self.updates.pop(flight.dispatch)
                a = self.cfg.alpha * s
                for k in out:
                    if out[k].dtype.kind == "f":
                        out[k] = (1.0 - a) * out[k] + a * y[k].astype(np.float64)
        return {k: v.astype(x[k].dtype) for k, v in out.items()}

    def _metrics(self, arrived: list[tuple[Flight, float]], version: int) -> MetricRecord:
        staleness = [version - f.version for f, _ in arrived]
        n = sum(f.num_examples for f, _ in arrived)
        loss = sum(f.train_loss * f.num_examples for f, _ in arrived) / max(n, 1)
        if not self.real:
            self.clock.extra = {"in-flight": len(self.trained), "dispatched": self.dispatches}
        return MetricRecord({
            "train_loss": loss,
            "aggregated": len(arrived),
            "staleness-mean": float(np.mean(staleness)),
            "staleness-max": max(staleness),
        })  # fmt: skip

    # -- sending and training -------------------------------------------------------------
    def _busy(self) -> set[int]:
        return {f.pid for f in self.trained} | {f.pid for f in self.pending}

    def _fill(self, t: float, version: int) -> None:
        """Send the model to idle online clients until ``concurrency`` are in flight."""
        free = self.concurrency - len(self.trained) - len(self.pending)
        if free <= 0:
            return
        busy = self._busy()
        idle = [p for p in self.clock.population.online(t) if p not in busy]
        for pid in sorted(self.ctx.random.sample(idle, min(free, len(idle)))):
            self.dispatches += 1
            self.pending.append(Flight(pid, version, t, self.dispatches))

    def _next_online(self, t: float) -> float:
        later = self.clock.population.first_time_with(t, 1)
        if later is None or later <= t:  # someone is online but every client failed: move on
            return t + 1.0
        return later

    def _pending_may_come_first(self) -> bool:
        """Whether a client sent but not trained could arrive before the next trained one:
        its download alone (a lower bound on its time) decides."""
        if not self.trained:
            return True
        first = min(f.arrives_at for f in self.trained)
        return any(
            f.sent_at + self.clock.duration(f.pid, self._down_bytes, 0) <= first
            for f in self.pending
        )

    def _train_pending(self, arrays: ArrayRecord, sent: dict[str, np.ndarray], base) -> None:
        """Train every pending client in one exchange; each gets its arrival time."""
        ctx, pending = self.ctx, sorted(self.pending, key=lambda f: f.pid)
        self.pending = []
        messages = []
        for flight in pending:
            config = ConfigRecord({**base, "server-round": flight.dispatch})
            content = RecordDict({"arrays": arrays, "config": config})
            messages.append(ctx.message(content, flight.pid, "train"))
        replies = ctx.exchange(messages, stage="train")
        record = ctx.exchanges[-1]
        by_pid = {f.pid: f for f in pending}
        for reply in replies:
            if reply.has_error():
                continue
            flight = by_pid[ctx.partition_of(reply.metadata.src_node_id)]
            metrics = dict(reply.content["metrics"])
            seconds = self.clock.charge(
                flight.pid, metrics, record.down.get(flight.pid, 0), record.up.get(flight.pid, 0)
            )
            flight.arrives_at = flight.sent_at + seconds
            self._keep_update(flight, reply, sent)
            self.trained.append(flight)

    # -- the real clock: push to idle nodes, pull what has arrived -------------------------
    def _real_round(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, ctx: FederationContext
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        version = server_round - 1
        x_now = self.models[version] = {k: a.numpy() for k, a in arrays.items()}
        base, started = dict(config), time.monotonic()
        self._push(arrays, base, version)
        arrived: list[tuple[Flight, float]] = []
        stale: list[Failure] = []
        timeout = self.exp.run.exchange_timeout
        while len(arrived) < self.buffer_size and (self.live or self.held):
            replies, self.held = self.held, []
            if not replies:
                replies = [
                    (self.live.pop(msg_id)[0], reply)
                    for msg_id, reply in ctx.pull(
                        {i: m for i, (_, m) in self.live.items()}, stage="train"
                    )
                ]
            if not replies:
                if timeout and time.monotonic() - started > timeout:
                    break  # the step keeps what has arrived; late updates count later
                time.sleep(self.cfg.poll_s)
                continue
            for i, (flight, reply) in enumerate(replies):
                if len(arrived) == self.buffer_size:  # arrived together: the next step's
                    self.held = replies[i:]
                    break
                if reply.has_error():  # the pull reported it as a failure
                    continue
                staleness = version - flight.version
                if self._too_stale(staleness):
                    stale.append(self._stale_failure(flight, staleness))
                    continue
                self._keep_update(flight, reply, self.models[flight.version])
                arrived.append((flight, self.cfg.weight(staleness)))
            if len(arrived) < self.buffer_size:
                self._push(arrays, base, version)
        if stale:
            ctx.report_failures("train", stale)
        in_use = {f.version for f, _ in self.live.values()} | {f.version for f, _ in self.held}
        self.models = {v: x for v, x in self.models.items() if v in in_use}
        if not arrived:
            return None, None
        new = self._step(x_now, arrived)
        metrics = self._metrics(arrived, version)
        metrics["step-s"] = time.monotonic() - started  # real seconds: not reproducible
        return arrays_of(new), metrics

    def _push(self, arrays: ArrayRecord, base: dict, version: int) -> None:
        """Send the current model to idle nodes until ``concurrency`` are busy."""
        free = self.concurrency - len(self.live)
        busy = {f.pid for f, _ in self.live.values()}
        idle = [p for p in self.ctx.partition_ids if p not in busy]
        flights, messages = [], []
        for pid in sorted(self.ctx.random.sample(idle, min(free, len(idle)))):
            self.dispatches += 1
            flight = Flight(pid, version, 0.0, self.dispatches)
            config = ConfigRecord({**base, "server-round": flight.dispatch})
            content = RecordDict({"arrays": arrays, "config": config})
            flights.append(flight)
            messages.append(self.ctx.message(content, pid, "train"))
        if messages:
            for (msg_id, msg), flight in zip(self.ctx.push(messages, stage="train").items(),
                                             flights):  # fmt: skip
                self.live[msg_id] = (flight, msg)

    # -- what both clocks share -------------------------------------------------------------
    def _keep_update(self, flight: Flight, reply: Message, sent: dict[str, np.ndarray]) -> None:
        """Keep what the step needs of a reply: the client's model (FedAsync) or its update
        on the model it was sent (FedBuff), with its loss and size."""
        metrics = dict(reply.content["metrics"])
        flight.num_examples = int(metrics.get("num-examples", 0))
        flight.train_loss = float(metrics.get("train_loss", 0.0))
        y = {k: a.numpy() for k, a in reply.content["arrays"].items()}
        if self.buffered:
            y = {k: (v.astype(np.float64) - sent[k]).astype(v.dtype) for k, v in y.items()}
        self.updates[flight.dispatch] = y

    def _too_stale(self, staleness: int) -> bool:
        return bool(self.cfg.max_staleness) and staleness > self.cfg.max_staleness

    def _stale_failure(self, flight: Flight, staleness: int) -> Failure:
        return Failure(
            flight.pid,
            "train",
            f"{STALE}: {staleness} server steps old, more than "
            f"{self.exp.method}.max_staleness = {self.cfg.max_staleness}",
        )

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> RecordDict:
        """The updates in flight (trained, not arrived) and the dispatch count. Pending
        clients never outlive a step, so there are none to keep."""
        meta = {"dispatches": self.dispatches, "trained": [asdict(f) for f in self.trained]}
        state = RecordDict({"meta": ConfigRecord({"json": json.dumps(meta)})})
        for flight in self.trained:
            state[f"update/{flight.dispatch}"] = arrays_of(self.updates[flight.dispatch])
        return state

    def load_state_dict(self, state: RecordDict) -> None:
        meta = json.loads(str(state["meta"]["json"]))
        self.dispatches = int(meta["dispatches"])
        self.trained = [Flight(**f) for f in meta["trained"]]
        self.pending = []
        self.updates = {
            f.dispatch: {k: a.numpy() for k, a in state[f"update/{f.dispatch}"].items()}
            for f in self.trained
        }


def build_strategy(exp: Experiment) -> AsyncServer:
    return AsyncServer(exp, **sampling_kwargs(exp))
