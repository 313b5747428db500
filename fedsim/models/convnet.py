"""The dataset-distillation ConvNet and a ResNet-18-style network, both with instance norm.

ConvNet is the surrogate of the distillation literature (MTT, GLaD, FedDG): ``depth`` blocks
of conv3x3 -> instance norm -> ReLU -> 2x2 average pool at constant ``width``, then one
linear layer. Instance norm is GroupNorm with one group per channel (affine), as in the
reference code: it keeps no running statistics, so a forward pass is a pure function of the
weights and the batch, which trajectory matching needs (``fedsim_methods.distillation.synthesis``).

ResNet18 is the "larger server-only model": four stages of two basic blocks, channel widths
``width * (1, 2, 4, 8)`` (64 gives the classic 11M-parameter network; smaller widths keep it
affordable on CPUs), a 3x3 stem for 28-32 px inputs, instance norm like the ConvNet.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def instance_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels, channels, affine=True)


class ConvNet(nn.Module):
    def __init__(
        self, in_channels: int, image_size: int, num_classes: int, width: int = 128, depth: int = 3
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                instance_norm(width),
                nn.ReLU(),
                nn.AvgPool2d(2),
            ]
            channels, side = width, side // 2
        if side < 1:
            raise ValueError(f"model.depth: {depth} halvings leave nothing of {image_size} px")
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Linear(width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.norm1 = instance_norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.norm2 = instance_norm(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                instance_norm(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), instance_norm(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        channels = width
        for stage, multiple in enumerate((1, 2, 4, 8)):
            out = width * multiple
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, out, stride))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
