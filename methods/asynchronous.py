"""FedAsync (Xie et al. 2019) and FedBuff (Nguyen et al., AISTATS 2022), declared: asynchronous
servers on the supervised client, timed by the virtual clock of ``[systems]``.

Both keep ``concurrency`` clients training at once, each on the model it was sent. A client's
update arrives when its virtual time is up; its staleness is how many server steps happened
since it was sent. FedAsync mixes every arrival into the model (weight ``alpha x s(staleness)``);
FedBuff sums ``buffer_size`` arrivals' updates, each weighted by ``s(staleness)``, and then
steps. One server step is one round of ``metrics.jsonl``. The server half is
``fedsim_methods.strategies.asynchronous``; docs/async.md explains the model of time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedsim.config.section import Section
from fedsim_methods.supervised import (
    supervised_method,
    validate_data_and_model,
    validate_own_strategy,
)

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment


class AsyncConfig(Section):
    """What both asynchronous servers share."""

    clock: Literal["virtual", "real"] = Field(
        "virtual",
        description="virtual: events ordered by [systems]' clock (deterministic, every "
        "backend); real: updates aggregated as they really arrive (deployments on a SuperLink)",
    )
    poll_s: float = Field(0.2, gt=0, description="real clock: seconds between polls for replies")
    concurrency: int = Field(
        0,
        ge=0,
        description="clients training at once; 0 = clients.per_round",
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="an update older than this many server steps is dropped (reason "
        "'staleness'); 0 = none is",
    )
    staleness: Literal["constant", "polynomial", "hinge"] = Field(
        "polynomial",
        description="s(t): constant 1; polynomial (1 + t)^-a; hinge 1 if t <= b else "
        "1 / (a (t - b) + 1) (Xie et al. 2019)",
    )
    a: float = Field(0.5, ge=0, description="the staleness function's exponent or slope")
    b: int = Field(4, ge=0, description="hinge: the staleness tolerated at full weight")

    def weight(self, staleness: int) -> float:
        """s(staleness)."""
        if self.staleness == "constant":
            return 1.0
        if self.staleness == "polynomial":
            return float((1.0 + staleness) ** -self.a)
        return 1.0 if staleness <= self.b else 1.0 / (self.a * (staleness - self.b) + 1.0)


class FedAsyncConfig(AsyncConfig):
    """``[fedasync]``: x <- (1 - alpha_t) x + alpha_t x_client, alpha_t = alpha s(staleness)."""

    alpha: float = Field(0.6, gt=0, le=1, description="the mixing weight of a fresh update")


class FedBuffConfig(AsyncConfig):
    """``[fedbuff]``: x <- x + server_lr x mean over the buffer of s(staleness) x update."""

    buffer_size: int = Field(10, ge=1, description="K: arrivals per server step")
    server_lr: float = Field(1.0, gt=0, description="eta_g: the server's step on the mean")


def validate(exp: Experiment) -> None:
    validate_data_and_model(exp)
    validate_own_strategy(exp)
    cfg = exp.section(exp.method)
    if cfg.clock == "real":
        if exp.systems is not None:
            raise ValueError(
                f"systems: {exp.method}.clock = 'real' times real devices; the [systems] "
                "section models virtual ones (remove it, or use clock = 'virtual')"
            )
    elif exp.systems is None:
        raise ValueError(
            f"systems: method '{exp.method}' is asynchronous: updates arrive when each "
            "client's virtual time is up; add a [systems] section (docs/async.md)"
        )
    s = exp.systems
    if s is not None and (s.deadline_s or s.overcommit > 1):
        key = "deadline_s" if s.deadline_s else "overcommit"
        raise ValueError(
            f"systems.{key}: a round deadline and over-commitment are for synchronous rounds; "
            f"method '{exp.method}' bounds staleness instead ({exp.method}.max_staleness)"
        )
    concurrency = cfg.concurrency or exp.clients.per_round
    if concurrency > exp.clients.num:
        raise ValueError(
            f"{exp.method}.concurrency: {concurrency} clients cannot train at once out of "
            f"clients.num = {exp.clients.num}"
        )
    if exp.method == "fedbuff" and cfg.buffer_size > exp.clients.num:
        raise ValueError(
            f"fedbuff.buffer_size: {cfg.buffer_size} is more than clients.num = {exp.clients.num}"
        )


def _async_method(name: str, description: str, section: type[AsyncConfig]):
    return supervised_method(
        name=name,
        description=description,
        strategy="fedsim_methods.strategies.asynchronous:build_strategy",
        handlers={
            "train": "fedsim_methods.clients.supervised:train",
            "evaluate": "fedsim_methods.clients.supervised:evaluate",
        },
        sections={name: section},
        validate="fedsim_methods.asynchronous:validate",
    )


FEDASYNC = _async_method(
    "fedasync",
    "FedAsync (Xie et al. 2019): every arriving update mixed in, weighted by its staleness",
    FedAsyncConfig,
)
FEDBUFF = _async_method(
    "fedbuff",
    "FedBuff (Nguyen et al. 2022): buffered asynchronous aggregation of K staleness-weighted "
    "updates",
    FedBuffConfig,
)
