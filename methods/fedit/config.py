"""FedIT's own sections: ``[lora]`` (the adapter) and ``[fedit]`` (model, prompts, data, eval).

Declared by the fedit method (``fedsim_methods.fedit``), which the engine composes into the
experiment schema; rules that need more than one section live in its ``validate``, and the model's
module names are checked by its server-side ``preflight``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from fedsim.config.schema import Section


class LoraConfig(Section):
    """The peft LoRA adapter every client trains (the paper: r 8-16, alpha 16, q_proj)."""

    r: PositiveInt = Field(8, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="scaling = alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="names of the Linear modules that get an adapter (module-name suffixes)",
    )

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class FedITConfig(Section):
    """Model, prompt, local training, aggregation, data split and evaluation of FedIT."""

    base_model: str = Field(
        "smollm2-135m-instruct",
        description="a model asset name, a local Hugging Face folder, or (with online = true) "
        "a hub id",
    )
    online: bool = Field(False, description="allow base_model to be a Hugging Face hub id")
    template: Literal["alpaca", "chat"] = "alpaca"
    max_length: int = Field(256, ge=16, description="tokens per example (prompt + response)")
    micro_batch_size: PositiveInt = 8
    gradient_accumulation: PositiveInt = Field(1, description="micro-batches per optimiser step")
    max_steps: int = Field(
        0, ge=0, description="optimiser steps per local run; 0 = client.local_epochs epochs"
    )
    train_on: Literal["response", "all"] = Field(
        "all", description="loss on the response only, or on prompt + response (Shepherd)"
    )
    allow_tf32: bool = Field(
        False,
        description="CUDA only: TF32 matrix products (several times faster on Ampere and later "
        "GPUs, deterministic, but not bitwise equal to fp32); ignored on CPU",
    )
    adapter_dtype: Literal["fp32", "fp16"] = Field(
        "fp32", description="dtype of the arrays on the wire (never bf16: Flower refuses it)"
    )
    aggregation: Literal["fedavg", "exact", "svd"] = Field(
        "fedavg",
        description="fedavg: mean A and mean B (paper); exact: global update = weighted mean "
        "of B@A (dense residual travels down); svd: best rank-r approximation of it",
    )
    # -- data ---------------------------------------------------------------------------
    partition: Literal["category_shards", "category_dirichlet", "iid"] = "category_shards"
    shards_per_client: PositiveInt = Field(2, description="category_shards: shards per client")
    dirichlet_alpha: float = Field(0.5, gt=0, description="category_dirichlet concentration")
    min_records_per_client: int = Field(
        1, ge=1, description="category_dirichlet resamples until every client has this many"
    )
    heldout_per_category: int = Field(
        10, ge=0, description="fixed test records per category (at most half the category)"
    )
    train_clients: list[int] = Field(
        default_factory=list,
        description="train only these partition ids (local-only baselines); empty = sample",
    )
    # -- evaluation -----------------------------------------------------------------------
    eval_at_start: bool = Field(
        True, description="score the initial adapter (= the base model) at round 0"
    )
    eval_batch_size: PositiveInt = 16
    eval_max_new_tokens: PositiveInt = 32
    eval_generate_every: int = Field(
        1,
        ge=0,
        description="decode every N rounds (and rounds 0 and last); 0 = never",
    )
    eval_generate_per_category: int = Field(
        5, ge=0, description="held-out records per category that are decoded (0 = all)"
    )
    save_adapter: bool = Field(True, description="save the final adapter into RUN_DIR/adapter")


def lora_of(exp) -> LoraConfig:
    """The experiment's ``[lora]`` section (the fedit method always has one)."""
    return exp.section("lora") or LoraConfig()


def fedit_of(exp) -> FedITConfig:
    """The experiment's ``[fedit]`` section (the fedit method always has one)."""
    return exp.section("fedit") or FedITConfig()
