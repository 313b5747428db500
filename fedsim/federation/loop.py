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

from fedsim.checkpoint import Checkpoint, restore_rng_state
from fedsim.config.load import to_toml
from fedsim.config.schema import Experiment
from fedsim.federation.callbacks import (
    Callback,
    ClientStates,
    Metrics,
    RunState,
    dispatch_round_end,
)
from fedsim.federation.context import FederationContext, FederationError
from fedsim.federation.strategy import bind_context, load_strategy_state
from fedsim.registry import get_method
from fedsim.seeding import CLIENT_SAMPLING, EVAL_SAMPLING, derive_seed, seeded_python_random
from fedsim.threads import torch_threads

log = logging.getLogger("fedsim")
CONFIG_KEY = "fedsim.config"


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
    method = get_method(exp.method)
    ctx = FederationContext(
        grid,
        expected_nodes=exp.clients.num,
        node_wait=exp.run.node_wait,
        exchange_timeout=exp.run.exchange_timeout,
        validate_reply=method.reply_validator(),
    )
    t0 = time.perf_counter()
    ctx.discover()
    log.info("discovered %d nodes in %.2fs", exp.clients.num, time.perf_counter() - t0)

    strategy = method.build_strategy(exp)
    bind_context(strategy, ctx)
    with torch_threads(exp.clients.num_cpus):
        arrays = method.make_initial_arrays(exp)
    run = RunState(exp, Path(run_dir), method, ctx, strategy, arrays, client_states=client_states)
    ctx.on_exchange = lambda exchange: [cb.on_exchange(run, exchange) for cb in callbacks]

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
    try:
        for server_round in range(run.start_round, exp.run.rounds + 1):
            t_round = time.perf_counter()
            run.server_round = server_round
            ctx.begin_round(server_round)
            for callback in callbacks:
                callback.on_round_start(run, server_round)
            metrics = _one_round(run, server_round, ConfigRecord({CONFIG_KEY: text}))
            failures = ctx.round_failures()
            for failure in failures:
                log.warning(
                    "round %d: client %d left out of %s: %s",
                    server_round,
                    failure.partition_id,
                    failure.stage,
                    failure.reason.splitlines()[0] if failure.reason else "?",
                )
            total_failures += len(failures)
            successes += int(metrics["train"]["clients"])
            first_error = first_error or (failures[0].reason.splitlines()[0] if failures else "")
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


def _one_round(run: RunState, server_round: int, config: ConfigRecord) -> Metrics:
    """Training (one or more exchanges), then client-side evaluation if the strategy asks."""
    exp, ctx, strategy = run.exp, run.ctx, run.strategy
    ctx.stage = "train"
    with seeded_python_random(derive_seed(exp.run.seed, server_round, CLIENT_SAMPLING)):
        if hasattr(strategy, "train_round"):
            new_arrays, train_metrics = strategy.train_round(server_round, run.arrays, config, ctx)
        else:
            messages = list(strategy.configure_train(server_round, run.arrays, config, ctx.grid))
            replies = ctx.exchange(messages, stage="train")
            new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
    if new_arrays is not None:
        run.arrays = new_arrays
    trained = {p for ex in ctx.exchanges if ex.stage.split(".")[0] == "train" for p in ex.sent_to}
    failed = {f.partition_id for f in ctx.round_failures("train")}
    metrics: Metrics = {
        "train": {
            **_metrics(train_metrics),
            "clients": len(trained - failed),
            "failures": len(failed),
        }
    }

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
    return metrics


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
