"""Peer benchmark: fedsim against pfl-research (pfl 0.6.0) on the same FedAvg workload.

Why: bench/fedavg_mnist.py measures fedsim against a bare loop and plain Flower; this asks
how fedsim's cost per client call compares with another simulator built for speed, on the
workload of pfl-research's own CIFAR-10 benchmark (benchmarks/image_classification, IID
users, 50 per round, 1 local epoch of batch 10), here on MNIST:
  1,000 IID clients of 60 training images (60,000 / 1,000), 50 clients per round, 1 local
  epoch of batch size 10 (6 optimiser steps per client per round), plain SGD lr 0.05 with no
  momentum, FedAvg, 30 rounds (--rounds), the test set evaluated at the start and the end
  only; the model is fedsim's `cnn` (SmallCNN, 80,202 parameters).
Both sides train on the same uint8 images: this driver exports fedsim's prepared MNIST
(fedsim.data.sources.load_stored_images, what federated_image_data reads) to
bench/out/mnist.npz, and pfl's worker (bench/peers/pfl_mnist.py, in its own virtualenv
.venv-pfl, same torch) reads that file. The IID split and the sampled cohorts differ.
Modes, each its own process tree:
  floor                   a bare PyTorch loop: fedsim's data, model and train_epochs, the
                          FedAvg average in numpy, nothing else (1 torch thread)
  pfl                     pfl, one process, 1 torch thread
  pfl-2                   pfl's multi-process simulation: torchrun --standalone
                          --nproc_per_node=2 (gloo; each process trains half of every cohort)
  fedsim-inprocess        fedsim's in-process backend, 1 torch thread
  fedsim-ray-2            fedsim's Ray backend, 2 worker actors of 1 CPU each
  fedsim-inprocess-chunk, fedsim-ray-2-chunk
                          the same with clients.chunk_size = 5; in the default list only
                          when fedsim's config schema has that key
  fedsim-ray-2-chunk25    chunks of 25: one chunk per worker per round
  fedsim-inprocess-100k, fedsim-ray-2-100k
                          chunked, on a population of 100,000 clients of 60 images each,
                          drawn when a client is first sampled (data.partitioner = "sampled");
                          pfl has no such mode here (its worker splits 60,000 images IID)
Measured per mode: seconds per round (inside the worker, round 1's start to the end of the
last round, set-up and test-set evaluation left out), wall time of the whole process, CPU
seconds of its process tree (Ray's processes and torchrun's children included), peak RSS of
the tree, final test accuracy, and the overhead per client call: (s/round - seconds of local
training per round) / clients per round, where local training is timed inside the worker
(fedsim: fedsim.training.train_epochs; pfl: PyTorchModel.do_multiple_epochs_of; under
torchrun summed over the ranks, on Ray not collected). With several processes it is
worker-seconds instead, marked *: (processes x s/round - training s/round) / clients, with
fedsim in-process's training time for Ray; waiting and imbalance count as overhead there.
--count-steps also counts the local optimiser steps (a global optimiser step hook; pfl's
central optimiser left out) in every mode but Ray's (torchrun: summed over the ranks): 6
per client per round.
With --repeat K the modes run interleaved (rep-major, so background load hits every mode
alike) and each mode keeps the run with the median s/round (the lower median for even K).
Results also go to bench/out/peers.json.
Usage: python bench/peers_mnist.py [--rounds N] [--only pfl,fedsim-inprocess,...]
                                   [--repeat K] [--count-steps]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
DATA = OUT / "mnist.npz"
PFL_VENV = ROOT / ".venv-pfl"
PFL_WORKER = ROOT / "bench" / "peers" / "pfl_mnist.py"
CLIENTS, PER_ROUND, BATCH, LR, EPOCHS = 1000, 50, 10, 0.05, 1

SCALE = {"clients.num": 100_000, "data.partitioner": "sampled", "data.samples_per_client": 60}

# fedsim's modes: name -> config overrides on top of workload(); one line adds a mode.
FEDSIM_MODES: dict[str, dict[str, Any]] = {
    "fedsim-inprocess": {"run.backend": "inprocess"},
    "fedsim-ray-2": {"run.backend": "ray", "run.ray_workers": 2},
    "fedsim-inprocess-chunk": {"run.backend": "inprocess", "clients.chunk_size": 5},
    "fedsim-ray-2-chunk": {"run.backend": "ray", "run.ray_workers": 2, "clients.chunk_size": 5},
    "fedsim-ray-2-chunk25": {"run.backend": "ray", "run.ray_workers": 2, "clients.chunk_size": 25},
    # Scale: a population of 100,000, each client 60 images drawn when it is first sampled.
    "fedsim-inprocess-100k": {"run.backend": "inprocess", "clients.chunk_size": 5, **SCALE},
    "fedsim-ray-2-100k": {
        "run.backend": "ray",
        "run.ray_workers": 2,
        "clients.chunk_size": 5,
        **SCALE,
    },  # fmt: skip
}
PFL_MODES: dict[str, int] = {"pfl": 1, "pfl-2": 2}  # name -> processes
MODES = ["floor", *PFL_MODES, *FEDSIM_MODES]

CLOCK: dict[str, Any] = {"start": None, "end": None, "eval_s": 0.0}
TRAIN: dict[str, Any] = {"s": 0.0, "calls": 0, "steps": 0}


def workload(rounds: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """fedsim's config overrides for the workload (on experiments/baselines/fedavg_mnist)."""
    return {
        "run.name": "bench-peers",
        "run.rounds": rounds,
        "run.checkpoint_every": 0,
        "run.backend": "inprocess",
        "run.ray_workers": 0,
        "clients.num": CLIENTS,
        "clients.per_round": PER_ROUND,
        "clients.num_cpus": 1,  # torch threads of every client call; Ray's CPUs per worker
        "data.partitioner": "iid",
        "data.min_partition_size": 0,
        "client.batch_size": BATCH,
        "client.lr": LR,
        "client.momentum": 0.0,
        "client.local_epochs": EPOCHS,
        "eval.every": rounds,
        **(overrides or {}),
    }


