"""The round loop: Flower's strategy API driven by us, so we can checkpoint between rounds.

``Strategy.start`` runs all rounds in one call; we call the same four methods
(``configure_train``/``aggregate_train``/``configure_evaluate``/``aggregate_evaluate``)
round by round instead, which lets us seed sampling, record traffic and failures, write
metrics as they come, checkpoint, and resume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedsim.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedsim.config.load import to_toml
from fedsim.config.schema import Experiment
from fedsim.federation.grid_view import FederationGrid
from fedsim.methods import get_method
from fedsim.results.writer import RunWriter
from fedsim.seeding import (
    CLIENT_SAMPLING,
    EVAL_SAMPLING,
    capture_rng_state,
    derive_seed,
    restore_rng_state,
    seeded_python_random,
)

log = logging.getLogger("fedsim")
CONFIG_KEY = "fedsim.config"
RoundCallback = Callable[[int, dict[str, dict[str, Any]]], None]


@dataclass
class LoopResult:
    arrays: ArrayRecord
    rounds_done: int
    failures: int


def _metrics(record: MetricRecord | None) -> dict[str, Any]:
    return dict(record) if record is not None else {}


def run_federation(
    grid: Grid,
    exp: Experiment,
    run_dir: Path,
    *,
    resume: bool = False,
    client_states: Callable[[], dict[int, Any]] | None = None,
    restore_client_states: Callable[[dict[int, Any]], None] | None = None,
    on_round: RoundCallback | None = None,
) -> LoopResult:
    """Run (or resume) ``exp`` on ``grid``, writing results into ``run_dir``."""
    method = get_method(exp.method)
    client_module = method.client()
    writer = RunWriter(run_dir, tensorboard=exp.run.tensorboard)
    fed = FederationGrid(grid, expected_nodes=exp.clients.num)
    t_discover = time.perf_counter()
    fed.discover()
    log.info("discovered %d nodes in %.2fs", exp.clients.num, time.perf_counter() - t_discover)

    strategy = method.build_strategy(exp)
    arrays = client_module.initial_arrays(exp)
    evaluate_fn = client_module.server_evaluator(exp) if exp.eval.server else None
    start = 1
    if resume and (ckpt := load_checkpoint(run_dir)) is not None:
        start = ckpt.server_round + 1
        arrays, strategy = ckpt.arrays, ckpt.strategy
        restore_rng_state(ckpt.rng_state)
        if restore_client_states is not None:
            restore_client_states(ckpt.client_states)
        writer.truncate_to(ckpt.server_round)
        log.info("resuming after round %d", ckpt.server_round)
    else:
        writer.truncate_to(-1)
        if evaluate_fn is not None:
            writer.metrics(0, "server-eval", _metrics(evaluate_fn(0, arrays)))

    log.info("set-up done (model, evaluator%s)", ", checkpoint" if start > 1 else "")
    text = to_toml(exp)
    total_failures, successes, first_error = 0, 0, ""
    for server_round in range(start, exp.run.rounds + 1):
        t0 = time.perf_counter()
        latest: dict[str, dict[str, Any]] = {}

        fed.stage = "train"
        with seeded_python_random(derive_seed(exp.run.seed, server_round, CLIENT_SAMPLING)):
            messages = list(
                strategy.configure_train(
                    server_round, arrays, ConfigRecord({CONFIG_KEY: text}), fed
                )
            )
        replies = list(fed.send_and_receive(messages))
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        traffic, failures = fed.take_round_log()
        writer.comm(server_round, "train", traffic.down, traffic.up)
        latest["train"] = {
            **_metrics(train_metrics),
            "clients": len(messages) - len(failures),
            "failures": len(failures),
        }
        writer.metrics(server_round, "train", latest["train"])
        for failure in failures:
            log.warning(
                "round %d: client %d left out of %s: %s",
                server_round,
                failure.partition_id,
                failure.stage,
                failure.reason.splitlines()[0],
            )
        total_failures += len(failures)
        successes += len(messages) - len(failures)
        first_error = first_error or (failures[0].reason.splitlines()[0] if failures else "")

        fed.stage = "evaluate"
        with seeded_python_random(derive_seed(exp.run.seed, server_round, EVAL_SAMPLING)):
            messages = list(
                strategy.configure_evaluate(
                    server_round, arrays, ConfigRecord({CONFIG_KEY: text}), fed
                )
            )
        if messages:
            replies = list(fed.send_and_receive(messages))
            eval_metrics = strategy.aggregate_evaluate(server_round, replies)
            traffic, failures = fed.take_round_log()
            writer.comm(server_round, "evaluate", traffic.down, traffic.up)
            latest["client-eval"] = {**_metrics(eval_metrics), "failures": len(failures)}
            writer.metrics(server_round, "client-eval", latest["client-eval"])
            total_failures += len(failures)

        last = server_round == exp.run.rounds
        if evaluate_fn is not None and (server_round % exp.eval.every == 0 or last):
            latest["server-eval"] = _metrics(evaluate_fn(server_round, arrays))
            writer.metrics(server_round, "server-eval", latest["server-eval"])

        every = exp.run.checkpoint_every
        if every and (server_round % every == 0 or last):
            states = client_states() if client_states is not None else {}
            save_checkpoint(
                run_dir,
                Checkpoint(server_round, arrays, strategy, capture_rng_state(), states, {}),
            )
        log.info("round %d done in %.2fs: %s", server_round, time.perf_counter() - t0, latest)
        if on_round is not None:
            on_round(server_round, latest)

    save_final = getattr(client_module, "save_final", None)  # e.g. fedit's final adapter
    if save_final is not None and exp.run.rounds >= start:
        save_final(exp, arrays, run_dir)
    writer.close()
    if successes == 0 and exp.run.rounds >= start:
        raise RuntimeError(f"every client failed in every round; first error: {first_error}")
    return LoopResult(arrays=arrays, rounds_done=exp.run.rounds, failures=total_failures)
