"""Virtual-clock benchmark: simulated client updates per second with 10,000 and 100,000
clients in the population, side by side with the same runs without the clock.

Workload: MNIST, the small CNN, ``sampled`` partitions of 20 images per client (drawn when a
client is first asked, so the population can be any size), one local epoch, one thread, each
case in a fresh process. Cases per population size:
- ``fedavg``: synchronous FedAvg, 10 clients per round, no ``[systems]`` (the reference);
- ``fedavg+clock``: the same with ``[systems]`` (daily availability, drawn devices);
- ``fedbuff``: FedBuff on the same clock, 100 clients in flight, a step every 10 arrivals.
Measured: seconds to build the population (devices and windows of every client), the run's
wall seconds, client updates trained (every client sent a model), and updates per second.
Results also go to bench/out/async_population.json.
Usage: python bench/async_population.py [--sizes 10000 100000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
BASE = [
    "data.partitioner='sampled'", "data.samples_per_client=20", "client.batch_size=20",
    "clients.per_round=10", "eval.max_samples=500", "run.checkpoint_every=0",
    "clients.num_cpus=1",
]  # fmt: skip
CASES = {
    "fedavg": ("fedavg", ""),
    "fedavg+clock": ("fedavg", '[systems]\navailability = "daily"\n'),
    "fedbuff": (
        "fedbuff",
        '[systems]\navailability = "daily"\n[fedbuff]\nbuffer_size = 10\nconcurrency = 100\n',
    ),
}


def one_case(case: str, size: int, rounds: int) -> dict:
    """Runs in its own process: one run of ``case`` over ``size`` clients."""
    from fedsim.config import load_experiment
    from fedsim.runner import run_experiment
    from fedsim.systems.population import build_population

    method, extra = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.toml"
        path.write_text(f'method = "{method}"\n[data]\ndataset = "mnist"\n{extra}')
        overrides = [*BASE, f"clients.num={size}", f"run.rounds={rounds}", f"eval.every={rounds}"]
        exp = load_experiment(path, overrides)
        build = 0.0
        if exp.systems is not None:
            start = time.perf_counter()
            build_population(exp.systems, size, exp.run.seed)
            build = time.perf_counter() - start
        start = time.perf_counter()
        run_dir, summary = run_experiment(exp, Path(tmp) / "run")
        seconds = time.perf_counter() - start
        if summary["status"] != "completed":
            raise SystemExit(f"{case} at {size}: run {summary['status']}")
        rows = (run_dir / "comm.csv").read_text().splitlines()[1:]
        updates = sum(1 for r in rows if r.split(",")[3] == "down")
    return {
        "case": case,
        "clients": size,
        "rounds": rounds,
        "population_s": round(build, 3),
        "run_s": round(seconds, 3),
        "updates": updates,
        "updates_per_s": round(updates / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, one process
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case, args.size, args.rounds)))
        return
    results = []
    for size in args.sizes:
        for case in CASES:
            cmd = [sys.executable, __file__, "--case", case, "--size", str(size),
                   "--rounds", str(args.rounds)]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if proc.returncode:
                raise SystemExit(proc.stderr[-2000:])
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{size:>7} clients  {case:<13} population {r['population_s']:6.2f} s  "
                  f"run {r['run_s']:7.2f} s  {r['updates']:5d} updates  "
                  f"{r['updates_per_s']:7.2f} updates/s", flush=True)  # fmt: skip
    OUT.mkdir(exist_ok=True)
    (OUT / "async_population.json").write_text(json.dumps(results, indent=1) + "\n")
    for size in args.sizes:
        ref = next(r for r in results if r["clients"] == size and r["case"] == "fedavg")
        for r in results:
            if r["clients"] == size and r is not ref:
                ratio = r["updates_per_s"] / ref["updates_per_s"]
                print(f"{size:>7} clients  {r['case']:<13} {ratio:.2f}x FedAvg's updates/s")


if __name__ == "__main__":
    main()
