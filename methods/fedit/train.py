"""One local LoRA run: micro-batches, gradient accumulation, linear LR decay to zero.

The loss of an optimiser step is the mean over all target tokens of its micro-batches
(token-weighted, so accumulation gives the same gradient as one big batch). The schedule
restarts with every local run, as in FedIT's reference code (each round is a fresh
``Trainer``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fedsim.config.schema import ClientConfig
from fedsim.training import make_optimizer
from fedsim_methods.fedit.config import FedITConfig
from fedsim_methods.fedit.prompts import IGNORE, Example, collate


@dataclass(frozen=True)
class LocalRun:
    loss: float  # mean of the per-step token-mean losses
    first_loss: float  # the first step's loss (before any update)
    steps: int
    tokens: int  # non-padding input tokens processed (throughput)
    targets: int  # tokens the loss was computed on


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the labelled positions of a batch."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    targets = batch["labels"][:, 1:].reshape(-1)
    return nn.functional.cross_entropy(shifted, targets, ignore_index=IGNORE, reduction="sum")


def plan_steps(n_examples: int, cfg: FedITConfig, epochs: int) -> int:
    per_epoch = math.ceil(math.ceil(n_examples / cfg.micro_batch_size) / cfg.gradient_accumulation)
    return cfg.max_steps or per_epoch * epochs


def step_groups(
    examples: list[Example], cfg: FedITConfig, steps: int, generator: torch.Generator
) -> Iterator[list[list[Example]]]:
    """``steps`` groups of ``gradient_accumulation`` micro-batches; a new seeded permutation
    each epoch; the last group of an epoch may be shorter."""
    done = 0
    while done < steps:
        order = torch.randperm(len(examples), generator=generator).tolist()
        micro = [
            [examples[i] for i in order[s : s + cfg.micro_batch_size]]
            for s in range(0, len(order), cfg.micro_batch_size)
        ]
        for g in range(0, len(micro), cfg.gradient_accumulation):
            yield micro[g : g + cfg.gradient_accumulation]
            done += 1
            if done == steps:
                return


def train_lora(
    model: nn.Module,
    examples: list[Example],
    cfg: FedITConfig,
    client: ClientConfig,
    generator: torch.Generator,
    device: torch.device,
    pad_id: int,
) -> LocalRun:
    """Train the trainable (adapter) parameters of ``model`` in place."""
    if not examples:
        raise ValueError("this client holds no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, client)
    steps = plan_steps(len(examples), cfg, client.local_epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    model.train()
    losses: list[torch.Tensor] = []
    tokens = targets = 0
    for group in step_groups(examples, cfg, steps, generator):
        batches = [collate(mb, pad_id) for mb in group]
        n_targets = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for batch in batches:
            tokens += int(batch["attention_mask"].sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = token_loss_sum(model, batch) / max(n_targets, 1)
            loss.backward()
            step_loss += loss.detach()
        optimizer.step()
        schedule.step()
        losses.append(step_loss)
        targets += n_targets
    model.eval()
    values = torch.stack(losses).cpu()
    return LocalRun(float(values.mean()), float(values[0]), len(losses), tokens, targets)
