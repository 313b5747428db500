"""Supervised classification client (images, or texts as token ids): local SGD on the
client's partition.

Used by the baselines (FedAvg, FedProx, FedAdam, FedYogi, FedAvgM) and the curriculum
method. FedProx's proximal term is applied when the server's config carries ``proximal-mu``.
A ``[curriculum]`` section (``fedsim/curriculum``) paces local training and answers the
client curriculum's scoring messages. Only what runs on a SuperNode lives here; the initial
model and the server-side evaluation are in ``strategies/supervised.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedsim.config.schema import Experiment
from fedsim.curriculum.local import after_training, curriculum_batches
from fedsim.curriculum.schedule import SCORE_METRIC
from fedsim.data.client import ClientData, client_data
from fedsim.models import build_model
from fedsim.seeding import LOCAL_SHUFFLE, torch_generator
from fedsim.training import evaluate as evaluate_model
from fedsim.training import pick_device, train_epochs

_MODELS: dict[str, torch.nn.Module] = {}


def _model(exp: Experiment, data: ClientData, device: torch.device) -> torch.nn.Module:
    """One model object per process and config; weights are overwritten on every call."""
    key = f"{exp.model.model_dump_json()}|{data.input_shape}|{data.num_classes}|{device}"
    if key not in _MODELS:
        model = build_model(exp.model, data.input_shape, data.num_classes, exp.run.seed, data.vocab)
        _MODELS[key] = model.to(device)
    return _MODELS[key]


def _load(model: torch.nn.Module, msg: Message, device: torch.device) -> None:
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
    model = _model(exp, data, device)
    _load(model, msg, device)
    return Local(pid, device, data.x, data.y, model)


def train(msg: Message, context: Context, exp: Experiment) -> Message:
    server_round = int(msg.content["config"]["server-round"])
    at = local(msg, context, exp)
    pid, device, x, y, model = at.pid, at.device, at.x, at.y, at.model
    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    generator = torch_generator(exp.run.seed, server_round, pid, LOCAL_SHUFFLE)
    paced = curriculum_batches(exp, model, x, y, context, server_round, pid, generator, device)
    loss = train_epochs(model, x, y, exp.client, generator, device, mu, index_batches=paced)
    after_training(exp.curriculum, model, context)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    content = RecordDict(
        {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)}),
        }
    )
    return Message(content, reply_to=msg)


def _evaluate_global(msg: Message, context: Context, exp: Experiment) -> tuple[dict, int]:
    """The global model from ``msg`` evaluated on this client's partition: (metrics, size)."""
    at = local(msg, context, exp)
    return evaluate_model(at.model, at.x, at.y, exp.eval.batch_size, at.device), len(at.y)


def evaluate(msg: Message, context: Context, exp: Experiment) -> Message:
    """Client-side evaluation of the global model on the client's own partition."""
    result, n = _evaluate_global(msg, context, exp)
    metrics = {"eval_loss": result["loss"], "eval_accuracy": result["accuracy"]}
    content = RecordDict({"metrics": MetricRecord({**metrics, "num-examples": n})})
    return Message(content, reply_to=msg)


def curriculum_score(msg: Message, context: Context, exp: Experiment) -> Message:
    """The client curriculum's scoring exchange: the global model's mean loss on this
    client's data. Answering reveals that one statistic to the server (see
    strategies/curriculum.py)."""
    result, n = _evaluate_global(msg, context, exp)
    reply = MetricRecord({SCORE_METRIC: result["loss"], "num-examples": n})
    return Message(RecordDict({"metrics": reply}), reply_to=msg)
