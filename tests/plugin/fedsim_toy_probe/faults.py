"""toy_faults: FedAvg whose listed clients misbehave, to test how a backend copes.

``[toy_faults]`` names partitions that raise (``crash``), kill their whole worker process
(``die``: only a separate worker survives that, never use it in-process), or sleep before
training (``slow``, ``slow_s`` seconds). Test-only: it lives in the test plugin package.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, ConfigDict, Field

from fedsim.method import Method


class ToyFaultsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    crash: list[int] = Field(default_factory=list)
    die: list[int] = Field(default_factory=list)
    slow: list[int] = Field(default_factory=list)
    slow_s: float = 3.0


def train(msg, context, exp):
    from clients.supervised import train as supervised_train

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
    from strategies.baselines import flower_strategy

    return flower_strategy(exp, "fedavg")


METHOD = Method(
    name="toy_faults",
    description="Toy plugin: FedAvg with clients that crash, die or stall (test package)",
    tasks=("image-classification",),
    strategy=build_strategy,
    handlers={"train": train, "evaluate": "clients.supervised:evaluate"},
    initial_arrays="strategies.supervised:initial_arrays",
    server_evaluator="strategies.supervised:server_evaluator",
    sections={"toy_faults": ToyFaultsConfig},
)
