"""Every client's device and online windows, from ``[systems]`` and the run's seed.

Drawn profiles are per client: client ``p``'s speeds and window come from
(run.seed, p, the systems stream) alone, so they do not change with ``clients.num``, the
backend or a resume. Speeds are log-normal around the configured medians (one draw for
compute, one for bandwidth that scales download and upload together, as a slow link is
slow both ways); a daily window starts uniformly in the cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedsim.config.systems import SystemsConfig
from fedsim.seeding import SYSTEMS_DRAW, derive_seed
from fedsim.systems.traces import Device, Windows, read_devices, read_windows

HOUR = 3600.0


@dataclass(frozen=True)
class Population:
    """``devices[p]`` and ``windows[p]`` (None: always online) of clients 0..num-1."""

    devices: tuple[Device, ...]
    windows: tuple[Windows, ...] | None

    def online(self, t: float) -> list[int]:
        """The partition ids online at virtual time ``t``, ascending."""
        if self.windows is None:
            return list(range(len(self.devices)))
        return [p for p, w in enumerate(self.windows) if w.online(t)]

    def first_time_with(self, t: float, need: int) -> float | None:
        """The earliest time >= ``t`` at which at least ``need`` clients are online, or None
        when that never happens (windows repeat, so one longest cycle decides)."""
        if self.windows is None:
            return t if need <= len(self.devices) else None
        if len(self.online(t)) >= need:
            return t
        candidates = sorted({s for w in self.windows for s in w.starts_after(t)})
        for s in candidates:
            if len(self.online(s)) >= need:
                return s
        return None

    def most_online(self) -> int:
        """The most clients ever online at once (over one longest cycle)."""
        if self.windows is None:
            return len(self.devices)
        times = {s for w in self.windows for s in w.starts_after(0.0)}
        return max(len(self.online(s)) for s in times)


def _draws(seed: int, pid: int) -> np.ndarray:
    """Client ``pid``'s three standard draws: compute, bandwidth, window offset."""
    rng = np.random.default_rng(derive_seed(seed, 0, pid, SYSTEMS_DRAW))
    z = rng.standard_normal(2)
    return np.array([z[0], z[1], rng.random()])


def build_population(cfg: SystemsConfig, num: int, seed: int) -> Population:
    """The population of ``num`` clients that ``cfg`` describes (trace files read here)."""
    draws = [_draws(seed, p) for p in range(num)]
    if cfg.device_trace:
        trace = read_devices(cfg.device_trace)
        devices = tuple(trace[p % len(trace)] for p in range(num))
    else:
        devices = tuple(
            Device(
                cfg.compute_ms_per_sample * math.exp(cfg.compute_sigma * float(d[0])),
                cfg.download_kbps * math.exp(cfg.bandwidth_sigma * float(d[1])),
                cfg.upload_kbps * math.exp(cfg.bandwidth_sigma * float(d[1])),
            )
            for d in draws
        )
    windows: tuple[Windows, ...] | None = None
    if cfg.availability == "daily":
        cycle, length = cfg.cycle_hours * HOUR, cfg.online_hours * HOUR
        windows = tuple(_daily(cycle, length, float(d[2]) * cycle) for d in draws)
    elif cfg.availability == "trace":
        trace_w = read_windows(cfg.behaviour_trace)
        windows = tuple(trace_w[p % len(trace_w)] for p in range(num))
    return Population(devices, windows)


def _daily(cycle: float, length: float, start: float) -> Windows:
    """One window of ``length`` from ``start``, wrapped around the cycle's end."""
    end = start + length
    if end <= cycle:
        return Windows(cycle, ((start, end),))
    return Windows(cycle, ((0.0, end - cycle), (start, cycle)))
