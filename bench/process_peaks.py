"""Run a benchmark's worker process and sample what its whole process tree holds.

Peak RSS (every child included: Ray's daemons and workers), peak PSS (shared pages split
between processes, dearer to read: every ``slow_every``-th sample) and, where nvidia-smi
answers, the GPU memory in use above the reading before the start.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

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
                slow_every: int = 5) -> Sampled:  # fmt: skip
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_LOG_LEVEL": "ERROR"}
    idle_gpu = gpu_memory_mb()
    start, launched = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    root, rss, pss_peak, gpu, tick = psutil.Process(proc.pid), 0, 0, 0.0, 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            rss = max(rss, sum(p.memory_info().rss for p in procs if p.is_running()))
            if pss and tick % slow_every == 0:
                pss_peak = max(
                    pss_peak, sum(p.memory_full_info().pss for p in procs if p.is_running())
                )
        except psutil.Error:
            pass
        if idle_gpu is not None and tick % slow_every == 0:  # nvidia-smi takes tens of ms
            gpu = max(gpu, (gpu_memory_mb() or idle_gpu) - idle_gpu)
        tick += 1
        time.sleep(interval)
    wall = time.perf_counter() - start
    out, err = proc.communicate()
    return Sampled(
        wall, launched, out, err, proc.returncode, rss / 2**20,
        pss_peak / 2**20 if pss else None, gpu if idle_gpu is not None else None,
    )  # fmt: skip
