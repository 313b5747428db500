"""Distillation benchmark: what server-side synthesis costs, per client and per round.

Workload: one client's update on CIFAR-10 (ConvNet, 10 classes, ipc images per class),
synthesised the ways ``[distillation]`` allows, each case in a fresh process:
  first_order / unrolled     the memory-flat gradient vs exact backprop through N steps
  first_order+keep           first_order with step_graphs = "keep" (no replayed steps)
  pixel / generator          optimising pixels vs fedsim's conditional generator's latents
Measured: seconds per synthesis iteration and per client (``iterations`` of them), and the
peak memory synthesis adds (RSS growth on CPU; ``torch.cuda.max_memory_allocated`` on a GPU)
while syn_steps grows (memory should stay flat for first_order, grow for unrolled).
Then a whole round as the experiment's grid runs it (MNIST, ConvNet width 16, 10 clients of
3 classes x ipc 10, syn_steps 10): seconds per client-round before the speed work (one
process, step_graphs = "replay") and after it (step_graphs = "keep", and the clients
synthesised side by side by ``synthesis_workers`` processes, one per core), all in one run.
Results also go to bench/out/distillation.json.
Usage: python bench/distillation_synthesis.py [--iterations N] [--device cpu|cuda]
       [--round-iterations N] [--clients K] [--round-only]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
CASES = [
    ("first_order", "pixel", 10),
    ("first_order+keep", "pixel", 10),
    ("unrolled", "pixel", 10),
    ("first_order", "pixel", 40),
    ("first_order+keep", "pixel", 40),
    ("unrolled", "pixel", 40),
    ("first_order", "generator", 10),
    ("unrolled", "generator", 10),
]


def one_case(gradient: str, space: str, steps: int, iterations: int, device: str) -> dict:
    """Runs in its own process (peak memory is per process)."""
    import torch

    from fedsim.config.schema import ModelConfig
    from fedsim.models import build_model
    from fedsim_methods.distillation.config import DistillationConfig
    from fedsim_methods.distillation.generators import ConditionalDecoder, PixelSpace, freeze
    from fedsim_methods.distillation.synthesis import synthesise

    torch.set_num_threads(1)
    dev = torch.device(device)
    shape = (3, 32, 32)
    model = build_model(ModelConfig(name="convnet", width=32, depth=3), shape, 10, 0).to(dev)
    start = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    target = [p + 0.01 * torch.randn(p.shape, generator=gen).to(dev) for p in start]
    labels = torch.arange(10).repeat_interleave(10).to(dev)
    image_gen = PixelSpace(shape) if space == "pixel" else freeze(ConditionalDecoder(32, 10, shape))
    image_gen = image_gen.to(dev)
    mode, _, graphs = gradient.partition("+")  # "first_order+keep": step_graphs = "keep"
    cfg = DistillationConfig(ipc=10, syn_steps=steps, iterations=iterations, gradient=mode,
                             step_graphs="keep" if graphs == "keep" else "replay")  # fmt: skip
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    synthesise(model, start, target, labels, image_gen, cfg, gen)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    seconds = time.perf_counter() - t0
    return {
        "gradient": gradient,
        "space": space,
        "syn_steps": steps,
        "images": len(labels),
        "iterations": iterations,
        "s_per_iteration": seconds / iterations,
        "s_per_client": seconds,
        "peak_mb": peak / 2**20,
        "device": device,
    }


ROUND_CASES = [  # (step_graphs, synthesis_workers; 0 = one per core)
    ("replay", 1),
    ("keep", 1),
    ("keep", 0),
]


def one_round(step_graphs: str, workers: int, iterations: int, clients: int) -> dict:
    """A round of ``clients`` syntheses as the strategy runs them (its own process)."""
    import os

    import torch

    from fedsim.config.schema import ModelConfig
    from fedsim.models import build_model
    from fedsim_methods.distillation.config import DistillationConfig
    from fedsim_methods.distillation.generators import PixelSpace
    from fedsim_methods.distillation.parallel import SynthesisJob, synthesise_all

    workers = workers or os.cpu_count() or 1
    shape = (1, 28, 28)
    model = build_model(ModelConfig(name="convnet", width=16, depth=3), shape, 10, 0)
    start = [p.detach().clone() for p in model.parameters()]
    jobs = []
    for pid in range(clients):
        gen = torch.Generator().manual_seed(pid)
        target = [p + 0.01 * torch.randn(p.shape, generator=gen) for p in start]
        classes = torch.randperm(10, generator=gen)[:3]
        jobs.append(SynthesisJob(pid, start, target, classes.repeat_interleave(10), (0, 1, pid)))
    cfg = DistillationConfig(ipc=10, syn_steps=10, iterations=iterations,
                             step_graphs=step_graphs, synthesis_workers=workers)  # fmt: skip
    t0 = time.perf_counter()
    for _ in synthesise_all(model, PixelSpace(shape), cfg, jobs):
        pass
    seconds = time.perf_counter() - t0
    return {
        "step_graphs": step_graphs,
        "workers": workers,
        "clients": clients,
        "iterations": iterations,
        "s_per_round": seconds,
        "s_per_client_round": seconds / clients,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--round-case", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=10, help="clients in the round part")
    parser.add_argument(
        "--round-iterations", type=int, default=15,
        help="iterations per client in the round part (enough to outweigh starting workers)",
    )  # fmt: skip
    parser.add_argument("--round-only", action="store_true", help="only the round part")
    args = parser.parse_args()
    if args.round_case:
        graphs, workers = args.round_case.split(",")
        print(json.dumps(one_round(graphs, int(workers), args.round_iterations, args.clients)))
        return
    if args.case:
        gradient, space, steps = args.case.split(",")
        print(json.dumps(one_case(gradient, space, int(steps), args.iterations, args.device)))
        return
    rows = []
    for gradient, space, steps in [] if args.round_only else CASES:
        print(f"running {gradient} {space} syn_steps={steps} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--case", f"{gradient},{space},{steps}",
             "--iterations", str(args.iterations), "--device", args.device],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if rows:
        print(f"\nDistillation synthesis, CIFAR-10 ConvNet-32, 100 images, {args.device}, 1 thread")
        print(f"{'gradient':<17}{'space':<11}{'N':>4}{'s/iter':>9}{'s/client':>10}{'peak MB':>9}")
        for r in rows:
            print(
                f"{r['gradient']:<17}{r['space']:<11}{r['syn_steps']:>4}"
                f"{r['s_per_iteration']:>9.2f}{r['s_per_client']:>10.1f}{r['peak_mb']:>9.0f}"
            )
        print("s/client is for the benchmark's iterations; a run's cost scales with its own.")
    rounds = []
    for graphs, workers in ROUND_CASES:
        print(f"running a round: {graphs}, workers {workers or 'per core'} ...", file=sys.stderr,
              flush=True)  # fmt: skip
        done = subprocess.run(
            [sys.executable, __file__, "--round-case", f"{graphs},{workers}",
             "--round-iterations", str(args.round_iterations), "--clients", str(args.clients)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rounds.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rounds[0]["s_per_client_round"]
    print(f"\nA round: MNIST ConvNet-16, {args.clients} clients x 30 images, syn_steps 10, "
          f"{args.round_iterations} iterations, cpu, 1 thread per process")  # fmt: skip
    print(f"{'step_graphs':<13}{'workers':>8}{'s/round':>9}{'s/client-round':>16}{'speed-up':>10}")
    for r in rounds:
        print(
            f"{r['step_graphs']:<13}{r['workers']:>8}{r['s_per_round']:>9.2f}"
            f"{r['s_per_client_round']:>16.3f}{base / r['s_per_client_round']:>9.2f}x"
        )
    print("Before the speed work: the first row; after it: the last (one worker per core,")
    print("each started once per round: about 3 s here, next to minutes at a run's settings).")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "distillation.json").write_text(json.dumps({"client": rows, "round": rounds}, indent=2))


if __name__ == "__main__":
    main()
