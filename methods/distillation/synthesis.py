"""Trajectory matching: a labelled synthetic set that moves the global weights to a client's.

For one client, (theta_0 = global weights sent, theta_T = the client's weights back) is an
expert trajectory. Synthesis optimises latents z (pixels, or a generator's inputs) and a
learnable learning rate alpha so that N SGD steps on the augmented synthetic images,
starting at theta_0, land near theta_T:

    theta_{i+1} = theta_i - alpha * grad CE(f(theta_i, A_i(G(z)[b_i])), y[b_i])
    L = ||theta_N - theta_T||^2 / ||theta_0 - theta_T||^2

Two ways to take dL/dz (``distillation.gradient``):
- ``unrolled``: backprop through all N steps (MTT's exact gradient; the graph of every step
  is kept, so memory grows with N);
- ``first_order``: the reference code's gradient. Each step's gradient g_i is treated as
  depending on its own images only (not through theta_i on earlier images), so with
  theta_N = theta_0 - alpha * sum_i g_i, dL/dx_i = (dL/dg_i)^T dg_i/dx_i with
  dL/dg_i = -2 alpha (theta_N - theta_T) / ||theta_0 - theta_T||^2: a second pass takes
  each step's double-backward graph, either replayed one step at a time (``step_graphs =
  "replay"``: memory is one step's graph whatever N is) or kept from the first pass
  (``"keep"``: each step computed once, memory growing with N; the trajectory's gradients
  then come from torch's differentiable backward formulas, which round differently, so the
  results differ from ``"replay"`` in the last bits).

Every random draw (initial latents, batches, augmentations) comes from the generator passed
in, which the caller seeds by (seed, round, partition id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fedsim_methods.distillation import augment as aug
from fedsim_methods.distillation.config import DistillationConfig
from fedsim_methods.distillation.generators import initial_latents


@dataclass
class Synthesis:
    images: torch.Tensor  # (n, C, H, W), detached
    labels: torch.Tensor  # (n,)
    syn_lr: float
    losses: list[float] = field(default_factory=list)  # matching loss per iteration


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class Student:
    """The surrogate as a pure function of a list of parameter tensors (its buffers fixed)."""

    def __init__(self, model: nn.Module):
        self.model = model.train()
        self.names = [n for n, _ in model.named_parameters()]
        self.buffers = dict(model.named_buffers())

    def loss(self, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weights = {**self.buffers, **dict(zip(self.names, params))}
        return F.cross_entropy(functional_call(self.model, weights, (x,)), y)


def _batches(n: int, batch: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Indices for ``steps`` inner steps: shuffled passes over the n images."""
    if batch <= 0 or batch >= n:
        return [torch.arange(n) for _ in range(steps)]
    out: list[torch.Tensor] = []
    while len(out) < steps:
        out.extend(torch.randperm(n, generator=gen).split(batch))
    return out[:steps]


