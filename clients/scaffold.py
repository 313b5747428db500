"""SCAFFOLD client (Karimireddy et al. 2020, Algorithm 1, option II).

The client keeps its control variate c_i in ``Context.state`` (zeros before its first round;
checkpointed with the run). Each local step corrects the gradient by (c - c_i), where c is
the server's control variate that arrives with the model. After K steps of plain SGD with
learning rate eta_l the client updates c_i+ = c_i - c + (x - y) / (K eta_l) and replies with
its model y and the change of its control variate, c_i+ - c_i.
"""

from __future__ import annotations

import math

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from fedsim.config.schema import Experiment
from fedsim_methods.scaffold import CONTROL, CONTROL_DELTA


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def train(msg: Message, context: Context, exp: Experiment) -> Message:
    from fedsim.local import local
    from fedsim.seeding import LOCAL_SHUFFLE, torch_generator
    from fedsim.training import train_epochs

    server_round = int(msg.content["config"]["server-round"])
    at = local(msg, context, exp)
    pid, device, x, y, model = at.pid, at.device, at.x, at.y, at.model
    params = _trainable(model)
    start = {k: p.detach().clone() for k, p in params.items()}
    server_c = msg.content[CONTROL].to_torch_state_dict()
    own = context.state.array_records.get(CONTROL)
    own_c = own.to_torch_state_dict() if own is not None else {}
    # (c - c_i) per parameter, on the training device; c_i = 0 before the first round.
    correction = {
        k: (server_c[k] - own_c[k] if k in own_c else server_c[k]).to(device) for k in params
    }

    def correct(_: nn.Module) -> None:
        for name, p in params.items():
            if p.grad is not None:
                p.grad.add_(correction[name])

    generator = torch_generator(exp.run.seed, server_round, pid, LOCAL_SHUFFLE)
    loss = train_epochs(model, x, y, exp.client, generator, device, before_step=correct)
    steps = exp.client.local_epochs * math.ceil(len(y) / exp.client.batch_size)
    scale = 1.0 / (steps * exp.client.lr)
    new_c, delta = {}, {}
    with torch.no_grad():
        for name, p in params.items():
            old = own_c[name] if name in own_c else torch.zeros_like(server_c[name])
            # c_i+ = c_i - c + (x - y) / (K eta_l)
            new = old - server_c[name] + (start[name].cpu() - p.detach().cpu()) * scale
            new_c[name], delta[name] = new, new - old
    context.state[CONTROL] = ArrayRecord(new_c)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    content = RecordDict(
        {
            "arrays": ArrayRecord(state),
            CONTROL_DELTA: ArrayRecord(delta),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)}),
        }
    )
    return Message(content, reply_to=msg)
