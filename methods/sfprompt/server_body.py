"""SplitFed-V1's server side (Thapa et al., AAAI 2022): the server's part of the model trains.

With ``sfprompt.train_body`` the body is no longer frozen. Each sampled client gets its own
copy of the global body at the start of a round; the copy is updated by that client's
chunks only (one optimiser step per chunk, with the gradient the client's tail sent back),
and at the round's end the copies of the clients that finished are averaged, weighted like
the clients' own parts (the samples each trained on). This is SplitFed-V1: client-side and
server-side models are both FedAvg'd every round, so the order in which the server serves
clients does not matter (SplitFed-V2 trains one server model sequentially over clients,
which ties the result to that order).

The global body travels with the global arrays under ``body.*`` keys so checkpoints, resume
and server evaluation see it; the strategy never sends those keys to a client.
"""

from __future__ import annotations

import copy

import torch
from flwr.app import ArrayRecord

from fedsim.config.schema import ClientConfig
from fedsim_methods.sfprompt.parts import Body
from fedsim_methods.sfprompt.wire import record_of, tensors_of

BODY_PREFIX = "body."  # the global arrays' keys of the server's part


def body_state(body: Body) -> dict[str, torch.Tensor]:
    """The body's weights under their global-array keys."""
    return {BODY_PREFIX + k: p.detach().cpu().clone() for k, p in body.named_parameters()}


def cut(arrays: ArrayRecord) -> tuple[ArrayRecord, dict[str, torch.Tensor]]:
    """(what the clients hold, the server's body weights) of the global arrays."""
    client = ArrayRecord({k: a for k, a in arrays.items() if not k.startswith(BODY_PREFIX)})
    body = ArrayRecord({k: a for k, a in arrays.items() if k.startswith(BODY_PREFIX)})
    return client, tensors_of(body)


def joined(client: ArrayRecord, body: dict[str, torch.Tensor]) -> ArrayRecord:
    """The global arrays: the clients' part, then the body's."""
    out = ArrayRecord({k: a for k, a in client.items()})
    for key, array in record_of(body).items():
        out[key] = array
    return out


@torch.no_grad()
def load_body(body: Body, state: dict[str, torch.Tensor]) -> None:
    params = dict(body.named_parameters())
    wanted = {BODY_PREFIX + k for k in params}
    if set(state) != wanted:
        missing, extra = sorted(wanted - set(state)), sorted(set(state) - wanted)
        raise ValueError(f"body arrays do not match: missing {missing}, extra {extra}")
    for name, param in params.items():
        param.copy_(state[BODY_PREFIX + name])


class BodyCopies:
    """One trainable copy of the global body per client of the round, each with its own
    optimiser (built like the clients', from ``[client]``, fresh every round as theirs are)."""

    def __init__(
        self, frozen: Body, state: dict[str, torch.Tensor], pids: list[int], cfg: ClientConfig
    ) -> None:
        from fedsim.training import make_optimizer

        self.copies: dict[int, Body] = {}
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
        for pid in pids:
            body = copy.deepcopy(frozen).requires_grad_(True)
            load_body(body, state)
            self.copies[pid] = body
            self.optimizers[pid] = make_optimizer(list(body.parameters()), cfg)

    def __getitem__(self, pid: int) -> Body:
        return self.copies[pid]

    def step(self, pid: int) -> None:
        """The chunk's optimiser step for ``pid``'s copy (its gradients are the chunk's)."""
        self.optimizers[pid].step()
        self.optimizers[pid].zero_grad(set_to_none=True)

    def drop(self, pid: int) -> None:
        """A client that failed: its copy takes no part in the average."""
        self.copies.pop(pid, None)
        self.optimizers.pop(pid, None)

    @torch.no_grad()
    def average(self, weights: dict[int, float]) -> dict[str, torch.Tensor]:
        """The weighted mean of the copies of ``weights``' clients, summed in partition order
        in float64 (the order never depends on which client answered first)."""
        total = float(sum(weights.values()))
        mean: dict[str, torch.Tensor] = {}
        for pid in sorted(weights):
            for name, param in self.copies[pid].named_parameters():
                term = param.detach().cpu().double() * (weights[pid] / total)
                key = BODY_PREFIX + name
                mean[key] = term if key not in mean else mean[key] + term
        return {k: v.float() for k, v in mean.items()}
