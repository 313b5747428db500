"""Causal-LM pieces for FedIT: model + LoRA loading (``model``), prompts and tokenisation
(``prompts``), adapter <-> ArrayRecord (``adapter``), local training (``train``) and
evaluation (``evaluate``). Heavy imports (transformers, peft) happen inside the functions
that need them, so importing fedsim stays cheap. The server half is
``fedsim_methods.strategies.fedit``, the client half ``fedsim_methods.clients.fedit``; this
module declares the method (sections, rules, streams, ``fedsim generate``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.method import Method
from fedsim_methods.fedit.config import FedITConfig, LoraConfig, fedit_of, lora_of
from fedsim_methods.fedit.seeds import STREAMS
from fedsim_methods.server_optimisers import FedOptConfig, check_optimiser_sections

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment

SERVER_OPTIMISERS = ("fedavg", "fedadam", "fedyogi")  # Flower's, over the adapters


def optimiser_of(exp: Experiment) -> str:
    """The server optimiser FedIT's adapters are averaged with (``strategy.name``)."""
    return exp.strategy.name or SERVER_OPTIMISERS[0]


def validate(exp: Experiment) -> None:
    """Rules across sections (pure; the model on disk is checked by the server half's
    ``preflight``)."""
    from fedsim.config.schema import DataConfig, ModelConfig

    cfg, lora = fedit_of(exp), lora_of(exp)
    if exp.model.name != ModelConfig().name:
        raise ValueError("model.name: fedit takes its model from fedit.base_model; remove it")
    if exp.data.partitioner != DataConfig().partitioner:
        raise ValueError(
            "data.partitioner: fedit splits instruction data with fedit.partition "
            "(category_shards | category_dirichlet | iid); remove data.partitioner"
        )
    if exp.data.validation_share or exp.data.test_split != DataConfig().test_split:
        raise ValueError(
            "data.validation_share: fedit holds out its own test set per category "
            "(fedit.heldout_per_category); remove data.validation_share and data.test_split"
        )
    name = optimiser_of(exp)
    check_optimiser_sections(exp, name)
    if name not in SERVER_OPTIMISERS:
        raise ValueError(
            f"strategy.name: fedit composes with {', '.join(SERVER_OPTIMISERS)}, not '{name}'"
        )
    if name != "fedavg" and cfg.aggregation == "svd":
        raise ValueError(
            f"fedit.aggregation: 'svd' does not compose with strategy.name = '{name}' "
            "(each round's SVD re-factorises A and B in a new basis)"
        )
    bad = [p for p in cfg.train_clients if not 0 <= p < exp.clients.num]
    if bad:
        raise ValueError(
            f"fedit.train_clients: partition id {bad[0]} is outside 0..{exp.clients.num - 1}"
        )
    if len(set(cfg.train_clients)) != len(cfg.train_clients):
        raise ValueError("fedit.train_clients: partition ids must not repeat")
    if len(set(lora.target_modules)) != len(lora.target_modules) or not lora.target_modules:
        raise ValueError("lora.target_modules: give one or more distinct module names")


FEDIT = Method(
    name="fedit",
    description="FedIT (Zhang et al. 2023): federated LoRA instruction tuning of a causal LM",
    tasks=("instructions",),
    strategy="fedsim_methods.strategies.fedit:build_strategy",
    handlers={
        "train": "fedsim_methods.clients.fedit:train",
        "evaluate": "fedsim_methods.clients.fedit:evaluate",
    },
    initial_arrays="fedsim_methods.strategies.fedit.server:initial_arrays",
    server_evaluator="fedsim_methods.strategies.fedit.server:server_evaluator",
    save_final="fedsim_methods.strategies.fedit.server:save_final",
    sections={"lora": LoraConfig, "fedit": FedITConfig},
    optional_sections={"fedopt": FedOptConfig},
    validate="fedsim_methods.fedit:validate",
    preflight="fedsim_methods.strategies.fedit.server:preflight",
    own_data=True,
    warm_client="fedsim_methods.fedit.cache:warm_client",
    streams=STREAMS,
    commands={"generate": "fedsim_methods.fedit.command:generate"},
    export_partition="fedsim_methods.fedit.instructions:export_partition",
)
