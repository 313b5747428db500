"""``[systems]``: how fast each client computes and communicates, and when it is online.

Absent, rounds are instant and every client is always there (fedsim's behaviour before the
virtual clock). Present, every round runs on a deterministic virtual clock
(``fedsim.systems``): a client's round takes its compute for the samples it trained on plus
its bytes over its bandwidth, the server samples only among clients online at the round's
start, and ``deadline_s`` / ``overcommit`` leave the slow ones out. docs/async.md has the
model of time and the trace formats.

Here, with the config, and free of the clock's code: parsing an experiment must stay cheap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from fedsim.config.section import Section

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment


class SystemsConfig(Section):
    """Per-client speeds drawn from seeded log-normal distributions (the defaults' medians
    are of the order of FedScale's device trace: ~100 ms per sample, a few Mbit/s), or read
    from a trace file; availability always, in one daily window, or from a trace."""

    compute_ms_per_sample: float = Field(
        100.0,
        gt=0,
        description="median milliseconds of one sample's forward pass on a client (FedScale's "
        "'computation'); clients draw theirs from a log-normal around it",
    )
    compute_sigma: float = Field(
        0.8, ge=0, description="log-normal sigma of the compute speed across clients (0: equal)"
    )
    compute_gflops: float = Field(
        10.0,
        gt=0,
        description="the median client's sustained GFLOP/s, for methods that count their "
        "FLOPs (work-flops); a client k times slower per sample is k times slower per FLOP",
    )
    backward_factor: float = Field(
        3.0,
        gt=0,
        description="one trained sample costs this many forward passes (FedScale's "
        "augmentation factor: forward + backward)",
    )
    download_kbps: float = Field(
        20000.0, gt=0, description="median download bandwidth, kbit/s (10^3 bits per second)"
    )
    upload_kbps: float = Field(5000.0, gt=0, description="median upload bandwidth, kbit/s")
    bandwidth_sigma: float = Field(
        1.0,
        ge=0,
        description="log-normal sigma of bandwidth across clients (one draw scales both ways)",
    )
    device_trace: str = Field(
        "",
        description="per-client speeds from a file instead of the distributions: a CSV "
        "(client, compute_ms_per_sample, download_kbps, upload_kbps) or FedScale's "
        "device-capacity pickle; client p reads row p mod rows",
    )
    availability: Literal["always", "daily", "trace"] = Field(
        "always",
        description="always online; 'daily': one window of online_hours per cycle_hours at a "
        "seeded offset per client; 'trace': the windows of behaviour_trace",
    )
    online_hours: float = Field(8.0, gt=0, description="daily: hours online per cycle")
    cycle_hours: float = Field(24.0, gt=0, description="daily: the length of one cycle, hours")
    behaviour_trace: str = Field(
        "",
        description="availability = 'trace': a CSV (client, cycle_s, online_from_s, "
        "online_to_s; several rows per client for several windows) or FedScale's behaviour "
        "pickle (active/inactive/finish_time); client p reads client p mod clients",
    )
    deadline_s: float = Field(
        0.0,
        ge=0,
        description="virtual seconds a round waits; a client not done by then is a straggler, "
        "left out with reason 'deadline'; 0 = wait for every client",
    )
    overcommit: float = Field(
        1.0,
        ge=1,
        description="sample ceil(per_round x overcommit) clients and keep the first per_round "
        "to finish (the rest are left out with reason 'over-commitment')",
    )

    @model_validator(mode="after")
    def _keys_fit(self) -> SystemsConfig:
        if self.availability == "daily" and self.online_hours > self.cycle_hours:
            raise ValueError(
                f"systems.online_hours: {self.online_hours:g} is longer than "
                f"systems.cycle_hours = {self.cycle_hours:g}"
            )
        if self.availability == "trace" and not self.behaviour_trace:
            raise ValueError("systems.behaviour_trace: availability = 'trace' needs a trace file")
        if self.behaviour_trace and self.availability != "trace":
            raise ValueError(
                "systems.behaviour_trace: read only with availability = 'trace' "
                f"(availability is '{self.availability}')"
            )
        return self


def sample_size(exp: Experiment) -> int:
    """Clients sampled per round: ``clients.per_round``, over-committed under ``[systems]``."""
    per_round = exp.clients.per_round
    if exp.systems is None:
        return per_round
    return min(exp.clients.num, math.ceil(round(per_round * exp.systems.overcommit, 9)))


def check_systems(exp: Experiment) -> None:
    """Rules between ``[systems]`` and the shared sections."""
    s = exp.systems
    if s is None:
        return
    if exp.clients.chunk_size:
        raise ValueError(
            "systems: the virtual clock times each client's reply, and clients.chunk_size "
            "sums a chunk of replies where it trained; set clients.chunk_size = 0"
        )
    if s.overcommit > 1 and sample_size(exp) == exp.clients.per_round:
        raise ValueError(
            f"systems.overcommit: {s.overcommit:g} x clients.per_round = "
            f"{exp.clients.per_round} samples no extra client (clients.num = "
            f"{exp.clients.num}); raise it or clients.num"
        )


def check_trace_files(exp: Experiment) -> None:
    """The trace files exist (read where a user's file is loaded, before any run starts;
    their contents are checked when the run builds its population)."""
    s = exp.systems
    if s is None:
        return
    for key in ("device_trace", "behaviour_trace"):
        path = getattr(s, key)
        if path and not Path(path).expanduser().is_file():
            raise ValueError(f"systems.{key}: no such file: {path}")
