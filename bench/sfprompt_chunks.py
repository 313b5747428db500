"""SFPrompt benchmark: what ``sfprompt.chunk_size`` trades, measured side by side.

One exchange of split training carries a chunk of ``chunk_size`` micro-batches and ends in
one optimiser step, so larger chunks mean fewer message round trips (each costs seconds on
a real SuperLink, ../shared/FLOWER.md) but fewer optimiser steps per epoch and more
activations held on both sides at once. Workload: MiniLM-L6 split 1 | 4 | 1 with 10
prompts, Rotten Tomatoes (32 ids), 4 clients of 200 snippets, all in every round, the
hardest half kept (100 each, micro-batches of 16: 7 per epoch), 3 rounds, 1 thread; each
chunk size in a fresh process (peak memory is per process).

Measured per chunk size: round trips per round (every message type, all clients in
lockstep), optimiser steps per client and round, bytes per client and round, in-process
seconds per round, peak RSS of the process, test accuracy after the rounds. Modelled:
seconds per round on a real deployment = in-process seconds + round trips x RTT (7.5 s,
FLOWER.md's measured SuperNode round trip; ``--rtt`` to change it).
Results also go to bench/out/sfprompt_chunks.json; ``--docs`` also rewrites the table in
docs/sfprompt.md (between its chunks markers).
Usage: python bench/sfprompt_chunks.py [--chunks 1 2 4 8] [--rounds 3] [--rtt 7.5] [--docs]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
OVERRIDES = [
    "data.partitioner='iid'", "data.max_train_samples=800", "clients.num=4",
    "clients.per_round=4", "eval.max_samples=300", "run.checkpoint_every=0",
    "clients.num_cpus=1",
]  # fmt: skip


def one_case(chunk: int, rounds: int) -> dict:
    """Runs in its own process: one SFPrompt run at this chunk size."""
    from fedsim.config import load_experiment
    from fedsim.runner import run_experiment

    overrides = [*OVERRIDES, f"sfprompt.chunk_size={chunk}", f"run.rounds={rounds}"]
    exp = load_experiment(ROOT / "experiments" / "sfprompt" / "sfprompt.toml", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_dir, summary = run_experiment(exp, Path(tmp) / "run")
        seconds = time.perf_counter() - start
        with open(run_dir / "comm.csv", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    if summary["status"] != "completed":
        raise SystemExit(f"chunk_size {chunk}: run {summary['status']}")
    clients = exp.clients.per_round
    up = [r for r in rows if r["direction"] == "up"]  # one row per message and client
    steps = sum(1 for r in up if r["stage"] == "train.split-gradients")
    accuracy = [m["accuracy"] for m in metrics if m["scope"] == "server-eval"][-1]
    return {
        "chunk_size": chunk,
        "round_trips_per_round": len(up) / rounds / clients,  # the clients go in lockstep
        "steps_per_client_round": steps / rounds / clients,
        "mb_per_client_round": sum(int(r["bytes"]) for r in rows) / rounds / clients / 1e6,
        "s_per_round": seconds / rounds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "accuracy": accuracy,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rtt", type=float, default=7.5, help="seconds per round trip")
    parser.add_argument("--docs", action="store_true", help="rewrite docs/sfprompt.md's table")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case, args.rounds)))
        return
    rows = []
    for chunk in args.chunks:
        print(f"running chunk_size={chunk} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--case", str(chunk), "--rounds", str(args.rounds)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["deployed_s_per_round"] = row["s_per_round"] + args.rtt * row["round_trips_per_round"]
        rows.append(row)
    title = (
        f"MiniLM-L6 split 1 | 4 | 1, 4 clients x ~100 kept snippets, micro-batch 16, "
        f"{args.rounds} rounds, 1 CPU thread; deployed = in-process + {args.rtt} s x round trips"
    )
    table = [
        "| chunk_size | round trips per round | optimiser steps per client and round "
        "| MB per client and round | in-process s per round | deployed s per round (modelled) "
        f"| peak RSS MB | accuracy after {args.rounds} rounds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['chunk_size']} | {r['round_trips_per_round']:.0f} "
            f"| {r['steps_per_client_round']:.0f} | {r['mb_per_client_round']:.1f} "
            f"| {r['s_per_round']:.1f} | {r['deployed_s_per_round']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {r['accuracy']:.3f} |"
        )
    text = "\n".join([title + ":", "", *table])
    print("\n" + text)
    if args.docs:
        from fedsim.results.readme import replace_marked_block

        doc = ROOT / "docs" / "sfprompt.md"
        replace_marked_block(doc, "<!-- chunks:start -->", "<!-- chunks:end -->", text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sfprompt_chunks.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
