"""Logit adjustment against label skew (Menon et al., ICLR 2021; in federated learning,
FedLC, Zhang et al., ICML 2022): a client trains on ``logits + tau * log(prior)``, where
``prior`` is the class frequency of its own samples, and the model is used without the
shift.

Why SFPrompt needs it under label skew (experiments/sfprompt/README.md, "Label skew"): a
linear classifier on frozen, mean-pooled encoder features sees a large component shared by
every input. On a client whose samples are mostly one class, the fastest way down its loss
is to move that shared logit towards the class, so FedAvg of a few such clients flips the
global model between predicting one class and the other. The shift gives each client's
majority class its prior for free, so local training stops spending its steps on the prior.
Only the client's own label counts are used: nothing extra travels.
"""

from __future__ import annotations

import torch


def logit_shift(labels: torch.Tensor, num_classes: int, tau: float) -> torch.Tensor:
    """``tau * log(prior)`` per class, the prior Laplace-smoothed ((count + 1) / (n + C)) so a
    class a client lacks gets a finite shift; zeros when ``tau`` is 0."""
    if tau == 0:
        return torch.zeros(num_classes)
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    prior = (counts + 1.0) / (counts.sum() + num_classes)
    return (tau * prior.log()).float()
