"""The round loop: rounds and exchanges, with everything else in callbacks.

``Strategy.start`` runs all rounds in one call; fedsim drives the same Strategy API
(``configure_train``/``aggregate_train``/``configure_evaluate``/``aggregate_evaluate``) round
by round instead, so that it can seed sampling, account for every exchange, checkpoint and
resume. A strategy that defines ``train_round`` owns its round's training stage (several
exchanges, custom message actions). Results, checkpoints, server evaluation and progress are
callbacks (``fedsim.federation.callbacks``), the same on every backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedsim.array_codec import install as install_array_codec
from fedsim.checkpoint import Checkpoint, restore_rng_state
from fedsim.config.load import to_toml
from fedsim.config.schema import Experiment
from fedsim.config.systems import sample_size
from fedsim.config.wire import CONFIG_KEY
from fedsim.faults import ATTEMPT_KEY
from fedsim.federation.callbacks import (
    Callback,
    ClientStates,
    Metrics,
    RunState,
    dispatch_round_end,
)
from fedsim.federation.context import Failure, FederationContext, FederationError
from fedsim.federation.strategy import bind_context, load_strategy_state, strategy_state
from fedsim.registry import get_method
from fedsim.seeding import CLIENT_SAMPLING, EVAL_SAMPLING, derive_seed, seeded_python_random
from fedsim.systems.clock import VirtualClock
from fedsim.threads import torch_threads

log = logging.getLogger("fedsim")


@dataclass
class LoopResult:
    arrays: ArrayRecord
    rounds_done: int
    failures: int


def _metrics(record: MetricRecord | None) -> dict:
    return dict(record) if record is not None else {}


def run_federation(
    grid: Grid,
    exp: Experiment,
    run_dir: Path,
    *,
    callbacks: Sequence[Callback] = (),
    checkpoint: Checkpoint | None = None,
    client_states: ClientStates | None = None,
) -> LoopResult:
    """Run ``exp`` on ``grid`` (continuing from ``checkpoint`` when given); ``callbacks``
    write whatever the run produces."""
    install_array_codec()
    method = get_method(exp.method)
    ctx = FederationContext(
        grid,
        expected_nodes=exp.clients.num,
        node_wait=exp.run.node_wait,
        exchange_timeout=exp.run.exchange_timeout,
        validate_reply=method.reply_validator(),
        max_reply_mb=exp.run.max_reply_mb,
    )
    t0 = time.perf_counter()
    ctx.discover()
    log.info("discovered %d nodes in %.2fs", exp.clients.num, time.perf_counter() - t0)
    if exp.systems is not None:  # before anything trains: a bad trace fails the run here
        ctx.clock = VirtualClock.for_experiment(exp, sample_size(exp))

    strategy = method.build_strategy(exp)
    bind_context(strategy, ctx)
    with torch_threads(exp.clients.num_cpus):
        arrays = method.make_initial_arrays(exp)
    run = RunState(exp, Path(run_dir), method, ctx, strategy, arrays, client_states=client_states)
    ctx.on_exchange = lambda exchange: [cb.on_exchange(run, exchange) for cb in callbacks]
    ctx.on_reply = lambda stage, done, total: [
        cb.on_reply(run, stage, done, total) for cb in callbacks
    ]

    ckpt = checkpoint
    if ckpt is not None:
        _restore(run, ckpt)
        for callback in callbacks:
            callback.on_resume(run, ckpt.server_round)
        log.info("resuming after round %d", ckpt.server_round)
    else:
        for callback in callbacks:
            callback.on_start(run)
        dispatch_round_end(callbacks, run, 0, {})

    text = to_toml(exp)
    total_failures, successes, first_error = 0, 0, ""
    wait_ready = getattr(grid, "wait_ready", None)  # a grid whose workers boot meanwhile
    try:
        if wait_ready is not None and exp.run.rounds >= run.start_round:
            wait_ready()  # before round 1 starts: its clock and progress bar start with it
        for server_round in range(run.start_round, exp.run.rounds + 1):
            t_round = time.perf_counter()
            run.server_round = server_round
            ctx.begin_round(server_round)
            for callback in callbacks:
                callback.on_round_start(run, server_round)
            metrics, failures = _one_round(run, server_round, text)
            total_failures += len(failures)
            successes += int(metrics["train"]["clients"])
            first_error = first_error or (_first_line(failures[0].reason) if failures else "")
            dispatch_round_end(callbacks, run, server_round, metrics)
            log.info(
                "round %d done in %.2fs: %s", server_round, time.perf_counter() - t_round, metrics
            )
        if exp.run.rounds >= run.start_round:
            with torch_threads(exp.clients.num_cpus):
                method.finish(exp, run.arrays, run_dir)
    finally:
        for callback in callbacks:
            callback.on_end(run)
    if successes == 0 and exp.run.rounds >= run.start_round:
        raise FederationError(f"every client failed in every round; first error: {first_error}")
    return LoopResult(arrays=run.arrays, rounds_done=exp.run.rounds, failures=total_failures)


def _one_round(run: RunState, server_round: int, text: str) -> tuple[Metrics, list[Failure]]:
    """Training (one or more exchanges, retried while short of ``faults.min_clients``), then
    client-side evaluation if the strategy asks; returns the metrics and every failure.

    A round with failures gets a ``failures`` row: each client left out, with its stage,
    the first line of the reason and the attempt it belonged to.
    """
    exp, ctx, strategy = run.exp, run.ctx, run.strategy
    train, config, failed = _train_enough(run, server_round, text)
    metrics: Metrics = {"train": train}

    ctx.stage = "evaluate"
    with seeded_python_random(derive_seed(exp.run.seed, server_round, EVAL_SAMPLING)):
        messages = list(strategy.configure_evaluate(server_round, run.arrays, config, ctx.grid))
    if messages:
        replies = ctx.exchange(messages, stage="evaluate")
        eval_metrics = strategy.aggregate_evaluate(server_round, replies)
        metrics["client-eval"] = {
            **_metrics(eval_metrics),
            "failures": len(ctx.round_failures("evaluate")),
        }
    systems = ctx.end_round()
    if systems is not None:
        metrics["systems"] = systems
    attempt = int(config.get(ATTEMPT_KEY, 0))
    _log_failures(server_round, ctx.round_failures())
    failed += [(attempt, f) for f in ctx.round_failures()]
    if failed:
        metrics["failures"] = {"clients": [_failure_row(a, f) for a, f in failed]}
    return metrics, [f for _, f in failed]


def _train_enough(
    run: RunState, server_round: int, text: str
) -> tuple[dict, ConfigRecord, list[tuple[int, Failure]]]:
    """The training stage, re-sampled (``faults.max_retries`` times at most) while fewer than
    ``faults.min_clients`` replies are usable; a short attempt's server-side effects (global
    arrays, strategy state) are undone, its clients' own state is not (they did train).
    Returns the train metrics, the config of the attempt kept, and the earlier attempts'
    failures."""
    faults = run.exp.faults
    need = faults.min_clients if faults is not None else 0
    retries = faults.max_retries if faults is not None else 0
    earlier: list[tuple[int, Failure]] = []
    for attempt in range(retries + 1):
        config = ConfigRecord({CONFIG_KEY: text, **({ATTEMPT_KEY: attempt} if attempt else {})})
        saved = (run.arrays, strategy_state(run.strategy)) if need and attempt < retries else None
        if attempt:
            run.ctx.begin_round(server_round)
        train = _train(run, server_round, config, attempt)
        if train["clients"] >= need:
            return train, config, earlier
        failures = run.ctx.round_failures()
        _log_failures(server_round, failures)
        earlier += [(attempt, f) for f in failures]
        if saved is not None:
            run.arrays = saved[0]
            load_strategy_state(run.strategy, saved[1])
            log.warning(
                "round %d: %d usable training replies, fewer than faults.min_clients = %d; "
                "sampling again (retry %d of %d)",
                server_round, train["clients"], need, attempt + 1, retries,
            )  # fmt: skip
    first = _first_line(earlier[0][1].reason) if earlier else "none"
    raise FederationError(
        f"round {server_round}: {train['clients']} usable training replies, fewer than "
        f"faults.min_clients = {need}, after {retries} retries (faults.max_retries); "
        f"first failure: {first}"
    )


def _train(run: RunState, server_round: int, config: ConfigRecord, attempt: int) -> dict:
    """One attempt at the training stage; the ``train`` row's metrics."""
    exp, ctx, strategy = run.exp, run.ctx, run.strategy
    ctx.stage = "train"
    parts = (server_round, CLIENT_SAMPLING, attempt) if attempt else (server_round, CLIENT_SAMPLING)
    with seeded_python_random(derive_seed(exp.run.seed, *parts)) as ctx.random:
        if hasattr(strategy, "train_round"):
            new_arrays, train_metrics = strategy.train_round(server_round, run.arrays, config, ctx)
        else:
            messages = list(strategy.configure_train(server_round, run.arrays, config, ctx.grid))
            chunk = exp.clients.chunk_size  # the method's strategy sums chunks (chunked_mean)
            replies = ctx.exchange(messages, stage="train", chunk_size=chunk)
            new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
    if new_arrays is not None:
        run.arrays = new_arrays
    trained = {p for ex in ctx.exchanges if ex.stage.split(".")[0] == "train" for p in ex.sent_to}
    failed = {f.partition_id for f in ctx.round_failures("train")}
    train = {**_metrics(train_metrics), "clients": len(trained - failed), "failures": len(failed)}
    return {**train, "retries": attempt} if attempt else train


