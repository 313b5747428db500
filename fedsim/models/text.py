"""Bag of word embeddings for text classification (fastText-style): mean of the token
vectors, padding excluded, then a linear layer. Cheap enough for 100 clients on a CPU, and
its per-sample loss is what the data curriculum scores."""

from __future__ import annotations

import torch
from torch import nn


class BagOfEmbeddings(nn.Module):
    """``forward(ids)``: ``ids`` is (batch, length) int64, padded with ``pad_id``."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        num_classes: int,
        pad_id: int,
        pretrained: torch.Tensor | None = None,
    ):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=pad_id)
        if pretrained is not None:
            if tuple(pretrained.shape) != (vocab_size, dim):
                raise ValueError(
                    f"pretrained embeddings are {tuple(pretrained.shape)}, need {(vocab_size, dim)}"
                )
            with torch.no_grad():
                self.embedding.weight.copy_(pretrained)
                self.embedding.weight[pad_id].zero_()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedding(ids))
