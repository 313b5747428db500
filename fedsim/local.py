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
    """The message's ``arrays`` record into ``model`` (strict: every key, every shape).

    Where the record has the model's keys and shapes (every call but a wrong message), each
    array is copied straight into its tensor: ``load_state_dict``'s module walk costs more
    than the copies of a small model. Anything else goes to ``load_state_dict``, for its
    error message."""
    record = msg.content["arrays"]
    targets = model.state_dict()
    if list(record.keys()) == list(targets):
        sources = [torch.from_numpy(array.numpy()) for array in record.values()]
        if all(s.shape == t.shape for s, t in zip(sources, targets.values())):
            with torch.no_grad():
                for source, target in zip(sources, targets.values()):
                    target.copy_(source)
            return
    model.load_state_dict(record.to_torch_state_dict(), strict=True)
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
