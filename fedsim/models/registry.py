"""Build a model from the experiment's ``[model]`` section and the data's shape."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.config.schema import ModelConfig
from fedsim.models.cnn import MLP, LeNet5, SmallCNN
from fedsim.models.convnet import ConvNet, ResNet18
from fedsim.models.text import BagOfEmbeddings
from fedsim.seeding import MODEL_INIT, derive_seed
from fedsim.text import Vocabulary, pretrained_embeddings


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    vocab: Vocabulary | None = None,
) -> nn.Module:
    """Same config + seed -> the same initial weights, on every backend. ``vocab`` is the
    text data's vocabulary (``bag_of_embeddings``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, MODEL_INIT))
        if cfg.name == "bag_of_embeddings":
            if vocab is None:
                raise ValueError("model.name: bag_of_embeddings needs text data")
            pretrained = pretrained_embeddings() if cfg.init == "minilm" else None
            dim = pretrained.shape[1] if pretrained is not None else cfg.hidden
            return BagOfEmbeddings(vocab.size, dim, num_classes, vocab.pad_id, pretrained)
        if cfg.name == "cnn":
            channels, height, _ = input_shape
            return SmallCNN(channels, height, num_classes, cfg.hidden)
        if cfg.name == "lenet5":
            channels, height, _ = input_shape
            return LeNet5(channels, height, num_classes)
        if cfg.name == "convnet":
            channels, height, _ = input_shape
            return ConvNet(channels, height, num_classes, cfg.width, cfg.depth)
        if cfg.name == "resnet18":
            return ResNet18(input_shape[0], num_classes, cfg.width)
        features = 1
        for dim in input_shape:
            features *= dim
        return MLP(features, num_classes, cfg.hidden)
