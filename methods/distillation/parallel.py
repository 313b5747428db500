"""A round's syntheses side by side in worker processes (``distillation.synthesis_workers``).

One client's synthesis depends only on the global weights sent, the weights it sent back,
its labels, the generator, the config and its stream seeded by (seed, round, partition id),
and it runs with ``server_threads`` torch threads wherever it runs. So W worker processes
give the bytes one process gives, about W times sooner on a server with W idle cores: the
clients' syntheses are independent, while torch's own intra-op threads speed up the small
convolutions of a surrogate very little.

Workers are spawned, not forked (the server process may hold Ray's or gRPC's threads), once
per round, and exit with it; starting one costs about a second, next to minutes of synthesis.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from fedsim.seeding import torch_generator
from fedsim.threads import torch_threads
from fedsim_methods.distillation.config import DistillationConfig
from fedsim_methods.distillation.synthesis import Synthesis, synthesise


@dataclass(frozen=True)
class SynthesisJob:
    """One client's synthesis: the trajectory's two ends and the labels to synthesise."""

    partition_id: int
    start: list[torch.Tensor]
    target: list[torch.Tensor]
    labels: torch.Tensor
    seed_parts: tuple[int, ...]  # (seed, round, partition id, stream): its random draws


def run_job(
    model: nn.Module, generator_module: nn.Module, cfg: DistillationConfig, job: SynthesisJob
) -> tuple[Synthesis, float]:
    """Synthesise one client's set with ``server_threads`` threads; (result, seconds)."""
    with torch_threads(cfg.server_threads):
        t0 = time.perf_counter()
        result = synthesise(
            model,
            job.start,
            job.target,
            job.labels,
            generator_module,
            cfg,
            torch_generator(*job.seed_parts),
        )
        return result, time.perf_counter() - t0


def synthesise_all(
    model: nn.Module,
    generator_module: nn.Module,
    cfg: DistillationConfig,
    jobs: list[SynthesisJob],
) -> Iterator[tuple[SynthesisJob, Synthesis, float]]:
    """Every job's (job, result, seconds), in the jobs' order, whatever the worker count."""
    workers = min(cfg.synthesis_workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            yield job, *run_job(model, generator_module, cfg, job)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        done = pool.map(partial(run_job, model, generator_module, cfg), jobs)
        for job, (result, seconds) in zip(jobs, done):
            yield job, result, seconds
