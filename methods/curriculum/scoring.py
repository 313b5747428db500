"""Difficulty scores: per-sample loss under the global model (G), the previous local model (L),
or their sum (G+L), as in the paper's "G", "L" and "LG" scorings.

L is the model this client ended its last training call with; clients keep it in
``Context.state`` (:func:`remember_local_model`). A client that has not trained yet has no L;
it scores with G alone, as the reference code does.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from torch import nn
from torch.func import functional_call

LOCAL_MODEL_KEY = "curriculum.local-model"


@torch.no_grad()
def per_sample_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device,
    state: dict[str, torch.Tensor] | None = None,
) -> np.ndarray:
    """Cross-entropy of every sample, in eval mode; with ``state``, under those weights.

    ``state`` is applied through ``functional_call``, so ``model``'s own weights (the
    global model about to be trained) are never touched. The train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    params = None if state is None else {k: v.to(device) for k, v in state.items()}
    out = []
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        logits = model(xb) if params is None else functional_call(model, params, (xb,))
        out.append(nn.functional.cross_entropy(logits, yb, reduction="none").double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)


def sample_scores(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    scoring: str,
    local_state: dict[str, torch.Tensor] | None,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Scores for ``scoring`` in {"global", "local", "both"}; ``model`` holds the global weights."""
    if scoring not in ("global", "local", "both"):
        raise ValueError(f"unknown scoring '{scoring}'")
    if scoring == "local" and local_state is not None:
        return per_sample_loss(model, x, y, batch_size, device, local_state)
    scores = per_sample_loss(model, x, y, batch_size, device)
    if scoring == "both" and local_state is not None:
        scores = scores + per_sample_loss(model, x, y, batch_size, device, local_state)
    return scores


def remember_local_model(context: Context, model: nn.Module) -> None:
    """Keep the weights this client ends training with, for L scoring next time."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    context.state[LOCAL_MODEL_KEY] = ArrayRecord(state)


def recall_local_model(context: Context) -> dict[str, torch.Tensor] | None:
    """The weights saved by :func:`remember_local_model`, or None before the first training."""
    if LOCAL_MODEL_KEY not in context.state.array_records:
        return None
    return context.state.array_records[LOCAL_MODEL_KEY].to_torch_state_dict()
