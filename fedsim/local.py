"""What a supervised client call starts from (public API): its data and the global model.

Every method whose clients train fedsim's small classification models (the baselines,
curricula, SCAFFOLD, distillation, plugins) starts a client call the same way: this client's
partition (or its node's own data folder) and the weights that arrived in the message,
loaded into one model object per process and configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from flwr.app import Context, Message

from fedsim.data.client import ClientData, client_data
from fedsim.models import build_model
from fedsim.training import pick_device

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment

_MODELS: dict[str, torch.nn.Module] = {}


def process_model(exp: Experiment, data: ClientData, device: torch.device) -> torch.nn.Module:
    """One model object per process and config; weights are overwritten on every call."""
    key = f"{exp.model.model_dump_json()}|{data.input_shape}|{data.num_classes}|{device}"
    if key not in _MODELS:
        model = build_model(exp.model, data.input_shape, data.num_classes, exp.run.seed, data.vocab)
        _MODELS[key] = model.to(device)
    return _MODELS[key]


def load_arrays(model: torch.nn.Module, msg: Message, device: torch.device) -> None:
    """The message's ``arrays`` record into ``model`` (strict: every key, every shape)."""
    state = msg.content["arrays"].to_torch_state_dict()
    model.load_state_dict(state, strict=True)
    model.to(device)


@dataclass
class Local:
    """What a client call starts from: its partition, and the global model from the message."""

    pid: int
    device: torch.device
    x: torch.Tensor
    y: torch.Tensor
    model: torch.nn.Module


def local(msg: Message, context: Context, exp: Experiment) -> Local:
    """This client's data (its partition or its own folder) and the message's global
    weights in this process's model."""
    pid = int(context.node_config["partition-id"])
    device = pick_device(exp.clients.num_gpus)
    data = client_data(exp, context)
    model = process_model(exp, data, device)
    load_arrays(model, msg, device)
    return Local(pid, device, data.x, data.y, model)
