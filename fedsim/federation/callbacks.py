"""Callbacks of the round loop: results, checkpoints, server evaluation, progress.

The loop (``fedsim.federation.loop``) knows rounds and exchanges and nothing else; whatever
happens around them is a ``Callback`` (pfl-research's ``TrainingProcessCallback`` is the
model). Every backend runs the same list (``standard_callbacks``), so a run writes the same
files in-process, on Ray and under ``flwr run``. Callbacks run in list order; a callback's
``on_round_end`` may return more metric scopes (server evaluation adds ``server-eval``),
which the callbacks after it see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flwr.app import ArrayRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fedsim.checkpoint import Checkpoint, capture_rng_state, save_checkpoint
from fedsim.config.load import config_fingerprint
from fedsim.config.schema import Experiment
from fedsim.federation.context import Exchange, FederationContext
from fedsim.federation.strategy import strategy_state
from fedsim.method import Method
from fedsim.results.writer import RunWriter
from fedsim.threads import torch_threads

log = logging.getLogger("fedsim")
Metrics = dict[str, dict[str, Any]]  # scope -> metric -> value


class ClientStates(Protocol):
    """Access to every client's ``Context.state``, where a backend can give it."""

    def capture(self) -> dict[int, RecordDict]: ...

    def restore(self, states: dict[int, RecordDict]) -> None: ...


@dataclass
class RunState:
    """What callbacks may read: the run, its method and strategy, and where it stands."""

    exp: Experiment
    run_dir: Path
    method: Method
    ctx: FederationContext
    strategy: Strategy
    arrays: ArrayRecord
    start_round: int = 1
    server_round: int = 0
    client_states: ClientStates | None = None
    started: float = field(default_factory=time.perf_counter)
    wall_before: float = 0.0  # seconds the run had taken before this session (resumes)

    def wall_time(self) -> float:
        """Seconds the run has taken so far, over every session."""
        return self.wall_before + time.perf_counter() - self.started


class Callback:
    """Every hook is optional; override the ones you need."""

    def on_start(self, run: RunState) -> None:
        """A fresh run, before round 0 (the initial model)."""

    def on_resume(self, run: RunState, from_round: int) -> None:
        """A resumed run; ``from_round`` is the checkpoint's round."""

    def on_round_start(self, run: RunState, server_round: int) -> None:
        """Before a round's first exchange (rounds >= 1)."""

    def on_exchange(self, run: RunState, exchange: Exchange) -> None:
        """After every exchange of messages (a round has one or more)."""

    def on_reply(self, run: RunState, stage: str, done: int, total: int) -> None:
        """After each client's reply within an exchange: ``done`` of ``total`` messages
        answered (fedsim's own grids, in-process and Ray; not under ``flwr run``)."""

    def on_round_end(self, run: RunState, server_round: int, metrics: Metrics) -> Metrics | None:
        """After a round (round 0 = the initial model, fresh runs only)."""
        return None

    def on_end(self, run: RunState) -> None:
        """After the last round, whether the run completed or failed."""


class ServerEvaluation(Callback):
    """Centralised evaluation of the global model (``eval.server``, every ``eval.every``)."""

    def __init__(self) -> None:
        self._evaluate = None

    def _evaluator(self, run: RunState):
        if self._evaluate is None:
            with torch_threads(run.exp.clients.num_cpus):
                self._evaluate = run.method.make_server_evaluator(run.exp)
        return self._evaluate

    def on_round_end(self, run: RunState, server_round: int, metrics: Metrics) -> Metrics | None:
        exp = run.exp
        if not exp.eval.server:
            return None
        due = server_round == 0 or server_round % exp.eval.every == 0
        if not due and server_round != exp.run.rounds:
            return None
        evaluate = self._evaluator(run)
        if evaluate is None:
            return None
        with torch_threads(exp.clients.num_cpus):
            result = evaluate(server_round, run.arrays)
        return {"server-eval": dict(result) if result is not None else {}}


