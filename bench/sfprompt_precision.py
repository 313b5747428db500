"""SFPrompt benchmark: what ``sfprompt.precision = "bf16"`` and ``client.fused`` save,
measured side by side.

Under bf16 the encoder blocks run under ``torch.autocast`` (bfloat16 matmuls, float32
weights, gradients, losses and traffic); ``client.fused`` steps AdamW with torch's fused
kernel instead of its default multi-tensor one. Three settings: fp32 with the default
AdamW (how the experiment ran before), bf16, and bf16 with the fused AdamW (how it runs
now, base.toml). Workload: each variant family of the converged grid, from its own
experiment file (experiments/sfprompt: SFPrompt, federated prompt tuning, full
fine-tuning, SplitFed-V1), 2 rounds of 2 clients of the 50 (about 185 Rotten Tomatoes
snippets each, 32 ids) and a 250-snippet server evaluation per round, one torch thread, in
this one process. Per family the three settings run back to back (``--reps`` times, in
that order), and the CPU time of this process per round is taken (less sensitive than
wall time to other work on the machine); the median is reported with the ratio, and the
last round's validation loss of each so the cost of the speed is visible too. A first,
untimed run loads the data and the encoder.
Results also go to bench/out/sfprompt_precision.json; ``--docs`` also rewrites the table in
docs/sfprompt.md (between its precision markers).
Usage: python bench/sfprompt_precision.py [--reps 1] [--rounds 2] [--docs]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
FAMILIES = {
    "sfprompt.toml": "SFPrompt",
    "prompt-tuning.toml": "federated prompt tuning",
    "full-finetune.toml": "federated full fine-tuning",
    "splitfed.toml": "SplitFed-V1",
}
OVERRIDES = [
    "clients.per_round=2", "eval.max_samples=250", "run.checkpoint_every=0",
    "clients.num_cpus=1", "data.test_split=validation",
]  # fmt: skip


SETTINGS = {  # name: (sfprompt.precision, client.fused)
    "fp32": ("fp32", "false"),
    "bf16": ("bf16", "false"),
    "bf16 + fused": ("bf16", "true"),
}


def one_run(file: str, setting: str, rounds: int, per_round: int = 2) -> tuple[float, float]:
    """(CPU seconds per round, last validation loss) of one run of ``file``."""
    from fedsim.config import load_experiment
    from fedsim.runner import run_experiment

    precision, fused = SETTINGS[setting]
    overrides = [
        *OVERRIDES, f"run.rounds={rounds}", f"sfprompt.precision={precision}",
        f"client.fused={fused}", f"clients.per_round={per_round}",
    ]  # fmt: skip
    exp = load_experiment(ROOT / "experiments" / "sfprompt" / file, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.process_time()
        run_dir, summary = run_experiment(exp, Path(tmp) / "run")
        seconds = time.process_time() - start
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    if summary["status"] != "completed":
        raise SystemExit(f"{file} at {setting}: run {summary['status']}")
    loss = [r["loss"] for r in rows if r["scope"] == "server-eval"][-1]
    return seconds / rounds, loss


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--docs", action="store_true", help="rewrite docs/sfprompt.md's table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("warming up (data, encoder) ...", file=sys.stderr, flush=True)
    one_run("sfprompt.toml", "fp32", 1, per_round=1)
    rows = []
    for file, name in FAMILIES.items():
        times: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
        losses: dict[str, float] = {}
        for _ in range(args.reps):
            for setting in SETTINGS:
                print(f"{name}, {setting} ...", file=sys.stderr, flush=True)
                seconds, losses[setting] = one_run(file, setting, args.rounds)
                times[setting].append(seconds)
        median = {setting: statistics.median(t) for setting, t in times.items()}
        rows.append({
            "family": name, "file": file,
            "cpu_s_per_round": median, "val_loss": losses,
            "speedup": {k: median["fp32"] / v for k, v in median.items()},
        })  # fmt: skip
    cpu = _cpu_name()
    title = (
        f"{args.rounds} rounds of 2 clients (~185 snippets each) + a 250-snippet evaluation "
        f"per round, 1 thread, CPU time per round, median of {args.reps}; {cpu}"
    )
    names = list(SETTINGS)
    table = [
        "| variant | "
        + " | ".join(f"{k}: CPU s / round" for k in names)
        + " | speed-up over fp32: "
        + ", ".join(names[1:])
        + " | validation loss after "
        + f"{args.rounds} rounds, "
        + " / ".join(names)
        + " |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    for r in rows:
        seconds = " | ".join(f"{r['cpu_s_per_round'][k]:.1f}" for k in names)
        speed = ", ".join(f"{r['speedup'][k]:.2f}x" for k in names[1:])
        loss = " / ".join(f"{r['val_loss'][k]:.4f}" for k in names)
        table.append(f"| {r['family']} | {seconds} | {speed} | {loss} |")
    text = "\n".join([title + ":", "", *table])
    print("\n" + text)
    if args.docs:
        from fedsim.results.readme import replace_marked_block

        doc = ROOT / "docs" / "sfprompt.md"
        replace_marked_block(doc, "<!-- precision:start -->", "<!-- precision:end -->", text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sfprompt_precision.json").write_text(json.dumps(rows, indent=2))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
