"""FedIT client training throughput: fedsim's client vs a bare peft loop on the same batches.

Both train SmolLM2-135M-Instruct + LoRA (r 8 on q,v) on one client's chatterbot records
with the same micro-batches in the same order (fedsim's seeded permutation, collated the
same way), AdamW with linear decay. Each measurement runs in its own process:
  fedsim  one train message through fedsim's ClientApp (adapter in, training, adapter out)
  bare    the same arithmetic written directly against transformers + peft (HF's own loss)
Timed: the training call only, after a one-step warm-up (model load, tokenisation).
Reported: non-padding tokens per second, the ratio bare / fedsim, peak RSS (and peak GPU
memory on CUDA) of the process = the memory one client needs.
Usage: python bench/fedit_throughput.py [--steps 10] [--repeats 2] [--micro 8] [--max-length 128]
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

TOML = """
method = "fedit"
[run]
name = "bench-fedit"
seed = 0
rounds = 1
[data]
dataset = "chatterbot"
[client]
optimizer = "adamw"
lr = 0.001
[clients]
num = 6
per_round = 1
num_cpus = {threads}  # fedsim pins torch threads per client call; the bare loop uses all
[lora]
r = 8
alpha = 16.0
target_modules = ["q_proj", "v_proj"]
[fedit]
max_length = {max_length}
micro_batch_size = {micro}
max_steps = {steps}
train_on = "all"
"""
PID = 0  # the client whose records are trained on


def experiment(steps: int, micro: int, max_length: int):
    import torch

    from fedsim.config.load import from_toml

    threads = torch.get_num_threads()
    return from_toml(TOML.format(steps=steps, micro=micro, max_length=max_length, threads=threads))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_peak_mb() -> float | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def run_fedsim(steps: int, micro: int, max_length: int) -> dict:
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from fedsim.backends.inprocess import InProcessGrid
    from fedsim.client_app import client_app
    from fedsim.config.load import to_toml
    from fedsim.config.wire import CONFIG_KEY
    from fedsim_methods.strategies.fedit.server import initial_arrays

    grid = InProcessGrid(client_app, 6, seed=0)  # fedsim's own in-process delivery
    node = next(n for n, c in grid.contexts.items() if c.node_config["partition-id"] == PID)

    def send(exp) -> Message:
        config = ConfigRecord({CONFIG_KEY: to_toml(exp), "server-round": 1})
        content = RecordDict({"arrays": initial_arrays(exp), "config": config})
        msg = Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
        start = time.perf_counter()
        (reply,) = grid.send_and_receive([msg])
        send.seconds = time.perf_counter() - start
        if reply.has_error():
            raise RuntimeError(reply.error.reason)
        return reply

    send(experiment(1, micro, max_length))  # warm-up: load the model, tokenise
    reply = send(experiment(steps, micro, max_length))
    metrics = reply.content["metrics"]
    return {
        "mode": "fedsim",
        "seconds": send.seconds,
        "tokens": int(metrics["train_tokens"]),
        "loss": float(metrics["train_loss"]),
    }


def run_bare(steps: int, micro: int, max_length: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from fedsim.assets import fetch
    from fedsim.seeding import LOCAL_SHUFFLE, derive_seed, torch_generator
    from fedsim_methods.fedit.adapter import initial_adapter
    from fedsim_methods.fedit.cache import data_of
    from fedsim_methods.fedit.config import fedit_of
    from fedsim_methods.fedit.model import lora_model
    from fedsim_methods.fedit.prompts import collate, encode
    from fedsim_methods.fedit.seeds import LORA_DROPOUT
    from fedsim_methods.fedit.train import step_groups

    exp = experiment(steps, micro, max_length)
    cfg = fedit_of(exp)
    # the same records, tokens, initial adapter and batch order as fedsim's client
    records = data_of(exp).client(PID)
    tokenizer = lora_model(cfg, exp.lora, torch.device("cpu")).tokenizer
    examples = [encode(r, tokenizer, "alpaca", max_length, "all") for r in records]
    init = initial_adapter(lora_model(cfg, exp.lora, torch.device("cpu")), exp.run.seed)
    from fedsim_methods.fedit.model import clear_cache

    clear_cache()  # only the bare model below stays in memory
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = AutoModelForCausalLM.from_pretrained(fetch("smollm2-135m-instruct"), dtype=torch.float32)
    model = get_peft_model(
        base,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
        ),
    ).to(device)
    state = model.state_dict()
    with torch.no_grad():
        for key, value in init.items():
            name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            )
            state[name].copy_(torch.from_numpy(value))
    pad = tokenizer.pad_token_id

    def train(n_steps: int) -> tuple[float, int, float]:
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / n_steps)
        gen = torch_generator(exp.run.seed, 1, PID, LOCAL_SHUFFLE)
        model.train()
        tokens, losses = 0, []
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(exp.run.seed, 1, PID, LORA_DROPOUT))
            for group in step_groups(
                examples, cfg.model_copy(update={"max_steps": n_steps}), n_steps, gen
            ):
                batch = collate(group[0], pad)
                tokens += int(batch["attention_mask"].sum())
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = model(**batch).loss
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.detach())
        seconds = time.perf_counter() - start
        return seconds, tokens, float(torch.stack(losses).mean())

    train(1)  # warm-up
    with torch.no_grad():  # back to the initial adapter for the timed run
        for key, value in init.items():
            name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            )
            state[name].copy_(torch.from_numpy(value))
    seconds, tokens, loss = train(steps)
    return {"mode": "bare", "seconds": seconds, "tokens": tokens, "loss": loss}


def worker(mode: str, steps: int, micro: int, max_length: int) -> None:
    import torch

    torch.set_num_threads(torch.get_num_threads())
    out = (run_fedsim if mode == "fedsim" else run_bare)(steps, micro, max_length)
    out["peak_rss_mb"] = peak_rss_mb()
    out["gpu_peak_mb"] = gpu_peak_mb()
    print("RESULT " + json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per mode; best kept")
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--worker", choices=["fedsim", "bare"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.micro, args.max_length)
        return
    results: dict[str, list[dict]] = {"fedsim": [], "bare": []}
    for _ in range(args.repeats):
        for mode in ("bare", "fedsim"):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                mode,
                "--steps",
                str(args.steps),
                "--micro",
                str(args.micro),
                "--max-length",
                str(args.max_length),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            results[mode].append(json.loads(line[7:]))
            print(f"  {mode}: {results[mode][-1]}", flush=True)
    best = {m: min(rs, key=lambda r: r["seconds"]) for m, rs in results.items()}
    print(
        f"\nFedIT client throughput: SmolLM2-135M + LoRA r8 (q,v), {args.steps} steps of "
        f"micro-batch {args.micro}, max_length {args.max_length}; best of {args.repeats}"
    )
    print(
        f"{'mode':8} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'vs bare':>8} "
        f"{'mean loss':>9} {'peak RSS MB':>11} {'peak GPU MB':>11}"
    )
    bare_tps = best["bare"]["tokens"] / best["bare"]["seconds"]
    for mode in ("bare", "fedsim"):
        r = best[mode]
        tps = r["tokens"] / r["seconds"]
        gpu = "-" if r["gpu_peak_mb"] is None else f"{r['gpu_peak_mb']:.0f}"
        print(
            f"{mode:8} {r['tokens']:>8} {r['seconds']:>8.2f} {tps:>9.1f} "
            f"{bare_tps / tps:>7.3f}x {r['loss']:>9.4f} {r['peak_rss_mb']:>11.0f} {gpu:>11}"
        )


if __name__ == "__main__":
    main()
