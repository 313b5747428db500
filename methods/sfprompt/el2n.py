"""EL2N data pruning (Paul et al. 2021), as SFPrompt uses it: each sample's error L2 norm
||softmax(f(x)) - onehot(y)||_2 under the current model on the client-only path; the
hardest (largest-score) fraction ``gamma`` is kept for training, over all samples (the
paper) or within each class (fedsim's default: with few classes a global ranking keeps
whichever class the model currently under-predicts, and training on it alone flips the
model to the other class next round)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional

Logits = Callable[[torch.Tensor], torch.Tensor]  # rows of a batch -> logits


def el2n(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ||softmax(logits) - onehot(labels)||_2."""
    probs = functional.softmax(logits, dim=-1)
    onehot = functional.one_hot(labels, probs.shape[-1]).to(probs.dtype)
    return torch.linalg.vector_norm(probs - onehot, ord=2, dim=-1)


@torch.no_grad()
def el2n_scores(logits_of: Logits, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Scores of all ``len(labels)`` samples; ``logits_of(rows)`` runs the model on them."""
    scores = []
    for start in range(0, len(labels), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(labels)))
        scores.append(el2n(logits_of(rows).float().cpu(), labels[rows]))
    return torch.cat(scores) if scores else torch.zeros(0)


def hardest(scores: torch.Tensor, gamma: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (ascending) of the ceil(gamma * n) largest scores; ties go to lower indices.
    With ``labels``: the ceil(gamma * n_c) largest of each class c."""
    if labels is not None:
        kept = [rows[hardest(scores[rows], gamma)] for c in labels.unique(sorted=True)
                for rows in [torch.nonzero(labels == c).flatten()]]  # fmt: skip
        return torch.sort(torch.cat(kept)).values if kept else torch.zeros(0, dtype=torch.long)
    keep = min(len(scores), max(1, math.ceil(gamma * len(scores)))) if len(scores) else 0
    order = torch.argsort(scores, descending=True, stable=True)
    return torch.sort(order[:keep]).values
