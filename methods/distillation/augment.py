"""Differentiable, seeded augmentation of a batch (in the spirit of DSA, Zhao & Bilen 2021).

Trajectory matching augments the synthetic images inside every unrolled step, and the
gradient must flow back through the augmentation to the pixels (or latents). Parameters
are drawn once (``sample``) and applied as a pure function (``apply``), so the first-order
gradient can replay exactly the augmentation a step used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

SCALE = 0.2  # scale factors in [1 - SCALE, 1 + SCALE] per axis
ROTATE = 15.0  # degrees
CROP = 0.125  # translation, as a fraction of the side
CUTOUT = 0.5  # side of the cut-out square, as a fraction of the side


@dataclass(frozen=True)
class AugmentParams:
    flip: torch.Tensor | None = None  # (n,) bool
    affine: torch.Tensor | None = None  # (n, 2, 3)
    brightness: torch.Tensor | None = None  # (n, 1, 1, 1)
    saturation: torch.Tensor | None = None
    contrast: torch.Tensor | None = None
    cutout: torch.Tensor | None = None  # (n, 1, H, W) 0/1 mask


def sample(ops: tuple[str, ...], n: int, side: int, generator: torch.Generator) -> AugmentParams:
    """Parameters for ``n`` images of ``side`` px; the order of draws is fixed."""

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    out: dict[str, torch.Tensor] = {}
    if "color" in ops:
        out["brightness"] = uniform(n, 1, 1, 1) - 0.5
        out["saturation"] = uniform(n, 1, 1, 1) * 2.0
        out["contrast"] = uniform(n, 1, 1, 1) + 0.5
    if {"scale", "rotate", "crop"} & set(ops):
        sx = 1 + SCALE * (2 * uniform(n) - 1) if "scale" in ops else torch.ones(n)
        sy = 1 + SCALE * (2 * uniform(n) - 1) if "scale" in ops else torch.ones(n)
        angle = (2 * uniform(n) - 1) * math.radians(ROTATE) if "rotate" in ops else torch.zeros(n)
        tx = (2 * uniform(n) - 1) * 2 * CROP if "crop" in ops else torch.zeros(n)
        ty = (2 * uniform(n) - 1) * 2 * CROP if "crop" in ops else torch.zeros(n)
        cos, sin = torch.cos(angle), torch.sin(angle)
        out["affine"] = torch.stack(
            [torch.stack([sx * cos, -sy * sin, tx], 1), torch.stack([sx * sin, sy * cos, ty], 1)],
            1,
        )
    if "cutout" in ops:
        half = max(1, int(side * CUTOUT / 2))
        cy = torch.randint(0, side, (n,), generator=generator)
        cx = torch.randint(0, side, (n,), generator=generator)
        rows = torch.arange(side).view(1, side, 1)
        cols = torch.arange(side).view(1, 1, side)
        inside = ((rows - cy.view(n, 1, 1)).abs() < half) & ((cols - cx.view(n, 1, 1)).abs() < half)
        out["cutout"] = (~inside).float().unsqueeze(1)
    if "flip" in ops:
        out["flip"] = uniform(n) < 0.5
    return AugmentParams(**out)


def apply(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """``x`` augmented by ``p``; differentiable in ``x``."""
    if p.brightness is not None:
        x = x + p.brightness.to(x)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * p.saturation.to(x) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * p.contrast.to(x) + mean
    if p.affine is not None:
        grid = F.affine_grid(p.affine.to(x), list(x.shape), align_corners=True)
        x = F.grid_sample(x, grid, align_corners=True)
    if p.cutout is not None:
        x = x * p.cutout.to(x)
    if p.flip is not None:
        x = torch.where(p.flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    return x


def augment(x: torch.Tensor, ops: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """Sample and apply in one call (server training on synthetic data)."""
    if not ops:
        return x
    return apply(x, sample(ops, x.shape[0], x.shape[-1], generator))