def experiment(rounds: int, overrides: dict[str, Any] | None = None):
    from fedsim.config import load_experiment

    path = ROOT / "experiments" / "baselines" / "fedavg_mnist.toml"
    return load_experiment(path, workload(rounds, overrides))


def unavailable(mode: str) -> str | None:
    """Why fedsim's config refuses this mode's overrides (a key this fedsim lacks), or None."""
    from fedsim.config.load import ConfigError

    try:
        experiment(1, FEDSIM_MODES[mode])
    except ConfigError as exc:
        return str(exc).splitlines()[0]
    return None


def export_mnist() -> None:
    """MNIST as fedsim prepared it (uint8 images, divisor) for pfl's worker to read."""
    import numpy as np

    from fedsim.data.sources import load_stored_images

    raw = load_stored_images("mnist")
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = DATA.with_suffix(".tmp.npz")
    np.savez(tmp, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test,
             y_test=raw.y_test, divisor=np.float32(raw.divisor))  # fmt: skip
    tmp.replace(DATA)


# -- fedsim's workers ---------------------------------------------------------------------
def instrument(count_steps: bool) -> None:
    """Time fedsim.training.train_epochs (every module that imported it sees the wrapper)
    and, if asked, count optimiser steps."""
    import fedsim.training

    original = fedsim.training.train_epochs

    def train_epochs(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TRAIN["s"] += time.perf_counter() - t0
            TRAIN["calls"] += 1

    fedsim.training.train_epochs = train_epochs
    for module in list(sys.modules.values()):  # those that imported it already
        if getattr(module, "train_epochs", None) is original:
            module.train_epochs = train_epochs
    if count_steps:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def hook(optimizer, args, kwargs) -> None:
            TRAIN["steps"] += 1

        register_optimizer_step_post_hook(hook)


def run_floor(rounds: int) -> dict:
    """The same arithmetic as fedsim's FedAvg on this workload, with nothing around it
    (bench/floor.py)."""
    from floor import bare_fedavg

    def started() -> None:
        CLOCK["start"] = time.perf_counter()

    def finished() -> None:
        CLOCK["end"] = time.perf_counter()

    return bare_fedavg(experiment(rounds), started=started, finished=finished)


def run_fedsim(rounds: int, overrides: dict[str, Any]) -> dict:
    import shutil

    from fedsim.federation.callbacks import Callback, ServerEvaluation
    from fedsim.runner import run_experiment

    evaluate = ServerEvaluation.on_round_end

    def timed_evaluation(self, run, server_round, metrics):
        t0 = time.perf_counter()
        try:
            return evaluate(self, run, server_round, metrics)
        finally:
            if server_round >= 1:  # round 0's evaluation comes before the clock starts
                CLOCK["eval_s"] += time.perf_counter() - t0

    ServerEvaluation.on_round_end = timed_evaluation

    class Clock(Callback):  # runs after the standard callbacks (server evaluation first)
        def on_round_start(self, run, server_round) -> None:
            CLOCK["start"] = CLOCK["start"] or time.perf_counter()

        def on_round_end(self, run, server_round, metrics) -> None:
            if server_round == rounds:
                CLOCK["end"] = time.perf_counter()

    out = OUT / f"run-peers-{os.getpid()}"
    exp = experiment(rounds, overrides)
    try:
        _, summary = run_experiment(exp, out, callbacks=[Clock()])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return dict(summary["final"]["server-eval"])


def worker(mode: str, rounds: int, count_steps: bool) -> None:
    t0 = time.perf_counter()
    overrides = FEDSIM_MODES.get(mode, {})
    ray = overrides.get("run.backend") == "ray"
    if ray:  # as `fedsim run` does: Ray starts while the config loads
        from fedsim.backends.ray_start import start_early

        start_early(None)
    import torch

    if not ray:
        torch.set_num_threads(1)
    instrument(count_steps and not ray)
    result = run_floor(rounds) if mode == "floor" else run_fedsim(rounds, overrides)
    in_rounds = CLOCK["end"] - CLOCK["start"] - CLOCK["eval_s"]
    result = {
        "rank": 0,
        "world": 1,
        "torch": torch.__version__,
        "setup_s": CLOCK["start"] - t0,
        "s_per_round": in_rounds / rounds,
        "train_s": TRAIN["s"] if TRAIN["calls"] else None,  # None: trained elsewhere (Ray)
        "train_calls": TRAIN["calls"],
        "local_steps": TRAIN["steps"] if count_steps and not ray else None,
        **result,
    }
    print("RESULT " + json.dumps(result), flush=True)


# -- driver -------------------------------------------------------------------------------
def command(mode: str, rounds: int, count_steps: bool) -> list[str]:
    steps = ["--count-steps"] if count_steps else []
    if mode not in PFL_MODES:
        return [sys.executable, __file__, "--worker", mode, "--rounds", str(rounds), *steps]
    args = [str(PFL_WORKER), "--data", str(DATA), "--rounds", str(rounds),
            "--clients", str(CLIENTS), "--per-round", str(PER_ROUND), "--batch-size", str(BATCH),
            "--epochs", str(EPOCHS), "--lr", str(LR), "--threads", "1", *steps]  # fmt: skip
    procs = PFL_MODES[mode]
    if procs == 1:
        return [str(PFL_VENV / "bin" / "python"), *args]
    # pfl's documented launch for PyTorch: torchrun; --standalone picks a free local port
    torchrun = [str(PFL_VENV / "bin" / "torchrun"), "--standalone", "--nnodes=1"]
    return [*torchrun, f"--nproc_per_node={procs}", *args]


def measure(mode: str, rounds: int, count_steps: bool) -> dict:
    from process_peaks import run_sampled

    # Every process 1 torch thread (torchrun sets this for its children too).
    run = run_sampled(command(mode, rounds, count_steps), env={"OMP_NUM_THREADS": "1"})
    ranks = sorted(
        (json.loads(line[len("RESULT ") :]) for line in run.stdout.splitlines()
         if line.startswith("RESULT ")),
        key=lambda r: r["rank"],
    )  # fmt: skip
    if run.returncode != 0 or not ranks:
        return {"mode": mode, "failed": f"exit {run.returncode}: {run.stderr[-2000:]}"}
    first = ranks[0]
    ray = FEDSIM_MODES.get(mode, {}).get("run.backend") == "ray"
    procs = FEDSIM_MODES[mode]["run.ray_workers"] if ray else first["world"]  # that train
    train = [r["train_s"] for r in ranks]
    steps = [r["local_steps"] for r in ranks]
    train_s = sum(train) if None not in train else None
    local_steps = sum(steps) if None not in steps else None
    single = procs == 1 and not ray
    overhead = None
    if single and train_s:
        overhead = (first["s_per_round"] - train_s / rounds) / PER_ROUND * 1000
    return {
        "mode": mode,
        "processes": procs,
        "s_per_round": first["s_per_round"],
        "train_s_per_round": train_s / rounds if train_s is not None else None,
        "overhead_ms_per_client": overhead,
        "steps_per_client_round": local_steps / (rounds * PER_ROUND)
        if local_steps is not None else None,
        "wall_s": run.wall_s,
        "setup_s": first["setup_s"],
        "cpu_s": run.cpu_s,
        "cpu_by_process": run.cpu_by_name,
        "peak_rss_mb": run.peak_rss_mb,
        "accuracy": first.get("accuracy"),
        "torch": first["torch"],
        "ranks": ranks,
    }  # fmt: skip


def median_run(runs: list[dict]) -> dict:
    ok = sorted((r for r in runs if "failed" not in r), key=lambda r: r["s_per_round"])
    return ok[(len(ok) - 1) // 2] if ok else runs[-1]


def table(results: list[dict], rounds: int, count_steps: bool, repeat: int):
    from rich.table import Table

    ok = {r["mode"]: r for r in results if "failed" not in r}
    pfl, inproc = ok.get("pfl"), ok.get("fedsim-inprocess")
    pfl_best = min((ok[m] for m in PFL_MODES if m in ok), key=lambda r: r["wall_s"], default=None)
    title = (f"FedAvg MNIST, {CLIENTS} IID clients, {PER_ROUND}/round, batch {BATCH}, "
             f"{rounds} rounds (median of {repeat})")  # fmt: skip
    t = Table(title=title, box=None, padding=(0, 0, 0, 1), header_style="bold underline")
    cols = ["mode", "procs", "s/round", "x pfl", "x fedsim", "train s/round",
            "overhead ms/client", "set-up s", "wall s", "wall x pfl best", "CPU s", "RSS MB",
            "acc"]  # fmt: skip
    cols += ["steps/client/round"] if count_steps else []
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def overhead(r: dict) -> str:
        """Single process: measured in the run. Several: worker-seconds per round beyond the
        training arithmetic (the run's own, or fedsim in-process's when trained on Ray),
        per client, marked *: waiting and imbalance count as overhead too."""
        if r["overhead_ms_per_client"] is not None:
            return f"{r['overhead_ms_per_client']:.2f}"
        train = r["train_s_per_round"] or (inproc or {}).get("train_s_per_round")
        if not train:
            return "-"
        return f"{(r['processes'] * r['s_per_round'] - train) / PER_ROUND * 1000:.2f}*"

    for r in results:
        if "failed" in r:
            t.add_row(r["mode"], *["-"] * (len(cols) - 2), "failed")
            continue
        spr = r["s_per_round"]
        row = [
            r["mode"],
            str(r["processes"]),
            f"{spr:.3f}",
            num(spr / pfl["s_per_round"] if pfl else None, ".2f"),
            num(spr / inproc["s_per_round"] if inproc else None, ".2f"),
            num(r["train_s_per_round"], ".3f"),
            overhead(r),
            f"{r['setup_s']:.1f}",
            f"{r['wall_s']:.1f}",
            num(r["wall_s"] / pfl_best["wall_s"] if pfl_best else None, ".2f"),
            f"{r['cpu_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            num(r["accuracy"], ".3f"),
        ]
        row += [num(r["steps_per_client_round"], ".2f")] if count_steps else []
        t.add_row(*row)
    return t


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only", default=None, help="comma-separated modes (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs; median kept")
    parser.add_argument("--count-steps", action="store_true", help="optimiser steps per client")
    parser.add_argument("--worker", choices=[m for m in MODES if m not in PFL_MODES])
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rounds, args.count_steps)
        return
    from rich.console import Console

    console = Console(width=max(170, Console().width))
    if args.only:
        modes = args.only.split(",")
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            raise SystemExit(f"unknown modes {unknown}; known: {', '.join(MODES)}")
    else:
        modes = []
        for mode in MODES:
            why = unavailable(mode) if mode in FEDSIM_MODES else None
            if why:
                print(f"skipping {mode}: {why}", file=sys.stderr)
            else:
                modes.append(mode)
    if any(m in PFL_MODES for m in modes) and not (PFL_VENV / "bin" / "python").exists():
        raise SystemExit(f"{PFL_VENV} is missing: `make bench-peers` builds it")
    export_mnist()
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.repeat):  # interleaved, so background load hits every mode alike
        for mode in modes:
            print(f"running {mode} ({rep + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
            runs[mode].append(measure(mode, args.rounds, args.count_steps))
            if "failed" in runs[mode][-1]:
                print(f"{mode} failed: {runs[mode][-1]['failed']}", file=sys.stderr)
    results = [median_run(runs[m]) for m in modes]
    console.print(table(results, args.rounds, args.count_steps, args.repeat))
    console.print(
        "* several processes: (processes x s/round - training s/round) / clients, "
        "with fedsim in-process's training time for Ray (trained in the workers)"
    )
    console.print("CPU seconds by process (name: s), the run kept for each mode:")
    for r in results:
        if "failed" not in r:
            parts = [f"{name} {sec:.1f}" for name, sec in r["cpu_by_process"].items() if sec >= 0.1]
            console.print(f"  {r['mode']}: {', '.join(parts)}", markup=False, highlight=False)
    versions = sorted({r["torch"] for r in results if "torch" in r})
    console.print(f"torch: {', '.join(versions)}" + ("  (DIFFERENT)" if len(versions) > 1 else ""))
    (OUT / "peers.json").write_text(
        json.dumps(
            {
                "rounds": args.rounds,
                "repeat": args.repeat,
                "kept": "median s/round",
                "best": results,
                "all": runs,
            },
            indent=2,
        )  # fmt: skip
    )
    if any("failed" in r for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
