"""A user-supplied generator for the plug-in contract test (import path + checkpoint)."""

from __future__ import annotations

import torch
from torch import nn


class LinearGenerator(nn.Module):
    """latent (8,) + label -> image through one linear map and a sigmoid."""

    def __init__(self, num_classes: int, image_shape: tuple[int, ...]):
        super().__init__()
        self.image_shape = image_shape
        self.latent_shape = (8,)
        self.embed = nn.Embedding(num_classes, 8)
        numel = 1
        for d in image_shape:
            numel *= d
        self.out = nn.Linear(16, numel)

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([latents, self.embed(labels)], 1)
        return torch.sigmoid(self.out(h)).view(-1, *self.image_shape)


def build(num_classes: int, image_shape: tuple[int, ...]) -> nn.Module:
    return LinearGenerator(num_classes, image_shape)


def not_a_module(num_classes: int, image_shape: tuple[int, ...]):
    return "nope"


class NoLatentShape(nn.Module):
    def forward(self, latents, labels):  # pragma: no cover - refused before use
        return latents


def no_latent_shape(num_classes: int, image_shape: tuple[int, ...]) -> nn.Module:
    return NoLatentShape()


def raises(num_classes: int, image_shape: tuple[int, ...]) -> nn.Module:
    """A factory that fails: its error must name distillation.generator_module."""
    raise ZeroDivisionError("the factory's own bug")
