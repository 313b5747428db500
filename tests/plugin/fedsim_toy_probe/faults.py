"""toy_faults: FedAvg whose listed clients misbehave, to test how a backend copes.

``[toy_faults]`` names partitions that raise (``crash``), kill their whole worker process
(``die``: only a separate worker survives that, never use it in-process), or sleep before
training (``slow``, ``slow_s`` seconds). Test-only: it lives in the test plugin package.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, ConfigDict, Field

from fedsim_methods.supervised import HANDLERS, supervised_method


class ToyFaultsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    crash: list[int] = Field(default_factory=list)
    die: list[int] = Field(default_factory=list)
    slow: list[int] = Field(default_factory=list)
    slow_s: float = 3.0


def train(msg, context, exp):
    from fedsim.method import resolve

    supervised_train = resolve(HANDLERS["train"])  # the supervised family's client

    cfg = exp.section("toy_faults")
    pid = int(context.node_config["partition-id"])
    if pid in cfg.crash:
        raise RuntimeError(f"toy fault: client {pid} crashed")
    if pid in cfg.die:
        os._exit(13)  # the worker process dies mid-call
    if pid in cfg.slow:
        time.sleep(cfg.slow_s)
    return supervised_train(msg, context, exp)


def build_strategy(exp):
    from flwr.serverapp.strategy import FedAvg

    from fedsim.federation.sampling import sampling_kwargs

    return FedAvg(**sampling_kwargs(exp))


METHOD = supervised_method(
    name="toy_faults",
    description="Toy plugin: FedAvg with clients that crash, die or stall (test package)",
    tasks=("image-classification",),
    strategy=build_strategy,
    handlers={**HANDLERS, "train": train},
    sections={"toy_faults": ToyFaultsConfig},
)
