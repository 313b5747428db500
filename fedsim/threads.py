"""Torch threads pinned per call: the same thread count gives the same float sums.

A conv or matmul splits its reduction over the intra-op threads, so 1 and 2 threads give
results that differ in the last bits, and runs drift apart over rounds. Every client call
and every server-side model computation runs with ``clients.num_cpus`` threads on every
backend (in-process, Ray actors, SuperNodes), which makes their results byte-identical.
The first such call also keeps torch.optim from importing torch's compiler for nothing
(``fedsim.lazy_dynamo``: 2 s and 70 MB per process).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fedsim.lazy_dynamo import defer_dynamo_import


def threads_for(num_cpus: float) -> int:
    """Torch threads for a client given ``num_cpus`` CPUs (at least one)."""
    return max(1, int(num_cpus))


@contextmanager
def torch_threads(num_cpus: float) -> Iterator[None]:
    """Run a block with ``threads_for(num_cpus)`` intra-op threads, then restore."""
    defer_dynamo_import()
    wanted = threads_for(num_cpus)
    before = torch.get_num_threads()
    if before != wanted:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if before != wanted:
            torch.set_num_threads(before)
