"""FedDM client: a synthetic set whose class-wise embedding means match the client's real
data under models drawn around the global model (Xiong et al. 2023, distribution matching).

Per round: for each class the client holds, ``ipc`` synthetic images start as randomly
chosen real images of that class (``init = "real"``) or Gaussian noise. Each of
``iterations`` steps draws one model w' = w + rho * d / ||d|| (d ~ N(0, I) over every float
parameter: a point of the sphere of radius rho around w, where almost all of a
high-dimensional ball's volume lies), embeds a batch of real images of each class and that
class's synthetic images (the input of the model's last linear layer), and takes an SGD step
on the synthetic images against sum_c ||mean embed(real_c) - mean embed(syn_c)||^2 /
||mean embed(real_c)||^2. The division (ours; the paper's loss is the plain squared distance)
makes one image learning rate fit every round: fedsim's small CNN has no normalisation
layer, and the embeddings of a trained global model are orders of magnitude larger than a
fresh one's, which made a fixed rate diverge after a few rounds. The
reply carries the synthetic images and labels instead of a model. Every draw is seeded by
(seed, round, partition id, purpose, step), so a resumed run repeats these bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from torch import nn
from torch.func import functional_call

from fedsim.config.schema import Experiment
from fedsim.local import local
from fedsim.seeding import torch_generator
from fedsim_methods.feddm import (
    IMAGES,
    LABELS,
    PERTURBATION,
    REAL_BATCH,
    SYNTHESIS_INIT,
    SYNTHETIC,
    FedDMConfig,
    feddm_of,
)


@dataclass
class Matched:
    images: torch.Tensor
    labels: torch.Tensor
    losses: list[float]


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer whose input is the embedding distribution matching compares."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer to take embeddings from")
    return linears[-1]


def perturbed(params: dict[str, torch.Tensor], rho: float, gen: torch.Generator):
    """``params`` moved by ``rho`` (L2 norm over all float tensors) in a random direction."""
    names = [n for n, p in params.items() if p.is_floating_point()]
    if rho == 0 or not names:
        return dict(params)
    direction = {n: torch.randn(params[n].shape, generator=gen) for n in names}
    norm = torch.sqrt(sum((d**2).sum() for d in direction.values()))
    scale = rho / float(norm)
    return {n: (p + scale * direction[n].to(p.device)) if n in direction else p
            for n, p in params.items()}  # fmt: skip


def distribution_match(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: FedDMConfig,
    seeds: tuple[int, ...],
    device: torch.device,
) -> Matched:
    """The synthetic set of one client (see the module docstring); ``seeds`` = (seed, round,
    partition id), the parts every stream derives from."""
    model.eval()
    classes = sorted(int(c) for c in torch.unique(y))
    by_class = {c: torch.nonzero(y == c).flatten() for c in classes}
    init_gen = torch_generator(*seeds, SYNTHESIS_INIT)
    starts = []
    for c in classes:
        rows = by_class[c]
        pick = rows[torch.randint(len(rows), (cfg.ipc,), generator=init_gen)]
        if cfg.init == "noise":
            starts.append(torch.randn((cfg.ipc, *x.shape[1:]), generator=init_gen))
        else:
            starts.append(x[pick].float().clone())
    images = torch.cat(starts).to(device).requires_grad_(True)
    labels = torch.tensor(classes).repeat_interleave(cfg.ipc)
    optimizer = torch.optim.SGD([images], lr=cfg.image_lr, momentum=cfg.image_momentum)

    captured: list[torch.Tensor] = []
    hook = last_linear(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    base = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    losses = []
    try:
        for step in range(cfg.iterations):
            params = perturbed(base, cfg.rho, torch_generator(*seeds, PERTURBATION, step))
            batch_gen = torch_generator(*seeds, REAL_BATCH, step)
            loss = torch.zeros((), device=device)
            for i, c in enumerate(classes):
                rows = by_class[c]
                if len(rows) > cfg.real_batch:
                    rows = rows[torch.randperm(len(rows), generator=batch_gen)[: cfg.real_batch]]
                captured.clear()
                with torch.no_grad():
                    functional_call(model, (params, buffers), (x[rows].to(device).float(),))
                real = captured[-1].flatten(1).mean(0)
                captured.clear()
                syn = images[i * cfg.ipc : (i + 1) * cfg.ipc]
                functional_call(model, (params, buffers), (syn,))
                gap = ((real - captured[-1].flatten(1).mean(0)) ** 2).sum()
                loss = loss + gap / ((real**2).sum() + 1e-8)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        hook.remove()
    return Matched(images.detach().cpu().float(), labels, losses)


def train(msg: Message, context: Context, exp: Experiment) -> Message:
    server_round = int(msg.content["config"]["server-round"])
    at = local(msg, context, exp)
    cfg = feddm_of(exp)
    matched = distribution_match(
        at.model, at.x, at.y, cfg, (exp.run.seed, server_round, at.pid), at.device
    )
    synthetic = ArrayRecord(
        {IMAGES: Array(matched.images.numpy()), LABELS: Array(matched.labels.numpy())}
    )
    metrics = MetricRecord(
        {
            "num-examples": len(at.y),
            "dm_first_loss": matched.losses[0],
            "dm_last_loss": matched.losses[-1],
        }
    )
    return Message(RecordDict({SYNTHETIC: synthetic, "metrics": metrics}), reply_to=msg)