def _first_line(reason: str) -> str:
    return reason.splitlines()[0] if reason else "?"


def _failure_row(attempt: int, failure: Failure) -> dict:
    return {
        "partition_id": failure.partition_id,
        "stage": failure.stage,
        "reason": _first_line(failure.reason),
        "attempt": attempt,
    }


def _log_failures(server_round: int, failures: list[Failure]) -> None:
    for failure in failures:
        log.warning(
            "round %d: client %d left out of %s: %s",
            server_round,
            failure.partition_id,
            failure.stage,
            _first_line(failure.reason),
        )


def _restore(run: RunState, ckpt: Checkpoint) -> None:
    """Continue from ``ckpt``: arrays, strategy state, RNG states, client states."""
    exp, method = run.exp, run.method
    if ckpt.meta.get("method", exp.method) != exp.method:
        raise FederationError(
            f"the checkpoint is of method '{ckpt.meta.get('method')}', the run's config says "
            f"'{exp.method}'"
        )
    stateful = method.stateful_clients(exp)
    if stateful and (ckpt.client_states is None or run.client_states is None):
        raise FederationError(
            f"cannot resume: method '{exp.method}' keeps client state (Context.state) that "
            "this backend cannot checkpoint or restore; resume it on the in-process backend, "
            "or start again"
        )
    run.arrays = ckpt.arrays
    load_strategy_state(run.strategy, ckpt.strategy_state)
    restore_rng_state(ckpt.rng_state)
    if ckpt.client_states is not None and run.client_states is not None:
        run.client_states.restore(ckpt.client_states)
    run.start_round = ckpt.server_round + 1
    run.server_round = ckpt.server_round
    run.wall_before = float(ckpt.meta.get("wall_time_s", 0.0))
    if run.ctx.clock is not None:
        run.ctx.clock.now = float(ckpt.meta.get("virtual_time_s", 0.0))
