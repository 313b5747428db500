"""Where synthetic images come from: pixels, fedsim's pretrained generator, or yours.

Synthesis optimises *latents*; a generator maps (latents, labels) to images. The contract
a generator module meets (``custom`` generators included):

- ``latent_shape``: the shape of one image's latent (a tuple of ints);
- ``forward(latents, labels) -> images`` of shape (n, C, H, W) in the data's range ([0, 1]),
  differentiable in ``latents``;
- optionally ``init_latents(labels, generator) -> latents``; otherwise latents start as
  standard normal draws from the seeded ``generator``.

Its weights are frozen during synthesis; only latents (and the synthetic learning rate) move.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fedsim.method import resolve


class PixelSpace(nn.Module):
    """No generator: the latents are the images (the paper's pixel-space ablation)."""

    def __init__(self, image_shape: tuple[int, ...]):
        super().__init__()
        self.latent_shape = tuple(image_shape)

    def init_latents(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(len(labels), *self.latent_shape, generator=generator)
        return 0.5 + 0.25 * noise  # around mid-grey, the data are in [0, 1]

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return latents


class ConditionalDecoder(nn.Module):
    """A small class-conditional image decoder (the generator half of a conditional VAE).

    (z, y) -> linear -> 32 x s x s -> two (upsample x2, conv, GroupNorm, ReLU) -> conv ->
    sigmoid, with s = ceil(side / 4); the output is cropped to the data's side (28 or 32).
    Kept small on purpose: synthesis backpropagates through it at every iteration.
    """

    def __init__(
        self,
        latent_dim: int,
        num_classes: int,
        image_shape: tuple[int, ...],
        conditional: bool = True,
    ):
        super().__init__()
        channels, side, _ = image_shape
        self.conditional = conditional  # False: labels ignored (trained on unlabelled images)
        num_classes = num_classes if conditional else 1
        self.latent_shape = (latent_dim,)
        self.side = side
        self.start = math.ceil(side / 4)
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Linear(2 * latent_dim, 32 * self.start * self.start)
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.GroupNorm(8, 32),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(32, 16, 3, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.Conv2d(16, channels, 3, padding=1),
        )

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.conditional:
            labels = torch.zeros_like(labels)
        h = torch.cat([latents, self.embed(labels)], dim=1)
        h = torch.relu(self.project(h)).view(-1, 32, self.start, self.start)
        return torch.sigmoid(self.body(h))[..., : self.side, : self.side]


class GeneratorError(ValueError):
    """A custom generator that does not meet the contract (the message names the key)."""


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _first_line(exc: BaseException) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")


def custom_generator(
    factory_ref: str, checkpoint: str, num_classes: int, image_shape: tuple[int, ...]
) -> nn.Module:
    """``factory(num_classes, image_shape)`` from its import path, weights from ``checkpoint``."""
    try:
        factory = resolve(factory_ref)
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything on import
        raise GeneratorError(
            f"distillation.generator_module: cannot import {factory_ref!r} "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    try:
        module: Any = factory(num_classes, tuple(image_shape))
    except Exception as exc:  # noqa: BLE001 - nor can we know what the factory raises
        raise GeneratorError(
            f"distillation.generator_module: {factory_ref!r}(num_classes={num_classes}, "
            f"image_shape={tuple(image_shape)}) raised {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not isinstance(module, nn.Module):
        raise GeneratorError(
            f"distillation.generator_module: {factory_ref!r} returned "
            f"{type(module).__name__}, not a torch.nn.Module"
        )
    shape = getattr(module, "latent_shape", None)
    if not (isinstance(shape, tuple) and shape and all(isinstance(d, int) for d in shape)):
        raise GeneratorError(
            f"distillation.generator_module: {factory_ref!r} has no latent_shape "
            "(a tuple of ints: one image's latent)"
        )
    if checkpoint:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except OSError as exc:
            raise GeneratorError(
                f"distillation.generator_checkpoint: cannot read {checkpoint} ({exc.strerror})"
            ) from None
        except Exception as exc:  # noqa: BLE001 - torch's message advises unsafe loading
            raise GeneratorError(
                f"distillation.generator_checkpoint: {checkpoint} is not a state dict saved "
                f"with torch.save(module.state_dict(), ...) ({type(exc).__name__})"
            ) from None
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise GeneratorError(
                f"distillation.generator_checkpoint: {checkpoint} does not fit "
                f"{factory_ref!r}: {first}"
            ) from None
    return freeze(module)


def initial_latents(
    gen: nn.Module, labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    init = getattr(gen, "init_latents", None)
    if init is not None:
        return init(labels, generator).detach().clone()
    return torch.randn(len(labels), *gen.latent_shape, generator=generator)