def synthesise(
    model: nn.Module,
    start: list[torch.Tensor],
    target: list[torch.Tensor],
    labels: torch.Tensor,
    generator_module: nn.Module,
    cfg: DistillationConfig,
    gen: torch.Generator,
) -> Synthesis:
    """Optimise a synthetic set for ``labels`` (see the module docstring)."""
    student = Student(model)
    device = next(model.parameters()).device
    start = [p.detach().float().to(device) for p in start]
    theta_0, theta_t = _flat(start), _flat([p.detach().float().to(device) for p in target])
    distance = torch.sum((theta_0 - theta_t) ** 2).clamp_min(1e-12)
    labels = labels.to(device)
    latents = initial_latents(generator_module, labels.cpu(), gen).to(device)
    latents.requires_grad_(True)
    syn_lr = torch.tensor(cfg.syn_lr, device=device, requires_grad=True)
    pixel = not any(True for _ in generator_module.parameters())
    lr = cfg.lr_images if pixel else cfg.lr_latents
    opt_latents = torch.optim.SGD([latents], lr=lr, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=cfg.lr_lr, momentum=0.5)
    ops = cfg.augmentations()
    side = None
    losses: list[float] = []
    if cfg.gradient == "unrolled":
        step = _unrolled
    else:
        step = partial(_first_order, keep_graphs=cfg.step_graphs == "keep")
    for _ in range(cfg.iterations):
        images = generator_module(latents, labels)
        side = images.shape[-1]
        plan = [
            (idx, aug.sample(ops, len(idx), side, gen) if ops else None)
            for idx in _batches(len(labels), cfg.batch_syn, cfg.syn_steps, gen)
        ]
        opt_latents.zero_grad(set_to_none=True)
        opt_lr.zero_grad(set_to_none=True)
        loss = step(student, start, theta_t, distance, images, labels, plan, syn_lr)
        opt_latents.step()
        opt_lr.step()
        with torch.no_grad():
            syn_lr.clamp_(min=1e-6)  # a negative step size would un-train the student
        losses.append(loss)
    with torch.no_grad():
        images = generator_module(latents, labels).detach().clone()
    return Synthesis(images.cpu(), labels.cpu(), float(syn_lr.detach()), losses)


def _augmented(x: torch.Tensor, p) -> torch.Tensor:
    return aug.apply(x, p) if p is not None else x


def _unrolled(student, start, theta_t, distance, images, labels, plan, syn_lr) -> float:
    params = [p.clone().requires_grad_(True) for p in start]
    for idx, p in plan:
        loss = student.loss(params, _augmented(images[idx], p), labels[idx])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        params = [w - syn_lr * g for w, g in zip(params, grads)]
    matching = torch.sum((_flat(params) - theta_t) ** 2) / distance
    matching.backward()
    return float(matching.detach())


def _first_order(
    student, start, theta_t, distance, images, labels, plan, syn_lr, keep_graphs=False
) -> float:
    x = images.detach().requires_grad_(True)
    alpha = float(syn_lr.detach())
    params = [p.clone() for p in start]
    visited: list[list[torch.Tensor]] = []
    kept: list[list[torch.Tensor]] = []  # keep_graphs: each step's gradient, with its graph
    grad_sum = torch.zeros_like(theta_t)
    for idx, p in plan:  # pass 1: the trajectory
        visited.append(params)
        leaf = [w.detach().requires_grad_(True) for w in params]
        if keep_graphs:  # the graph stays for pass 2
            loss = student.loss(leaf, _augmented(x[idx], p), labels[idx])
            with_graph = torch.autograd.grad(loss, leaf, create_graph=True)
            kept.append(list(with_graph))
            grads = [g.detach() for g in with_graph]
        else:
            loss = student.loss(leaf, _augmented(x[idx].detach(), p), labels[idx])
            grads = list(torch.autograd.grad(loss, leaf))
        grad_sum += _flat(grads)
        params = [w - alpha * g for w, g in zip(params, grads)]
    residual = _flat(params) - theta_t
    matching = float(torch.sum(residual**2) / distance)
    d_grad = (-2.0 * alpha / distance) * residual  # dL/dg_i, the same for every step
    for step, ((idx, p), weights) in enumerate(zip(plan, visited)):  # pass 2, step by step
        if keep_graphs:
            grads = kept[step]
            kept[step] = []  # this step's graph goes once it is used
        else:  # replay the step: only its graph is ever in memory
            leaf = [w.detach().requires_grad_(True) for w in weights]
            loss = student.loss(leaf, _augmented(x[idx], p), labels[idx])
            grads = list(torch.autograd.grad(loss, leaf, create_graph=True))
        torch.autograd.backward(torch.dot(_flat(grads), d_grad), inputs=[x])
    syn_lr.grad = (-2.0 / distance) * torch.dot(residual, grad_sum).reshape(())
    images.backward(x.grad)
    return matching
