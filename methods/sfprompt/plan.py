"""Micro-batches, chunks and the loss normalisation of split training.

A client's split training walks ``order`` (its kept samples, reshuffled every epoch) in
micro-batches of ``batch_size`` (the last of an epoch may be smaller; none spans two
epochs). ``chunk_size`` consecutive micro-batches travel in one exchange and make ONE
optimiser step. The chunk's objective is the mean per-sample loss over all its samples,

    L_chunk = (1 / N_chunk) * sum_{i in chunk} CE(f(x_i), y_i),

so micro-batch j contributes ``sum_{i in j} CE / N_chunk`` (``micro_batch_loss``) and the
gradients accumulated over the chunk's micro-batches are the gradient of L_chunk, whatever
the micro-batch sizes: exact accumulation, equal to one pass over the whole chunk up to
float rounding (tests/test_sfprompt.py). Client and server both derive the chunks from
(kept samples, batch_size, epochs, chunk_size), so the server knows every shape to expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional


@dataclass(frozen=True)
class Chunk:
    """Rows ``order[start : start + sum(sizes)]``, as micro-batches of ``sizes``."""

    index: int
    start: int
    sizes: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def micro_batches(self) -> list[slice]:
        """Slices of the chunk's rows (0-based within the chunk), one per micro-batch."""
        bounds, at = [], 0
        for size in self.sizes:
            bounds.append(slice(at, at + size))
            at += size
        return bounds


def micro_batch_sizes(n: int, batch_size: int, epochs: int) -> list[int]:
    """Sizes of the micro-batches of ``epochs`` passes over ``n`` samples."""
    full, rest = divmod(n, batch_size)
    return ([batch_size] * full + ([rest] if rest else [])) * epochs


def chunks(n: int, batch_size: int, epochs: int, chunk_size: int) -> list[Chunk]:
    """The chunks of split training over ``n`` kept samples."""
    sizes = micro_batch_sizes(n, batch_size, epochs)
    out, start = [], 0
    for index, first in enumerate(range(0, len(sizes), chunk_size)):
        group = tuple(sizes[first : first + chunk_size])
        out.append(Chunk(index, start, group))
        start += sum(group)
    return out


def epoch_order(kept: torch.Tensor, epochs: int, generator: torch.Generator) -> torch.Tensor:
    """``kept`` (sample indices) reshuffled once per epoch, the epochs concatenated."""
    return torch.cat([kept[torch.randperm(len(kept), generator=generator)] for _ in range(epochs)])


def micro_batch_loss(logits: torch.Tensor, labels: torch.Tensor, chunk_total: int) -> torch.Tensor:
    """This micro-batch's share of the chunk's mean loss: sum of CE / samples in the chunk."""
    return functional.cross_entropy(logits, labels, reduction="sum") / chunk_total