class ResultsWriter(Callback):
    """``metrics.jsonl`` (one row per round and scope) and ``comm.csv`` (per exchange)."""

    def __init__(self, run_dir: Path) -> None:
        self.writer = RunWriter(run_dir)

    def on_start(self, run: RunState) -> None:
        self.writer.truncate_to(-1)

    def on_resume(self, run: RunState, from_round: int) -> None:
        self.writer.truncate_to(from_round)

    def on_exchange(self, run: RunState, exchange: Exchange) -> None:
        self.writer.comm(exchange.server_round, exchange.stage, exchange.down, exchange.up)

    def on_round_end(self, run: RunState, server_round: int, metrics: Metrics) -> None:
        for scope, values in metrics.items():
            self.writer.metrics(server_round, scope, values)


class TensorBoard(Callback):
    """Scalars of every scope under ``tensorboard/`` (``run.tensorboard = true``)."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def on_round_end(self, run: RunState, server_round: int, metrics: Metrics) -> None:
        for scope, values in metrics.items():
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{scope}/{key}", value, server_round)
        self.tb.flush()

    def on_end(self, run: RunState) -> None:
        self.tb.close()


class Checkpointer(Callback):
    """A checkpoint every ``run.checkpoint_every`` rounds and after the last one."""

    def on_round_end(self, run: RunState, server_round: int, metrics: Metrics) -> None:
        every = run.exp.run.checkpoint_every
        last = server_round == run.exp.run.rounds
        if server_round == 0 or not every or (server_round % every and not last):
            return
        states = run.client_states.capture() if run.client_states is not None else None
        ckpt = Checkpoint(
            server_round=server_round,
            arrays=run.arrays,
            strategy_state=strategy_state(run.strategy),
            rng_state=capture_rng_state(),
            client_states=states,
            meta={
                "method": run.exp.method,
                "config_sha256": config_fingerprint(run.exp),
                "wall_time_s": round(run.wall_time(), 3),
                **({"virtual_time_s": run.ctx.clock.now} if run.ctx.clock is not None else {}),
            },
        )
        save_checkpoint(run.run_dir, ckpt)


class SetupClock(Callback):
    """Seconds from ``start`` (the run's start) to the start of its first round: the time
    before round 1 (backend start-up, data, model, round-0 evaluation), for the summary;
    and the round in progress, for the message of an interrupted run."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.seconds: float | None = None
        self.round: int | None = None  # the last round started

    def on_round_start(self, run: RunState, server_round: int) -> None:
        self.round = server_round
        if self.seconds is None:
            self.seconds = round(time.perf_counter() - self.start, 3)


class LogProgress(Callback):
    """One log line per round (progress where there is no terminal, e.g. ``flwr run``)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or log

    def on_round_end(self, run: RunState, server_round: int, metrics: Metrics) -> None:
        if server_round == 0:
            return
        self.log.info(
            "round %d/%d (%.1fs): %s",
            server_round,
            run.exp.run.rounds,
            time.perf_counter() - run.started,
            headline(metrics),
        )


def headline(metrics: Metrics) -> str:
    """The few numbers worth a progress line: test accuracy/loss, train loss, failures."""
    parts = []
    for scope, key, label in (
        ("server-eval", "accuracy", "acc"),
        ("server-eval", "loss", "loss"),
        ("train", "train_loss", "train"),
    ):
        value = metrics.get(scope, {}).get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label}={value:.4f}")
    failures = metrics.get("train", {}).get("failures")
    if failures:
        parts.append(f"failed={failures}")
    return " ".join(parts)


def standard_callbacks(exp: Experiment, run_dir: Path) -> list[Callback]:
    """What every run gets, on every backend, in this order. The method's own callbacks
    come before the writers, so the metrics they add are written with the round's."""
    from fedsim.registry import get_method

    method_callbacks = get_method(exp.method).make_callbacks(exp, run_dir)
    callbacks: list[Callback] = [ServerEvaluation(), *method_callbacks, ResultsWriter(run_dir)]
    if exp.run.tensorboard:
        callbacks.append(TensorBoard(run_dir))
    callbacks.append(Checkpointer())
    return callbacks


def dispatch_round_end(
    callbacks: Sequence[Callback], run: RunState, server_round: int, metrics: Metrics
) -> Metrics:
    for callback in callbacks:
        more = callback.on_round_end(run, server_round, metrics)
        if more:
            metrics.update(more)
    return metrics
