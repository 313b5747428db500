"""Pretrain fedsim's conditional generator on the data the server holds, and cache it.

No pretrained class-conditional image generator ships offline (../shared/ASSETS.md), so
fedsim trains a small conditional VAE on ``data.server_share``: training samples the
server keeps and no client ever receives, with their labels (``generator_labels = true``) or
as unlabelled images (``false``: the generator is then a prior over images only, and every
bit of class information in the synthetic sets comes from the clients' updates). Its decoder
is the generator that synthesis optimises latents through (``generators.ConditionalDecoder``).
It is trained once per (dataset, server share, seed, labels, architecture, epochs) and cached
under
``$FEDSIM_CACHE/generators/``; ``fedsim distill-generator CONFIG`` does it ahead of a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fedsim.assets.cache import file_lock, writable_root
from fedsim.config.schema import Experiment
from fedsim.seeding import torch_generator
from fedsim.threads import torch_threads
from fedsim_methods.distillation import PRETRAIN
from fedsim_methods.distillation.config import DistillationConfig
from fedsim_methods.distillation.generators import ConditionalDecoder, freeze

log = logging.getLogger("fedsim")
VERSION = 2  # bump when the generator's architecture or training changes
BATCH = 128
NO_SERVER_DATA = (
    "data.server_share: distillation.generator = 'pretrained' trains on data only the server "
    "holds; set data.server_share > 0 (e.g. 0.1)"
)


class _Encoder(nn.Module):
    def __init__(self, latent_dim: int, num_classes: int, image_shape: tuple[int, ...]):
        super().__init__()
        channels, side, _ = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.head = nn.Linear(64 * (side // 4) ** 2 + latent_dim, 2 * latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.head(torch.cat([self.features(x), self.embed(y)], 1)).chunk(2, 1)
        return mu, log_var


def _key(exp: Experiment, cfg: DistillationConfig, shape, num_classes: int) -> str:
    what = {
        "version": VERSION,
        "dataset": exp.data.dataset,
        "server_share": exp.data.server_share,
        "max_train_samples": exp.data.max_train_samples,
        "seed": exp.run.seed,
        "latent_dim": cfg.latent_dim,
        "epochs": cfg.generator_epochs,
        "shape": list(shape),
        "classes": num_classes,
        "labels": cfg.generator_labels,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def generator_path(exp: Experiment, cfg: DistillationConfig, shape, num_classes: int) -> Path:
    name = f"{exp.data.dataset}-{_key(exp, cfg, shape, num_classes)}.pt"
    return writable_root() / "generators" / name


def train_conditional_vae(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    latent_dim: int,
    epochs: int,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
    conditional: bool = True,
) -> ConditionalDecoder:
    """A conditional VAE on (x, y) in [0, 1] (``conditional=False``: y is never read, the
    images count as unlabelled); returns its decoder. Seeded."""
    shape = tuple(x.shape[1:])
    gen = torch_generator(seed, PRETRAIN)
    if not conditional:
        y = torch.zeros_like(y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = ConditionalDecoder(latent_dim, num_classes, shape, conditional)
        encoder = _Encoder(latent_dim, num_classes if conditional else 1, shape)
    params = list(decoder.parameters()) + list(encoder.parameters())
    optimizer = torch.optim.Adam(params, lr=2e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), BATCH):
            idx = order[start : start + BATCH]
            xb, yb = x[idx], y[idx]
            mu, log_var = encoder(xb, yb)
            z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * log_var)
            recon = decoder(z, yb)
            rec = F.binary_cross_entropy(recon, xb.clamp(0, 1), reduction="sum")
            kl = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
            loss = (rec + kl) / len(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        if progress is not None:
            progress(epoch + 1, total / len(y))
    return freeze(decoder)


def pretrained_generator(
    exp: Experiment,
    cfg: DistillationConfig,
    progress: Callable[[int, float], None] | None = None,
    force: bool = False,
) -> tuple[ConditionalDecoder, Path]:
    """The cached decoder for this experiment, trained first when missing (or ``force``)."""
    from fedsim.data.federated import federated_image_data

    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    if data.x_server is None or len(data.x_server) == 0:
        raise ValueError(NO_SERVER_DATA)
    path = generator_path(exp, cfg, data.input_shape, data.num_classes)
    with file_lock(f"generator-{path.stem}"):
        if force or not path.exists():
            log.info(
                "training the conditional generator on %d server-held images (%d epochs)",
                len(data.y_server),
                cfg.generator_epochs,
            )
            if progress is None:

                def progress(epoch: int, loss: float) -> None:
                    log.info("generator epoch %d/%d: loss %.2f", epoch, cfg.generator_epochs, loss)

            with torch_threads(cfg.server_threads):
                decoder = train_conditional_vae(
                    data.x_server,
                    data.y_server,
                    data.num_classes,
                    cfg.latent_dim,
                    cfg.generator_epochs,
                    exp.run.seed,
                    progress,
                    cfg.generator_labels,
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp-{os.getpid()}")
            torch.save(decoder.state_dict(), tmp)
            tmp.replace(path)
    decoder = ConditionalDecoder(
        cfg.latent_dim, data.num_classes, data.input_shape, cfg.generator_labels
    )
    decoder.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return freeze(decoder), path
