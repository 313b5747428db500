"""Train a model on the union of synthetic sets (the server's only training signal).

Mini-batch SGD over seeded shuffles, every batch augmented with the same differentiable
augmentations synthesis used (the reference trains with DSA as well).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fedsim_methods.distillation.augment import augment


def train_on_synthetic(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    ops: tuple[str, ...],
    gen: torch.Generator,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> float:
    """``epochs`` passes of SGD; returns the last epoch's mean loss."""
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    last = 0.0
    for _ in range(epochs):
        total, seen = 0.0, 0
        for idx in torch.randperm(len(labels), generator=gen).split(batch_size):
            x = augment(images[idx], ops, gen)
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        last = total / max(seen, 1)
    return last
