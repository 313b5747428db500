"""toy_probe: probe the sampled clients, then train only the most informative ones.

Each round has two exchanges. First ``train.probe``: the sampled candidates receive the
global model and reply with one number per layer, the norm of the gradient of their loss on
one batch (replies shaped nothing like what was sent). Then ``train``: the ``keep``
candidates with the largest total gradient norm train as in FedAvg, and the server averages
their models. A sketch of importance-aware client selection, small enough to read, that
uses only fedsim's public method API: ``Method``, ``UsesFederation``, ``train_round``, a
custom message action, a reply validator and its own ``[toy_probe]`` section.
"""

from __future__ import annotations

import random

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from pydantic import BaseModel, ConfigDict, Field

from fedsim.federation.replies import same_arrays_as_sent
from fedsim.federation.strategy import UsesFederation
from fedsim_methods.supervised import HANDLERS, supervised_method

PROBE = "train.probe"
NORM_SUFFIX = ".grad_norm"


class ToyProbeConfig(BaseModel):
    """``[toy_probe]``: how many of the sampled candidates train."""

    model_config = ConfigDict(extra="forbid")

    keep: int = Field(2, ge=1, description="candidates (of clients.per_round) that train")
    probe_batch: int = Field(64, ge=1, description="samples in the probing batch")


class ProbeThenTrain(UsesFederation, FedAvg):
    """FedAvg aggregation; the round's training stage is two exchanges (``train_round``)."""

    def __init__(self, keep: int, per_round: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.keep, self.per_round = keep, per_round

    def train_round(self, server_round, arrays, config, ctx):
        cfg = ConfigRecord({**dict(config), "server-round": server_round})
        content = RecordDict({"arrays": arrays, "config": cfg})
        candidates = sorted(random.sample(ctx.partition_ids, self.per_round))  # seeded by fedsim
        probes = ctx.exchange([ctx.message(content, p, PROBE) for p in candidates], stage="probe")
        norms = {
            ctx.partition_of(r.metadata.src_node_id): sum(
                float(a.numpy()[0]) for a in r.content["norms"].values()
            )
            for r in probes
            if not r.has_error()
        }
        chosen = sorted(sorted(norms, key=lambda p: (-norms[p], p))[: self.keep])
        replies = ctx.exchange([ctx.message(content, p, "train") for p in chosen], stage="train")
        return self.aggregate_train(server_round, replies)


def build_strategy(exp):
    from fedsim.federation.sampling import sampling_kwargs

    cfg = exp.section("toy_probe")
    return ProbeThenTrain(cfg.keep, exp.clients.per_round, **sampling_kwargs(exp))


def probe(msg: Message, context, exp) -> Message:
    """Per-layer gradient norms of the global model on one batch of this client's data."""
    from fedsim.local import local

    at = local(msg, context, exp)  # this client's data, the global model loaded
    x, y, model, device = at.x, at.y, at.model, at.device
    model.zero_grad(set_to_none=True)
    n = min(exp.section("toy_probe").probe_batch, len(y))
    torch.nn.functional.cross_entropy(model(x[:n].to(device)), y[:n].to(device)).backward()
    norms = {
        name + NORM_SUFFIX: Array(p.grad.norm().reshape(1).detach().cpu().numpy())
        for name, p in model.named_parameters()
    }
    metrics = MetricRecord({"num-examples": len(y)})
    return Message(RecordDict({"norms": ArrayRecord(norms), "metrics": metrics}), reply_to=msg)


def validate_reply(stage: str, sent: Message, reply: Message) -> str | None:
    """Probe replies: one value per layer the model has; training replies: as FedAvg."""
    if stage != "probe":
        return same_arrays_as_sent(stage, sent, reply)
    layers = {k + NORM_SUFFIX for k in sent.content["arrays"]}
    for key, array in reply.content["norms"].items():
        if key not in layers or tuple(array.shape) != (1,):
            return f"probe reply: unexpected array '{key}' of shape {tuple(array.shape)}"
    return None


def validate(exp) -> None:
    if exp.section("toy_probe").keep > exp.clients.per_round:
        raise ValueError(
            f"toy_probe.keep: at most clients.per_round ({exp.clients.per_round}) can train"
        )


# Built on fedsim's supervised family (its client's train/evaluate, initial model and server
# evaluation): a public building block, like Method itself.
METHOD = supervised_method(
    name="toy_probe",
    description="Toy plugin: probe gradient norms, then train the largest (test package)",
    tasks=("image-classification",),
    strategy=build_strategy,
    handlers={**HANDLERS, PROBE: probe},
    sections={"toy_probe": ToyProbeConfig},
    validate=validate,
    validate_reply=validate_reply,
)
