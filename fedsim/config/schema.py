"""The experiment schema. Every key a user can write is declared here, with its bounds.

Unknown keys are errors (``extra="forbid"``) so that a typo never silently falls back
to a default. Cross-field rules (per_round <= num, partitioner parameters) live in
model validators so they run before anything else does.

The sections every method shares are declared here; each method's own sections
(``[lora]``, ``[curriculum]``, a plugin's) come from the method registry and are composed
into the schema by ``experiment_model()``. No method name is written in this file.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    NonNegativeInt,
    PositiveInt,
    create_model,
    field_validator,
    model_validator,
)

from fedsim.config.section import Section
from fedsim.config.systems import SystemsConfig

RUN_NAME = r"^[A-Za-z0-9]([A-Za-z0-9 ._+=-]*[A-Za-z0-9._+=-])?$"


class RunConfig(Section):
    name: str = Field(
        "experiment",
        max_length=120,
        description="folder name under runs/: letters, digits, spaces and . _ + = - (no paths)",
    )
    seed: int = Field(0, ge=0)
    rounds: PositiveInt = 5
    backend: Literal["inprocess", "ray", "flower-simulation"] = Field(
        "inprocess",
        description="inprocess (this process), ray (fedsim's Ray worker pool), "
        "flower-simulation (Flower's simulation engine)",
    )
    ray_address: str = Field(
        "", description="ray: an existing Ray cluster ('auto', 'ray://host:10001'); '' = local"
    )
    ray_workers: int = Field(
        0, ge=0, description="ray: worker actors; 0 = as many as the CPUs allow (<= per_round)"
    )
    checkpoint_every: int = Field(1, ge=0, description="0 disables checkpoints")

    node_wait: float = Field(
        120.0, gt=0, description="seconds to wait for clients to connect before round 1"
    )
    exchange_timeout: float = Field(
        0.0,
        ge=0,
        description="seconds an exchange waits for all replies before counting the missing "
        "ones as failures; 0 = wait for every reply",
    )
    max_reply_mb: float = Field(
        0.0,
        ge=0,
        description="a reply whose arrays exceed this many MB (10^6 bytes) is a failure, "
        "refused before its arrays are decoded; 0 = no bound",
    )
    tensorboard: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    @field_validator("name")
    @classmethod
    def _name_is_a_folder(cls, name: str) -> str:
        if not re.match(RUN_NAME, name):
            raise ValueError(
                "use letters, digits, spaces and . _ + = - only, starting with a letter or "
                "digit (it names a folder under runs/, never a path)"
            )
        return name


class DataConfig(Section):
    dataset: str = "mnist"
    partitioner: Literal[
        "iid",
        "dirichlet",
        "client_dirichlet",
        "pathological",
        "natural_id",
        "disparity",
        "sampled",
    ] = "iid"
    partition_by: str = "label"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration")
    min_partition_size: int = Field(10, ge=0)
    labels_per_client: PositiveInt = 2
    test_split: Literal["test", "validation"] = Field(
        "test",
        description="what the server evaluates on: the dataset's test split, or the "
        "validation rows (data.validation_share) held out of the training split, for "
        "choosing hyper-parameters without looking at the test split",
    )
    validation_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of the training split (after max_train_samples) held out "
        "from every client as a validation set (seeded)",
    )
    max_train_samples: int = Field(0, ge=0, description="0 = all; a prefix of a seeded shuffle")
    server_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of the training split the server holds and no client receives "
        "(seeded; e.g. to pretrain a distillation generator)",
    )
    max_length: int = Field(
        64, ge=4, description="text datasets: WordPiece tokens per example (longer texts cut)"
    )
    samples_per_client: int = Field(
        0,
        ge=0,
        description="sampled: training rows each client draws (seeded per client, when it is "
        "first asked for; clients may share rows): populations larger than the dataset",
    )

    @model_validator(mode="after")
    def _validation_exists(self) -> DataConfig:
        if self.test_split == "validation" and self.validation_share <= 0:
            raise ValueError(
                "data.test_split: 'validation' needs data.validation_share > 0 (the fraction "
                "of the training split to hold out)"
            )
        return self

    @model_validator(mode="after")
    def _sampled_fits(self) -> DataConfig:
        if self.partitioner == "sampled" and self.samples_per_client < 1:
            raise ValueError("data.samples_per_client: partitioner 'sampled' needs at least 1")
        if self.partitioner != "sampled" and self.samples_per_client:
            raise ValueError(
                f"data.samples_per_client: only the 'sampled' partitioner reads it "
                f"(data.partitioner is '{self.partitioner}')"
            )
        return self


class ModelConfig(Section):
    """Which network; each method checks the names it supports (see ``validate`` hooks)."""

    name: str = "cnn"
    hidden: PositiveInt = 128
    width: PositiveInt = Field(32, description="convnet, resnet18 (first stage): channels")
    depth: PositiveInt = Field(3, description="convnet: conv blocks, each halving the image side")
    init: Literal["random", "minilm"] = Field(
        "random",
        description="bag_of_embeddings: random word vectors of size hidden, or MiniLM-L6's "
        "pretrained 384-d vectors",
    )


class StrategyConfig(Section):
    """``[strategy]``: what every server shares (sampling, client evaluation, the robust rule).

    A server optimiser's own knobs are its method's section (``[fedprox]``, ``[fedopt]``,
    ``[fedavgm]``, ``[scaffold]``), so this section names no method.
    """

    name: str | None = Field(
        None, description="the server optimiser a method composes with (each method lists its own)"
    )
    fraction_evaluate: float = Field(0.0, ge=0, le=1, description="client-side evaluation")
    aggregator: Literal["mean", "krum", "multikrum", "bulyan", "median", "trimmed-mean"] = Field(
        "mean",
        description="how client models are combined: the (weighted) mean, or one of Flower's "
        "Byzantine-robust rules (fedsim/robust.py)",
    )
    num_malicious_nodes: int = Field(
        0, ge=0, description="krum, multikrum, bulyan: malicious clients per round tolerated"
    )
    num_nodes_to_select: int = Field(
        0, ge=0, description="multikrum: models averaged; 0 = per_round - num_malicious_nodes"
    )
    trim_beta: float = Field(
        0.2, ge=0, lt=0.5, description="trimmed-mean: fraction cut from each tail (Flower's beta)"
    )


def refuse_unread(section: BaseModel, name: str, keys: tuple[str, ...], because: str) -> None:
    """A key set to something other than its default where nothing reads it is a mistake the
    user would never see (``privacy.noise_multiplier`` with ``mode = "none"``): refuse it.
    Only values that differ from the default count, so a resolved config.toml (every key
    written out) still loads."""
    fields = type(section).model_fields
    changed = [k for k in keys if getattr(section, k) != fields[k].default]
    if changed:
        raise ValueError(
            f"{name}.{changed[0]}: has no effect with {because} (remove it, or change that)"
        )


ADAPTIVE_ONLY = ("target_clipped_quantile", "clip_norm_lr", "clipped_count_stddev")


class PrivacyConfig(Section):
    """``[privacy]``: central DP through Flower's wrappers, epsilon from an RDP accountant
    (``fedsim/privacy``). Absent = no clipping, no noise."""

    mode: Literal["none", "server-fixed", "client-fixed", "server-adaptive", "client-adaptive"] = (
        Field("none", description="who clips (server or client) and how (fixed or adaptive norm)")
    )
    noise_multiplier: float = Field(
        1.0, gt=0, description="Gaussian noise std / clipping norm (on the sum of updates)"
    )
    clipping_norm: float = Field(
        1.0, gt=0, description="L2 bound of each client's update (adaptive: the initial bound)"
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta epsilon is reported at")
    target_clipped_quantile: float = Field(
        0.5, ge=0, le=1, description="adaptive: fraction of updates the norm should clip"
    )
    clip_norm_lr: float = Field(0.2, gt=0, description="adaptive: step of the norm's update")
    clipped_count_stddev: float = Field(
        0.0, ge=0, description="adaptive: noise on the clipped count; 0 = per_round / 20"
    )

    @model_validator(mode="after")
    def _every_key_is_read(self) -> PrivacyConfig:
        if self.mode == "none":
            keys = tuple(k for k in type(self).model_fields if k != "mode")
            refuse_unread(self, "privacy", keys, "privacy.mode = 'none'")
        elif not self.mode.endswith("adaptive"):
            refuse_unread(self, "privacy", ADAPTIVE_ONLY, f"privacy.mode = '{self.mode}'")
        return self


class ClientConfig(Section):
    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    fused: bool = Field(
        False,
        description="adam/adamw: torch's fused kernel, one pass over all weights (on CPU "
        "about 8x faster per step than the default multi-tensor one at 22 M weights; the "
        "last bits differ, so a run with it is a different run from one without)",
    )
    timeout: float = Field(
        0.0,
        ge=0,
        description="seconds per client call, measured by the client on every backend; a "
        "slower reply is rejected as a timeout; 0 = none",
    )

    @model_validator(mode="after")
    def _fused_needs_adam(self) -> ClientConfig:
        if self.fused and self.optimizer == "sgd":
            raise ValueError(
                "client.fused: the fused kernel is used for optimizer 'adam' or 'adamw', not 'sgd'"
            )
        return self


class ClientsConfig(Section):
    num: PositiveInt = 10
    per_round: PositiveInt = 5
    num_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs per client: torch threads of every client call (all backends) and "
        "Ray's resource request",
    )
    num_gpus: float = Field(
        0.0,
        ge=0,
        description="Ray backends: (fractional) GPUs per client worker; a worker may use that "
        "share of the GPU's memory",
    )
    data_paths: list[str] = Field(
        default_factory=list,
        description="simulation: one data folder per client (node config data-path; '' = its "
        "partition), in fedsim's layouts (docs/data.md); relative to the working directory",
    )
    chunk_size: NonNegativeInt = Field(
        0,
        description="train a round's clients in fixed chunks of this many (partition order) "
        "and sum each chunk where it trained: one reply per chunk instead of one model per "
        "client (methods whose aggregate is the weighted mean; docs/engine.md). 0: one reply "
        "per client, Flower's mean. The same value gives the same bytes on every backend",
    )

    @model_validator(mode="after")
    def _per_round_fits(self) -> ClientsConfig:
        if self.per_round > self.num:
            raise ValueError(
                f"clients.per_round must be <= clients.num (got {self.per_round} > {self.num})"
            )
        if self.data_paths and len(self.data_paths) != self.num:
            raise ValueError(
                f"clients.data_paths: one folder per client ('' for its partition): "
                f"{len(self.data_paths)} given, clients.num = {self.num}"
            )
        return self


class EvalConfig(Section):
    server: bool = True
    every: PositiveInt = 1
    batch_size: PositiveInt = 512
    max_samples: int = Field(
        0,
        ge=0,
        description="server evaluation on this many test samples (a fixed seeded subset, "
        "for quick runs); 0 = the whole test split",
    )


class FaultsConfig(Section):
    """``[faults]``: faults injected into clients' training replies, in simulation.

    Every draw derives from (run.seed, round, partition id), so a config gives the same
    faulty clients on every backend and after a resume (``fedsim/faults.py``). Per round and
    client one draw picks at most one of the ``*_prob`` kinds (their sum is at most 1);
    dropouts are drawn apart and win over them. ``byzantine_fraction`` is the exception: a set
    of partitions drawn once per run (from run.seed alone) that attacks in every round in
    which no per-round fault hits it.
    """

    crash_prob: float = Field(0.0, ge=0, le=1, description="the client raises: an error reply")
    straggler_prob: float = Field(
        0.0, ge=0, le=1, description="the client answers after the deadline (it sleeps)"
    )
    straggler_delay: float = Field(
        0.0,
        ge=0,
        description="seconds a straggler's call lasts at least; 0 = just past client.timeout "
        "(or run.exchange_timeout when client.timeout is 0)",
    )
    dropout_prob: float = Field(
        0.0, ge=0, le=1, description="per round: the client drops out for dropout_rounds rounds"
    )
    dropout_rounds: PositiveInt = Field(1, description="rounds a dropout lasts, its own included")
    nan_prob: float = Field(0.0, ge=0, le=1, description="one array value becomes NaN")
    inf_prob: float = Field(0.0, ge=0, le=1, description="one array value becomes Inf")
    misshape_prob: float = Field(0.0, ge=0, le=1, description="one array gets a wrong shape")
    oversize_prob: float = Field(
        0.0, ge=0, le=1, description="the largest array grows oversize_factor times"
    )
    oversize_factor: int = Field(10, ge=2)
    scale_prob: float = Field(
        0.0, ge=0, le=1, description="adversarial: the update (local - global) x scale_factor"
    )
    scale_factor: float = 10.0
    sign_flip_prob: float = Field(
        0.0, ge=0, le=1, description="adversarial: the update (local - global) x -1"
    )
    byzantine_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="this fraction of clients.num (rounded half up) is malicious: a fixed set "
        "of partitions, drawn once from run.seed, sends byzantine_attack in every round it trains",
    )
    byzantine_attack: Literal["sign_flip", "scale"] = Field(
        "sign_flip",
        description="what a malicious client sends: sign_flip (update x -1) or scale "
        "(update x scale_factor)",
    )
    min_clients: int = Field(
        0,
        ge=0,
        description="a round needs this many usable training replies (any failure counts); "
        "0 = no minimum",
    )
    max_retries: int = Field(
        0,
        ge=0,
        description="a round short of min_clients is re-sampled this often, then the run stops",
    )

    @model_validator(mode="after")
    def _one_fault_per_draw(self) -> FaultsConfig:
        total = sum(getattr(self, f"{kind}_prob") for kind in ROUND_FAULTS)
        if total > 1 + 1e-12:
            names = " + ".join(f"{kind}_prob" for kind in ROUND_FAULTS)
            raise ValueError(f"faults: {names} must be <= 1 (got {total:g})")
        return self


# The kinds one per-round draw chooses among, in the order of their intervals.
ROUND_FAULTS = ("crash", "straggler", "nan", "inf", "misshape", "oversize", "scale", "sign_flip")


def num_byzantine(fraction: float, num_clients: int) -> int:
    """``faults.byzantine_fraction`` of ``num_clients`` as a count, rounded half up: 0.25 of 10
    is 3, and 0.29 of 50 is 15 although the float product is 14.499999999999998."""
    return int(round(fraction * num_clients, 9) + 0.5)  # both >= 0: int() floors


class Experiment(Section):
    """One experiment: what runs, on what data, with which method.

    This class holds the shared sections; ``experiment_model()`` adds one optional field per
    method section. Parse with ``fedsim.config.load`` (never ``Experiment(...)`` directly),
    which uses the composed model.
    """

    method: str = "fedavg"
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    strategy: StrategyConfig = StrategyConfig()
    client: ClientConfig = ClientConfig()
    clients: ClientsConfig = ClientsConfig()
    eval: EvalConfig = EvalConfig()
    privacy: PrivacyConfig | None = None  # optional: absent = no differential privacy
    faults: FaultsConfig | None = None  # optional: absent = no faults injected
    systems: SystemsConfig | None = None  # optional: absent = no virtual clock (instant rounds)

    def section(self, name: str) -> Any:
        """A method section (``None`` when absent and optional)."""
        return getattr(self, name, None)

    @model_validator(mode="before")
    @classmethod
    def _fill_method_sections(cls, data: Any) -> Any:
        """The chosen method's required sections appear with their defaults when omitted."""
        from fedsim.registry import methods

        if not isinstance(data, dict):
            return data
        method = methods().get(str(data.get("method", "fedavg")))
        if method is None:
            return data
        missing = {name: {} for name in method.sections if data.get(name) is None}
        return {**data, **missing} if missing else data

    @model_validator(mode="after")
    def _method_fits(self) -> Experiment:
        from fedsim.assets.datasets import known_datasets, task_of
        from fedsim.registry import get_method, known_methods, users_of

        if self.method not in known_methods():
            raise ValueError(
                f"method: unknown method '{self.method}' (known: {', '.join(known_methods())})"
            )
        method = get_method(self.method)
        for name in type(self).model_fields:
            if name in Experiment.model_fields or getattr(self, name) is None:
                continue
            if name not in method.all_sections():
                raise ValueError(
                    f"{name}: method '{self.method}' ignores a [{name}] section "
                    f"(used by {', '.join(users_of(name))})"
                )
        if self.data.dataset not in known_datasets():
            raise ValueError(
                f"data.dataset: unknown dataset '{self.data.dataset}' "
                f"(known: {', '.join(known_datasets())})"
            )
        task = task_of(self.data.dataset)
        if task not in method.tasks:
            raise ValueError(
                f"data.dataset: '{self.data.dataset}' is {task} data; method "
                f"'{self.method}' takes {' or '.join(method.tasks)}"
            )
        # The method's own rules: pure functions raising ValueError("key: what is wrong").
        method.check(self)
        return self

    @model_validator(mode="after")
    def _aggregation_and_privacy_fit(self) -> Experiment:
        """``strategy.aggregator``, ``[privacy]`` and ``clients.chunk_size``: their rules
        live with their code."""
        from fedsim.config.chunking import check_chunking
        from fedsim.config.privacy import check_privacy
        from fedsim.config.systems import check_systems
        from fedsim.robust import check_aggregator

        check_aggregator(self)
        check_privacy(self)
        check_chunking(self)
        check_systems(self)
        return self

    @model_validator(mode="after")
    def _own_data_fits(self) -> Experiment:
        """``clients.data_paths`` needs a method that reads own data and fedsim's grids."""
        from fedsim.registry import get_method

        if not any(self.clients.data_paths):
            return self
        if not get_method(self.method).own_data:
            raise ValueError(
                f"clients.data_paths: method '{self.method}' cannot read a node's own data"
            )
        if self.run.backend == "flower-simulation":
            raise ValueError(
                "clients.data_paths: run.backend = flower-simulation gives nodes no per-node "
                "config; use inprocess or ray"
            )
        return self

    @model_validator(mode="after")
    def _faults_fit(self) -> Experiment:
        """Fault settings that depend on other sections (see ``FaultsConfig``)."""
        f = self.faults
        if f is None:
            return self
        if f.min_clients > self.clients.per_round:
            raise ValueError(
                f"faults.min_clients: must be <= clients.per_round (got {f.min_clients} > "
                f"{self.clients.per_round}): a round trains at most that many clients"
            )
        if f.byzantine_fraction > 0 and num_byzantine(f.byzantine_fraction, self.clients.num) < 1:
            raise ValueError(
                f"faults.byzantine_fraction: {f.byzantine_fraction:g} of clients.num = "
                f"{self.clients.num} rounds to no malicious client; use at least "
                f"{0.5 / self.clients.num:.3g}"
            )
        deadline = self.client.timeout or self.run.exchange_timeout
        if f.straggler_prob > 0 and not deadline and not f.straggler_delay:
            raise ValueError(
                "faults.straggler_prob: a straggler is left out by a deadline; set "
                "client.timeout or run.exchange_timeout (or faults.straggler_delay for slow "
                "clients that are still accepted)"
            )
        return self


def experiment_model() -> type[Experiment]:
    """``Experiment`` plus one optional field per section of every registered method (built
    again after ``fedsim.registry.reload``)."""
    from fedsim.registry import generation

    return _experiment_model(generation())


@lru_cache(maxsize=1)
def _experiment_model(generation: int) -> type[Experiment]:
    from fedsim.registry import method_sections

    fields: dict[str, Any] = {
        name: (model | None, None) for name, model in method_sections().items()
    }
    return create_model("Experiment", __base__=Experiment, **fields)
