"""Small convolutional networks for MNIST / Fashion-MNIST / CIFAR-10 baselines."""

from __future__ import annotations

import torch
from torch import nn


class ConvPoolNet(nn.Module):
    """conv5-ReLU-maxpool blocks, then fully connected layers: 28x28 or 32x32 inputs, any
    channel count (no input padding: each block takes 4 pixels off, then halves the side)."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        channels: tuple[int, ...],
        hidden: tuple[int, ...],
    ):
        super().__init__()
        blocks: list[nn.Module] = []
        side, previous = image_size, in_channels
        for width in channels:
            blocks += [nn.Conv2d(previous, width, 5), nn.ReLU(), nn.MaxPool2d(2)]
            side, previous = (side - 4) // 2, width
        self.features = nn.Sequential(*blocks, nn.Flatten())
        layers: list[nn.Module] = []
        size = previous * side * side
        for width in hidden:
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.classifier = nn.Sequential(*layers, nn.Linear(size, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(ConvPoolNet):
    """conv5-16, pool, conv5-32, pool, fc ``hidden``, fc: the baselines' small CNN."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, hidden: int = 128):
        super().__init__(in_channels, image_size, num_classes, (16, 32), (hidden,))


class LeNet5(ConvPoolNet):
    """LeNet-5 as federated-learning papers run it on 28x28 images (the curricula paper's
    FMNIST model): conv5-6, pool, conv5-16, pool, fc120, fc84, fc; ReLU, max-pooling and no
    input padding (16 x 4 x 4 features on 28x28; 16 x 5 x 5 on 32x32)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__(in_channels, image_size, num_classes, (6, 16), (120, 84))


class MLP(nn.Module):
    """One hidden layer: the cheapest model that still learns MNIST."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
