"""SFPrompt benchmark: what counting the client's FLOPs costs, measured side by side.

Every SFPrompt-family client counts the FLOPs of what it runs (``client-flops``, the
paper's compute claim). torch's ``FlopCounterMode`` also attributes each op to the modules
it runs in, through hooks on every module call and backward pass; fedsim's ``FlopMeter``
sums the same per-op formulas without that bookkeeping. Workload: one local step of
federated prompt tuning on MiniLM-L6 (micro-batch 16, 32 ids + 10 prompts, forward and
backward to the prompts through the frozen encoder), one torch thread, CPU time of this
process (less sensitive than wall time to other work on the machine), the three ways
interleaved over ``--reps`` repetitions; the median per step is reported, and the ratio to
the uncounted step. Token ids are seeded random ones: FLOPs and time depend on the shapes
only. Results also go to bench/out/sfprompt_flop_meter.json.
Usage: python bench/sfprompt_flop_meter.py [--reps 6] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
BATCH, TOKENS, PROMPTS = 16, 32, 10


def main() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from fedsim_methods.sfprompt.accounting import FlopMeter
    from fedsim_methods.sfprompt.backbone import load_backbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4, help="steps per repetition")
    args = parser.parse_args()
    torch.set_num_threads(1)
    backbone = load_backbone("minilm-l6")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (BATCH, TOKENS), generator=gen)
    mask = torch.ones(BATCH, TOKENS + PROMPTS, dtype=torch.bool)
    prompts = torch.zeros(1, PROMPTS, backbone.config.hidden_size, requires_grad=True)

    def step() -> None:
        embeds = torch.cat(
            [prompts.expand(BATCH, -1, -1), backbone.embeddings.word_embeddings(ids)], 1
        )
        hidden = backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        hidden.mean().backward()

    def uncounted() -> None:
        step()

    def flop_counter_mode() -> None:
        with FlopCounterMode(display=False):
            step()

    def flop_meter() -> None:
        with FlopMeter().measure():
            step()

    ways = {
        "uncounted": uncounted,
        "FlopCounterMode": flop_counter_mode,
        "FlopMeter": flop_meter,
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    step()  # warm-up
    for _ in range(args.reps):
        for name, way in ways.items():
            start = time.process_time()
            for _ in range(args.steps):
                way()
            seconds[name].append((time.process_time() - start) / args.steps)
    base = statistics.median(seconds["uncounted"])
    rows = [
        {
            "way": name,
            "s_per_step": round(statistics.median(values), 4),
            "vs_uncounted": round(statistics.median(values) / base, 3),
        }
        for name, values in seconds.items()
    ]
    print("| counting | CPU s / step (median) | vs uncounted |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['way']} | {row['s_per_step']:.3f} | {row['vs_uncounted']:.2f}x |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sfprompt_flop_meter.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
