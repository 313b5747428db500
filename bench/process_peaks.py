"""Run a benchmark's worker process and sample what its whole process tree holds.

Peak RSS (every child included: Ray's daemons and workers), peak PSS (shared pages split
between processes, dearer to read: every ``slow_every``-th sample), the CPU seconds of the
whole tree (user + system of every process ever seen in it, at its last sample: children
that ended before the root keep their last reading) and, where nvidia-smi answers, the GPU
memory in use above the reading before the start. The worker's stdout and stderr go to
temporary files, not pipes: a chatty worker (Ray, torchrun) cannot fill a pipe nobody reads
until it exits, and block on it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class Sampled:
    wall_s: float
    launched_at: float  # time.time() at the launch
    stdout: str
    stderr: str
    returncode: int
    peak_rss_mb: float
    peak_pss_mb: float | None  # None unless asked for
    peak_gpu_mb: float | None  # None without nvidia-smi
    # user + system seconds of every process seen in the tree, each at its last sample (up
    # to one ``interval`` of a process's CPU time may be missed, when it ends)
    cpu_s: float = 0.0
    # the same CPU seconds by role: "launched" (the process started), "ray workers", or the
    # executable's name ("raylet", "gcs_server", "python" for torchrun's children...)
    cpu_by_name: dict[str, float] = field(default_factory=dict)


def gpu_memory_mb() -> float | None:
    """GPU memory in use on the machine (nvidia-smi), or None without one."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return sum(float(x) for x in done.stdout.split()) if done.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def run_sampled(cmd: list[str], *, pss: bool = False, interval: float = 0.05,
                slow_every: int = 5, env: dict[str, str] | None = None) -> Sampled:  # fmt: skip
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_LOG_LEVEL": "ERROR", **(env or {})}
    idle_gpu = gpu_memory_mb()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        start, launched = time.perf_counter(), time.time()
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True, env=env)
        root, rss, pss_peak, gpu, tick = psutil.Process(proc.pid), 0, 0, 0.0, 0
        cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> user + system s
        names: dict[tuple[int, float], str] = {}
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            total = 0
            for p in procs:
                try:
                    with p.oneshot():
                        total += p.memory_info().rss
                        times = p.cpu_times()
                        key = (p.pid, p.create_time())
                        cpu[key] = times.user + times.system
                        names[key] = _role(p, root)  # the last seen: Ray retitles later
                except psutil.Error:  # ended between the listing and the reading
                    pass
            rss = max(rss, total)
            if pss and tick % slow_every == 0:
                pss_now = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):  # ended since the listing
                        pss_now += p.memory_full_info().pss
                pss_peak = max(pss_peak, pss_now)
            if idle_gpu is not None and tick % slow_every == 0:  # nvidia-smi takes tens of ms
                gpu = max(gpu, (gpu_memory_mb() or idle_gpu) - idle_gpu)
            tick += 1
            time.sleep(interval)
        wall = time.perf_counter() - start
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    return Sampled(
        wall, launched, out, err, proc.returncode, rss / 2**20,
        pss_peak / 2**20 if pss else None, gpu if idle_gpu is not None else None,
        sum(cpu.values()), _by_name(cpu, names),
    )  # fmt: skip


def _role(p: psutil.Process, root: psutil.Process) -> str:
    """What a process is, for the CPU breakdown: the launched one, a Ray worker (Ray sets
    its title to "ray::..."), or its executable's name (raylet, gcs_server, python...)."""
    if p.pid == root.pid:
        return "launched"
    title, name = (p.cmdline() or [""])[0], p.name()
    return "ray workers" if "ray::" in title or name.startswith("ray::") else name


def _by_name(cpu: dict, names: dict) -> dict[str, float]:
    totals: dict[str, float] = {}
    for key, seconds in cpu.items():
        name = names.get(key, "?")
        totals[name] = totals.get(name, 0.0) + seconds
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
