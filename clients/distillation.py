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

from fedsim.config.schema import Experiment
from fedsim.data.client import client_data
from fedsim_methods.clients import supervised
from fedsim_methods.distillation import CLASS_COUNTS


def train(msg: Message, context: Context, exp: Experiment) -> Message:
    reply = supervised.train(msg, context, exp)
    data = client_data(exp, context)
    counts = torch.bincount(data.y, minlength=data.num_classes).tolist()
    reply.content["metrics"][CLASS_COUNTS] = [int(c) for c in counts]
    return reply
