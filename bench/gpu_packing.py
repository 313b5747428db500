"""GPU packing: FedIT with P clients per round on one GPU, one client at a time vs P at once.

Workload: FedIT (SmolLM2-135M-Instruct + LoRA r 8 on q,v, AdamW), chatterbot records split
IID over 16 clients, P clients per round (P = 4 and 8), ``--steps`` local steps of
micro-batch 8 x 128 tokens, ``--rounds`` rounds, no server evaluation. Modes, each a
separate process (fedsim's ``run_experiment``), for each P:
  one-P      in-process backend: the round's clients one after another on the GPU
             (``clients.num_gpus = 1``)
  ray1-P     Ray backend, one worker holding the whole GPU: Ray's own cost, no packing
  packed-P   Ray backend, P workers on the one GPU (``clients.num_gpus = 1/P``, each worker
             capped at that share of the GPU's memory): the round's clients at once
Measured: seconds per round after round 1 (round 1 pays CUDA's and the kernels' warm-up),
training samples per second, peak GPU memory in use (nvidia-smi, above the idle reading),
peak RSS of the process tree, and whether ``metrics.jsonl`` has the bytes of ``one-P``.

``--model random`` (or ``random:FOLDER``): the base model is SmolLM2-135M's architecture
(the cached asset's config and tokenizer, or FOLDER's) with seeded random weights
(``fedsim_methods.fedit.random_model``), for machines where the pretrained weights cannot be brought
(the device machines here take at most 64 MiB). Speed and memory do not depend on the
weights' values; the losses do. ``--cpu``: a rehearsal of the script on CPUs
(``clients.num_gpus = 0``, the same pools of workers), nothing measured that matters.

Results: a table, and bench/out/gpu_packing.json (or ``--out``).
Usage: python bench/gpu_packing.py [--sizes 4,8] [--rounds 3] [--steps 10] [--model random]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
MICRO, MAX_LENGTH, CLIENTS = 8, 128, 16


def experiment(mode: str, rounds: int, steps: int, model: str, cpu: bool):
    """The FedIT experiment of ``mode`` ("one-4", "ray1-8", "packed-8"...)."""
    from fedsim.config import load_experiment

    kind, size = mode.split("-")
    per_round = int(size)
    workers = {"one": 0, "ray1": 1, "packed": per_round}[kind]
    return load_experiment(
        ROOT / "experiments" / "fedit" / "fedit_chatterbot.toml",
        {
            "run.name": f"gpu-packing-{mode}",
            "run.rounds": rounds,
            "run.checkpoint_every": 0,
            "run.backend": "inprocess" if kind == "one" else "ray",
            "run.ray_workers": workers,
            "clients.num": CLIENTS,
            "clients.per_round": per_round,
            "clients.num_gpus": 0.0 if cpu else 1.0 / max(workers, 1),
            "clients.num_cpus": 1.0,  # one thread per client call, in every mode
            "eval.server": False,
            "fedit.base_model": model,
            "fedit.partition": "iid",
            "fedit.max_steps": steps,
            "fedit.micro_batch_size": MICRO,
            "fedit.max_length": MAX_LENGTH,
            "fedit.allow_tf32": True,
        },
    )


def base_model(spec: str, folder: Path) -> str:
    """``--model``: a model asset or folder as it is; ``random`` (the cached SmolLM2 asset's
    architecture) or ``random:FOLDER`` (a folder's config and tokenizer) with seeded random
    weights, written to ``folder``."""
    from fedsim.assets import fetch
    from fedsim_methods.fedit.random_model import random_weights_copy

    if spec != "random" and not spec.startswith("random:"):
        return spec
    source = Path(spec[7:]) if spec.startswith("random:") else fetch("smollm2-135m-instruct")
    return str(random_weights_copy(source, folder))


# -- one mode, in its own process ---------------------------------------------------------
def worker(mode: str, rounds: int, steps: int, model: str, cpu: bool, run_dir: Path) -> None:
    from fedsim.federation.callbacks import Callback
    from fedsim.runner import run_experiment

    starts: dict[int, float] = {}
    ends: dict[int, float] = {}

    class RoundClock(Callback):
        def on_round_start(self, run, server_round) -> None:
            starts[server_round] = time.perf_counter()

        def on_round_end(self, run, server_round, metrics) -> None:
            if server_round in starts:
                ends[server_round] = time.perf_counter()

    exp = experiment(mode, rounds, steps, model, cpu)
    _, summary = run_experiment(exp, run_dir, callbacks=[RoundClock()])
    if summary["status"] != "completed":
        raise SystemExit(f"{mode}: run {summary['status']}: {summary.get('error')}")
    timed = [ends[r] - starts[r] for r in sorted(ends) if r > 1] or [ends[1] - starts[1]]
    per_round = sum(timed) / len(timed)
    samples = exp.clients.per_round * steps * MICRO * exp.fedit.gradient_accumulation
    train = summary["final"].get("train", {})
    print("RESULT " + json.dumps({
        "s_per_round": per_round,
        "samples_per_s": samples / per_round,
        "round_1_s": ends[1] - starts[1],
        "train_loss": train.get("train_loss"),
        "failures": summary["client_failures"],
    }))  # fmt: skip


# -- the driver ------------------------------------------------------------------------------
def measure(mode: str, args: argparse.Namespace, model: str, runs: Path) -> dict:
    from process_peaks import run_sampled

    cmd = [sys.executable, __file__, "--worker", mode, "--rounds", str(args.rounds),
           "--steps", str(args.steps), "--model", model, "--run-dir", str(runs / mode)]  # fmt: skip
    run = run_sampled(cmd + (["--cpu"] if args.cpu else []), interval=0.1)
    if run.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{run.stderr[-3000:]}")
    result = json.loads(next(ln for ln in run.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    return {"mode": mode, "wall_s": run.wall_s, "peak_rss_mb": run.peak_rss_mb,
            "peak_gpu_mb": run.peak_gpu_mb, **result}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="4,8", help="clients per round, comma-separated")
    parser.add_argument("--modes", default="one,ray1,packed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="local steps per client")
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="an asset, a folder, random[:FOLDER]"
    )
    parser.add_argument("--cpu", action="store_true", help="rehearse on CPUs (no GPU needed)")
    parser.add_argument("--out", type=Path, default=OUT / "gpu_packing.json")
    parser.add_argument("--worker")
    parser.add_argument("--run-dir", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rounds, args.steps, args.model, args.cpu, args.run_dir)
        return
    import torch
    from rich.console import Console
    from rich.table import Table

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run on a GPU machine, or --cpu for a rehearsal")
    runs = OUT / "gpu-packing-runs"
    shutil.rmtree(runs, ignore_errors=True)
    model = base_model(args.model, runs / "random-model")
    results = []
    for size in args.sizes.split(","):
        for kind in args.modes.split(","):
            mode = f"{kind}-{size}"
            print(f"running {mode} ...", file=sys.stderr, flush=True)
            results.append(measure(mode, args, model, runs))
            reference = runs / f"one-{size}" / "metrics.jsonl"
            mine = (runs / mode / "metrics.jsonl").read_bytes()
            results[-1]["same_bytes_as_one"] = (
                mine == reference.read_bytes() if reference.exists() else None
            )
    device = "cpu (rehearsal)" if args.cpu else torch.cuda.get_device_name(0)
    table = Table(title=f"FedIT packing on {device}: {args.steps} steps x {MICRO} x {MAX_LENGTH}"
                  f" tokens per client, {args.rounds} rounds, model {args.model}",
                  box=None, padding=(0, 0, 0, 1), header_style="bold underline")  # fmt: skip
    for col in ("mode", "s/round", "samples/s", "x one", "round 1 s", "wall s", "GPU MB",
                "RSS MB", "same bytes"):  # fmt: skip
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        one = next((x for x in results if x["mode"] == "one-" + r["mode"].split("-")[1]), None)
        table.add_row(
            r["mode"],
            f"{r['s_per_round']:.2f}",
            f"{r['samples_per_s']:.0f}",
            f"{r['samples_per_s'] / one['samples_per_s']:.2f}" if one else "-",
            f"{r['round_1_s']:.1f}",
            f"{r['wall_s']:.1f}",
            "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
            {True: "yes", False: "no", None: "-"}[r["same_bytes_as_one"]],
        )
    Console(width=max(110, Console().width)).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device, "args": vars(args) | {"out": str(args.out)},
                                    "results": results}, indent=2, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
