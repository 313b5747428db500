"""The experiment schema. Every key a user can write is declared here, with its bounds.

Unknown keys are errors (``extra="forbid"``) so that a typo never silently falls back
to a default. Cross-field rules (per_round <= num, partitioner parameters) live in
model validators so they run before anything else does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from fedsim.config.curriculum import CurriculumConfig, check_method
from fedsim.config.fedit import FedITConfig, LoraConfig, check_sections

BASELINES = ("fedavg", "fedprox", "fedadam", "fedyogi")


class Section(BaseModel):
    """Base for every section: no unknown keys, assignments re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    name: str = "experiment"
    seed: int = Field(0, ge=0)
    rounds: PositiveInt = 5
    backend: Literal["inprocess", "ray"] = "inprocess"
    checkpoint_every: int = Field(1, ge=0, description="0 disables checkpoints")
    tensorboard: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"


class DataConfig(Section):
    dataset: str = "mnist"
    partitioner: Literal[
        "iid", "dirichlet", "client_dirichlet", "pathological", "natural_id", "disparity"
    ] = "iid"
    partition_by: str = "label"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration")
    min_partition_size: int = Field(10, ge=0)
    labels_per_client: PositiveInt = 2
    test_split: Literal["test"] = "test"
    max_train_samples: int = Field(0, ge=0, description="0 = all; a prefix of a seeded shuffle")
    max_length: int = Field(
        64, ge=4, description="text datasets: WordPiece tokens per example (longer texts cut)"
    )


class ModelConfig(Section):
    """Which network; each method checks the names it supports (see ``validate`` hooks)."""

    name: str = "cnn"
    hidden: PositiveInt = 128
    init: Literal["random", "minilm"] = Field(
        "random",
        description="bag_of_embeddings: random word vectors of size hidden, or MiniLM-L6's "
        "pretrained 384-d vectors",
    )


class StrategyConfig(Section):
    name: Literal["fedavg", "fedprox", "fedadam", "fedyogi"] | None = None
    fraction_evaluate: float = Field(0.0, ge=0, le=1, description="client-side evaluation")
    proximal_mu: float = Field(0.01, ge=0)
    eta: float = Field(1e-2, gt=0, description="server learning rate (FedAdam/FedYogi)")
    eta_l: float = Field(1e-1, gt=0, description="client learning rate reported to FedOpt")
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


class ClientConfig(Section):
    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    timeout: float = Field(0.0, ge=0, description="seconds per client call; 0 = none")


class ClientsConfig(Section):
    num: PositiveInt = 10
    per_round: PositiveInt = 5
    num_cpus: float = Field(1.0, gt=0, description="ray backend: CPUs per client")
    num_gpus: float = Field(0.0, ge=0, description="ray backend: (fractional) GPUs per client")

    @model_validator(mode="after")
    def _per_round_fits(self) -> ClientsConfig:
        if self.per_round > self.num:
            raise ValueError(
                f"clients.per_round must be <= clients.num (got {self.per_round} > {self.num})"
            )
        return self


class EvalConfig(Section):
    server: bool = True
    every: PositiveInt = 1
    batch_size: PositiveInt = 512


class Experiment(Section):
    """One experiment: what runs, on what data, with which method."""

    method: str = "fedavg"
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    strategy: StrategyConfig = StrategyConfig()
    client: ClientConfig = ClientConfig()
    clients: ClientsConfig = ClientsConfig()
    eval: EvalConfig = EvalConfig()
    curriculum: CurriculumConfig | None = None  # see fedsim/config/curriculum.py
    lora: LoraConfig | None = None  # fedit: see fedsim/config/fedit.py
    fedit: FedITConfig | None = None  # fedit: see fedsim/config/fedit.py

    @model_validator(mode="after")
    def _method_and_strategy_agree(self) -> Experiment:
        from fedsim.methods import known_methods

        if self.method not in known_methods():
            raise ValueError(
                f"method: unknown method '{self.method}' (known: {', '.join(known_methods())})"
            )
        if self.method in BASELINES:
            if self.strategy.name is None:
                self.strategy.name = self.method  # type: ignore[assignment]
            elif self.strategy.name != self.method:
                raise ValueError(
                    f"strategy.name: '{self.strategy.name}' contradicts method "
                    f"'{self.method}' (for a baseline, set one of them)"
                )
        return self

    @model_validator(mode="after")
    def _dataset_fits_method(self) -> Experiment:
        from fedsim.data.registry import known_datasets, task_of
        from fedsim.methods import get_method

        if self.data.dataset not in known_datasets():
            raise ValueError(
                f"data.dataset: unknown dataset '{self.data.dataset}' "
                f"(known: {', '.join(known_datasets())})"
            )
        method = get_method(self.method)
        task = task_of(self.data.dataset)
        if task not in method.tasks:
            raise ValueError(
                f"data.dataset: '{self.data.dataset}' is {task} data; method "
                f"'{self.method}' takes {' or '.join(method.tasks)}"
            )
        # Method-specific rules: a strategy module may define validate(exp) raising
        # ValueError("key: what is wrong").
        check = getattr(method.strategy(), "validate", None)
        if check is not None:
            check(self)
        return self

    @model_validator(mode="after")
    def _curriculum_fits_method(self) -> Experiment:
        check_method(self)
        return self

    @model_validator(mode="after")
    def _fedit_sections_fit_method(self) -> Experiment:
        check_sections(self)
        return self
