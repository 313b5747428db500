"""Method registry: a method = a strategy builder + client handlers + what data it takes.

``method = "..."`` in an experiment picks one entry. New methods add an entry here and
a module in ``strategies/`` and ``clients/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    strategy_module: str
    client_module: str
    tasks: tuple[str, ...]

    def strategy(self) -> ModuleType:
        return import_module(self.strategy_module)

    def client(self) -> ModuleType:
        return import_module(self.client_module)

    def build_strategy(self, exp: Any):
        return self.strategy().build_strategy(exp)

    def handler(self, kind: str) -> Callable | None:
        return getattr(self.client(), kind, None)


_IMAGE = ("image-classification", "text-classification")  # the supervised client

METHODS: dict[str, Method] = {
    "fedavg": Method(
        "fedavg",
        "FedAvg (McMahan et al. 2017), Flower's strategy",
        "strategies.baselines",
        "clients.supervised",
        _IMAGE,
    ),
    "fedprox": Method(
        "fedprox",
        "FedProx (Li et al. 2020): proximal term on clients",
        "strategies.baselines",
        "clients.supervised",
        _IMAGE,
    ),
    "fedadam": Method(
        "fedadam",
        "FedAdam (Reddi et al. 2021): Adam on the server",
        "strategies.baselines",
        "clients.supervised",
        _IMAGE,
    ),
    "fedyogi": Method(
        "fedyogi",
        "FedYogi (Reddi et al. 2021): Yogi on the server",
        "strategies.baselines",
        "clients.supervised",
        _IMAGE,
    ),
    "curriculum": Method(
        "curriculum",
        "Curricula in FL (Vahidian et al. 2023): data + client curricula on FedAvg/Prox/Opt",
        "strategies.curriculum",
        "clients.supervised",
        _IMAGE,
    ),
    "fedit": Method(
        "fedit",
        "FedIT (Zhang et al. 2023): federated LoRA instruction tuning of a causal LM",
        "strategies.fedit",
        "clients.fedit",
        ("instructions",),
    ),
}


def known_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> Method:
    return METHODS[name]
