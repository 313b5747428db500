"""Distillation client: the supervised client's local SGD on the surrogate, plus which
classes the client holds.

The server synthesises images only for classes a client has (the reference synthesises all
ten and so invents classes a client never saw). Answering sends the client's label counts,
the same statistic FedAvg's weighting already implies in aggregate; weights are the only
arrays, so traffic equals FedAvg's.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message

from clients import supervised
from fedsim.config.schema import Experiment
from fedsim.data.federated import federated_image_data

CLASS_COUNTS = "class-counts"


def train(msg: Message, context: Context, exp: Experiment) -> Message:
    reply = supervised.train(msg, context, exp)
    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    _, y = data.client(int(context.node_config["partition-id"]))
    counts = torch.bincount(y, minlength=data.num_classes).tolist()
    reply.content["metrics"][CLASS_COUNTS] = [int(c) for c in counts]
    return reply
