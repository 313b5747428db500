"""The virtual clock of synchronous rounds: when a round starts, who is online, how long
each client takes, who is late, and when the round ends.

A client's time in a round is its download, its compute and its upload:

    seconds = compute + 8 x bytes_down / (1000 x download_kbps)
                      + 8 x bytes_up / (1000 x upload_kbps)
    compute = work_flops / (gflops x 10^9)                    (a reply that counts its FLOPs)
            = backward_factor x samples x ms_per_sample / 1000  (otherwise)

with the bytes of the arrays actually sent and received (what ``comm.csv`` counts),
``samples`` the reply's ``work-samples`` metric or ``num-examples`` x ``client.local_epochs``,
and a client's GFLOP/s ``compute_gflops`` scaled by how much slower per sample it is than the
median client.
A method with several training exchanges per round adds them up. Nothing here reads a
wall clock: the same run gives the same times on every backend and after a resume.

A round starts at the first moment at or after the previous round's end when enough
clients are online to sample (waiting if need be), and ends when the server has
``per_round`` usable replies, or at the deadline, or when the last sampled client answers,
whichever comes first. Evaluation exchanges take no virtual time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedsim.config.systems import SystemsConfig
from fedsim.errors import FedsimError
from fedsim.systems.population import Population, build_population


class SystemsError(FedsimError, RuntimeError):
    """A population that cannot serve the run (never enough clients online at once)."""


# Reply metrics a method may report so that the clock charges the work it really did.
WORK_FLOPS = "work-flops"  # FLOPs the client computed for this reply
WORK_SAMPLES = "work-samples"  # samples it processed (default: num-examples x local epochs)
DEADLINE = "deadline"
OVERCOMMIT = "over-commitment"


@dataclass
class _Round:
    start: float
    waited: float
    online: int
    elapsed: dict[int, float] = field(default_factory=dict)  # per client, all its exchanges
    kept: set[int] = field(default_factory=set)
    late: set[int] = field(default_factory=set)
    overcommitted: set[int] = field(default_factory=set)


class VirtualClock:
    """One per run; ``FederationContext`` consults it for sampling and training replies."""

    def __init__(
        self, cfg: SystemsConfig, population: Population, *, per_round: int, need: int,
        local_epochs: int,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.population = population
        self.per_round = per_round
        self.need = need
        self.local_epochs = local_epochs
        self.now = 0.0  # virtual seconds since the run's start: the last round's end
        self._round: _Round | None = None
        # An asynchronous strategy keeps its own timeline (fedsim_methods.strategies.
        # asynchronous): it sets this False, moves ``now`` itself and adds to ``extra``;
        # rounds then neither wait nor settle, and their row reports where it left ``now``.
        self.synchronous = True
        self.extra: dict[str, float] = {}
        if population.first_time_with(0.0, need) is None:
            raise SystemsError(
                f"systems: fewer than {need} clients are ever online at once, and a round "
                f"samples {need} (clients.per_round x systems.overcommit); lengthen the "
                "windows (systems.online_hours, the behaviour trace) or sample fewer"
            )

    @classmethod
    def for_experiment(cls, exp, need: int) -> VirtualClock:
        cfg = exp.systems
        return cls(
            cfg,
            build_population(cfg, exp.clients.num, exp.run.seed),
            per_round=exp.clients.per_round,
            need=need,
            local_epochs=exp.client.local_epochs,
        )

    # -- a round ------------------------------------------------------------------------
    def begin_round(self) -> list[int]:
        """Start a round (or a retried attempt) at the first moment enough clients are
        online; returns them, ascending."""
        if not self.synchronous:
            online = self.population.online(self.now)
            self._round = _Round(start=self.now, waited=0.0, online=len(online))
            return online
        if self._round is not None:  # a retried attempt: the failed one took its time
            self.now = self._end_of(self._round)
        start = self.population.first_time_with(self.now, self.need)
        assert start is not None  # checked at construction: the windows repeat
        online = self.population.online(start)
        self._round = _Round(start=start, waited=start - self.now, online=len(online))
        return online

    def duration(
        self, pid: int, down_bytes: int, up_bytes: int, *, samples: float = 0.0,
        flops: float | None = None,
    ) -> float:  # fmt: skip
        """Client ``pid``'s virtual seconds for one exchange (see the module docstring)."""
        d = self.population.devices[pid]
        if flops is not None:
            slower = d.compute_ms_per_sample / self.cfg.compute_ms_per_sample
            compute = flops * slower / (self.cfg.compute_gflops * 1e9)
        else:
            compute = self.cfg.backward_factor * samples * d.compute_ms_per_sample / 1000.0
        down = 8.0 * down_bytes / (1000.0 * d.download_kbps)
        up = 8.0 * up_bytes / (1000.0 * d.upload_kbps)
        return compute + down + up

    def settle(self, times: dict[int, float]) -> dict[int, str]:
        """Charge each usable reply of a training exchange its time; return the clients to
        leave out and why (late past the deadline, or beyond the first ``per_round``)."""
        r = self._current()
        for pid, seconds in times.items():
            r.elapsed[pid] = r.elapsed.get(pid, 0.0) + seconds
        dropped: dict[int, str] = {}
        deadline = self.cfg.deadline_s
        on_time = []
        for pid in sorted(times):
            if deadline and r.elapsed[pid] > deadline:
                r.late.add(pid)
                dropped[pid] = (
                    f"{DEADLINE}: took {r.elapsed[pid]:.1f} virtual s, more than "
                    f"systems.deadline_s = {deadline:g}"
                )
            else:
                on_time.append(pid)
        on_time.sort(key=lambda p: (r.elapsed[p], p))
        room = max(0, self.per_round - len(r.kept - set(times)))
        for pid in on_time[room:]:
            r.overcommitted.add(pid)
            dropped[pid] = (
                f"{OVERCOMMIT}: finished at {r.elapsed[pid]:.1f} virtual s, after the first "
                f"{self.per_round} (clients.per_round)"
            )
        r.kept = (r.kept - set(dropped)) | set(on_time[:room])
        return dropped

    def end_round(self) -> dict[str, float]:
        """Close the round; the ``systems`` row of ``metrics.jsonl``."""
        r = self._current()
        self._round = None
        if not self.synchronous:
            extra, self.extra = self.extra, {}
            return {"virtual-time-s": self.now, "round-s": self.now - r.start, **extra}
        end = self._end_of(r)
        self.now = end
        return {
            "virtual-time-s": end,
            "round-s": end - r.start,
            "waited-s": r.waited,
            "online": r.online,
            "stragglers": len(r.late),
            "over-committed": len(r.overcommitted),
        }

    def _end_of(self, r: _Round) -> float:
        """When the server stops waiting: ``per_round`` replies in, or the deadline, or the
        last client's answer."""
        kept = [r.elapsed[p] for p in r.kept]
        last = max(kept, default=0.0)
        if r.late and len(r.kept) < self.per_round:
            last = self.cfg.deadline_s
        return r.start + last

    def _current(self) -> _Round:
        if self._round is None:
            raise RuntimeError("VirtualClock: no round in progress (begin_round first)")
        return self._round

    def charge(self, pid: int, metrics: dict, down_bytes: int, up_bytes: int) -> float:
        """The virtual seconds of a reply with these metrics: its ``work-flops`` when it
        counts them, else its ``work-samples``, else ``num-examples`` x ``client.local_epochs``
        (neither: its time is its traffic)."""
        if WORK_FLOPS in metrics:
            return self.duration(pid, down_bytes, up_bytes, flops=float(metrics[WORK_FLOPS]))
        if WORK_SAMPLES in metrics:
            samples = float(metrics[WORK_SAMPLES])
        else:
            samples = float(metrics.get("num-examples", 0)) * self.local_epochs
        return self.duration(pid, down_bytes, up_bytes, samples=samples)
