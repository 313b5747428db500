"""The local training and evaluation loops, kept plain so their cost is the floor.

Batches are slices of in-memory tensors through a seeded permutation: no DataLoader
workers, no per-sample Python, and the order depends only on the generator given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from fedsim.config.schema import ClientConfig


def make_optimizer(params, cfg: ClientConfig) -> torch.optim.Optimizer:
    """``[client]``'s optimiser. ``fused`` (adam/adamw) picks torch's single-kernel update;
    None lets torch choose its default (the multi-tensor one), which runs made without
    the key used."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    fused = True if cfg.fused else None
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def train_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ClientConfig,
    generator: torch.Generator,
    device: torch.device,
    proximal_mu: float = 0.0,
    index_batches: Iterable[torch.Tensor] | None = None,
    before_step: Callable[[nn.Module], None] | None = None,
) -> float:
    """Run ``cfg.local_epochs`` epochs; return the mean training loss over all steps.

    With ``proximal_mu > 0`` adds FedProx's (mu/2)||w - w_global||^2 to every step.
    ``index_batches`` replaces the shuffled epochs with given row indices per step (a data
    curriculum, ``fedsim_methods.curriculum.local``). ``before_step(model)`` runs between backward
    and the optimiser step, with the gradients in place (SCAFFOLD corrects them there).
    """
    model.train()
    optimizer = make_optimizer(model.parameters(), cfg)
    loss_fn = nn.CrossEntropyLoss()
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    total, steps = torch.zeros((), device=device), 0
    if index_batches is None:
        index_batches = (
            idx
            for _ in range(cfg.local_epochs)
            for idx in batches(len(y), cfg.batch_size, generator)
        )
    for idx in index_batches:
        xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        if anchor is not None:
            prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
            loss = loss + 0.5 * proximal_mu * prox
        loss.backward()
        if before_step is not None:
            before_step(model)
        optimizer.step()
        total += loss.detach()
        steps += 1
    return float(total) / max(steps, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over (x, y)."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, correct = 0.0, 0
    for idx in batches(len(y), batch_size, None):
        xb, yb = x[idx].to(device), y[idx].to(device)
        logits = model(xb)
        loss_sum += float(loss_fn(logits, yb))
        correct += int((logits.argmax(1) == yb).sum())
    n = max(len(y), 1)
    return {"loss": loss_sum / n, "accuracy": correct / n}


def pick_device(num_gpus: float) -> torch.device:
    """The GPU a Ray actor was given (it sees only its own), else CPU."""
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
