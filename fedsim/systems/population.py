"""Every client's device and online windows, from ``[systems]`` and the run's seed.

Drawn profiles are per client: client ``p``'s speeds and window come from
(run.seed, p, the systems stream) alone, so they do not change with ``clients.num``, the
backend or a resume. Speeds are log-normal around the configured medians (one draw for
compute, one for bandwidth that scales download and upload together, as a slow link is
slow both ways); a daily window starts uniformly in the cycle.
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.config.systems import SystemsConfig
from fedsim.seeding import SYSTEMS_DRAW, derive_seed
from fedsim.systems.traces import Device, Windows, read_devices, read_windows

HOUR = 3600.0


class Population:
    """``devices[p]`` and ``windows[p]`` (None: always online) of clients 0..num-1.

    Who is online is computed on flat arrays of every window (numpy), so a population of
    100,000 clients answers in milliseconds.
    """

    def __init__(self, devices: tuple[Device, ...], windows: tuple[Windows, ...] | None):
        self.devices = tuple(devices)
        self.windows = None if windows is None else tuple(windows)
        if self.windows is not None:
            spans = [(p, w.cycle_s, a, b) for p, w in enumerate(self.windows) for a, b in w.spans]
            table = np.array(spans, dtype=np.float64).reshape(-1, 4)
            self._owner = table[:, 0].astype(np.int64)
            self._cycle, self._from, self._to = table[:, 1], table[:, 2], table[:, 3]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Population)
            and self.devices == other.devices
            and self.windows == other.windows
        )

    def online(self, t: float) -> list[int]:
        """The partition ids online at virtual time ``t``, ascending."""
        if self.windows is None:
            return list(range(len(self.devices)))
        x = np.mod(t, self._cycle)
        inside = (self._from <= x) & (x < self._to)
        return np.unique(self._owner[inside]).tolist()

    def _starts_after(self, t: float) -> np.ndarray:
        """Every window start in ``[t, t + its cycle)``, sorted."""
        base = t - np.mod(t, self._cycle) + self._from
        return np.unique(np.where(base >= t, base, base + self._cycle))

    def first_time_with(self, t: float, need: int) -> float | None:
        """The earliest time >= ``t`` at which at least ``need`` clients are online, or None
        when that never happens within one longest cycle (windows repeat)."""
        if self.windows is None:
            return t if need <= len(self.devices) else None
        if len(self.online(t)) >= need:
            return t
        if np.all(self._cycle == self._cycle[0]):
            return self._sweep(t, need)
        for s in self._starts_after(t):  # cycles differ: count at every window start
            if len(self.online(float(s))) >= need:
                return float(s)
        return None

    def _sweep(self, t: float, need: int) -> float | None:
        """``first_time_with`` for one common cycle: walk the window edges of one cycle from
        ``t``, counting clients online (a client's windows never overlap: ``Windows``)."""
        cycle = float(self._cycle[0])
        x0 = t % cycle
        # each edge's time after t; at equal times a window that ends goes first ([from, to))
        starts = np.where(self._from > x0, self._from - x0, self._from - x0 + cycle)
        ends = np.where(self._to > x0, self._to - x0, self._to - x0 + cycle)
        times = np.concatenate([ends, starts])
        steps = np.concatenate([-np.ones(len(ends)), np.ones(len(starts))])
        order = np.lexsort((steps, times))
        counts = len(self.online(t)) + np.cumsum(steps[order])
        hit = np.nonzero(counts >= need)[0]
        return None if not len(hit) else t + float(times[order][hit[0]])


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
