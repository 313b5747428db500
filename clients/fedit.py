"""FedIT client: LoRA instruction tuning of a causal LM on the client's instruction records.

Each train message carries the global adapter (plus, in exact mode, one dense residual per
adapted layer); the client sets it, runs one local LoRA run (micro-batches, gradient
accumulation, linear LR decay) and replies with its adapter only, in the wire dtype, with
``num-examples`` and ``train_loss``. The base model is loaded once per process
(``fedsim.llm.model``) on the GPU the client was given, else the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedsim.config.fedit import fedit_of, lora_of
from fedsim.config.schema import Experiment
from fedsim.data.instructions import FederatedInstructions, federated_instructions
from fedsim.llm.adapter import (
    adapter_arrays,
    from_arrays,
    initial_adapter,
    is_residual,
    load_global,
    to_arrays,
)
from fedsim.llm.evaluate import generate, generation_scores, heldout_loss
from fedsim.llm.generate import ADAPTER_DIR, RESIDUAL_FILE
from fedsim.llm.model import LoraLM, lora_model
from fedsim.llm.prompts import Example, encode, encode_prompt
from fedsim.llm.train import train_lora
from fedsim.seeding import LOCAL_SHUFFLE, LORA_DROPOUT, derive_seed, torch_generator
from fedsim.training import pick_device

_EXAMPLES: dict[tuple, LazyExamples] = {}


def data_of(exp: Experiment) -> FederatedInstructions:
    return federated_instructions(exp.data, fedit_of(exp), exp.clients.num, exp.run.seed)


def lm_of(exp: Experiment, device: torch.device | None = None) -> LoraLM:
    device = device if device is not None else pick_device(exp.clients.num_gpus)
    return lora_model(fedit_of(exp), lora_of(exp), device)


class LazyExamples(Sequence):
    """A client's records, tokenised on first access and kept: a local run of ``max_steps``
    batches tokenises only the records it draws (a centralised client holding 190k Natural
    Instructions records started in minutes instead of seconds when encoding all up front)."""

    def __init__(self, records, encode_one: Callable[[object], Example]) -> None:
        self._records, self._encode = records, encode_one
        self._done: dict[int, Example] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # negative indices, and IndexError past the end
        if index not in self._done:
            self._done[index] = self._encode(self._records[index])
        return self._done[index]


def _examples(exp: Experiment, lm: LoraLM, which: str, train_on: str) -> LazyExamples:
    """Tokenised records of one client (``which`` = partition id) or of the test set."""
    cfg = fedit_of(exp)
    key = (
        exp.data.model_dump_json(),
        cfg.model_dump_json(),
        exp.clients.num,
        exp.run.seed,
        lm.source,
        which,
        train_on,
    )
    if key not in _EXAMPLES:
        data = data_of(exp)
        records = data.test if which == "test" else data.client(int(which))
        _EXAMPLES[key] = LazyExamples(
            records, lambda r: encode(r, lm.tokenizer, cfg.template, cfg.max_length, train_on)
        )
    return _EXAMPLES[key]


class _DropoutSeed:
    """Seeds LoRA dropout from (seed, round, client) without touching the global RNG state."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed, self.device = seed, device

    def __enter__(self):
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def train(msg: Message, context: Context, exp: Experiment) -> Message:
    pid = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    cfg = fedit_of(exp)
    lm = lm_of(exp)
    load_global(lm, msg.content["arrays"])
    examples = _examples(exp, lm, str(pid), cfg.train_on)
    generator = torch_generator(exp.run.seed, server_round, pid, LOCAL_SHUFFLE)
    dropout_seed = derive_seed(exp.run.seed, server_round, pid, LORA_DROPOUT)
    with _DropoutSeed(dropout_seed, lm.device):
        run = train_lora(
            lm.model, examples, cfg, exp.client, generator, lm.device, lm.tokenizer.pad_token_id
        )
    metrics = {
        "train_loss": run.loss,
        "train_first_loss": run.first_loss,
        "train_steps": run.steps,
        "train_tokens": run.tokens,
        "num-examples": len(examples),
    }
    content = RecordDict(
        {"arrays": adapter_arrays(lm, cfg.adapter_dtype), "metrics": MetricRecord(metrics)}
    )
    return Message(content, reply_to=msg)


def evaluate(msg: Message, context: Context, exp: Experiment) -> Message:
    """Client-side evaluation: the global adapter's response loss on the client's records."""
    pid = int(context.node_config["partition-id"])
    cfg = fedit_of(exp)
    lm = lm_of(exp)
    load_global(lm, msg.content["arrays"])
    examples = _examples(exp, lm, str(pid), "response")
    result = heldout_loss(lm.model, examples, cfg.eval_batch_size, lm.device, _pad(lm))
    metrics = {"eval_loss": result["loss"], "num-examples": len(examples)}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _pad(lm: LoraLM) -> int:
    return int(lm.tokenizer.pad_token_id)


def initial_arrays(exp: Experiment) -> ArrayRecord:
    """peft's default LoRA init from (seed, LORA_INIT); zero residuals in exact mode."""
    cfg = fedit_of(exp)
    state = initial_adapter(lm_of(exp), exp.run.seed, with_residual=cfg.aggregation == "exact")
    return to_arrays(state, "fp32")


def generation_round(exp: Experiment, server_round: int) -> bool:
    every = fedit_of(exp).eval_generate_every
    if every == 0:
        return False
    return server_round in (0, exp.run.rounds) or server_round % every == 0


def server_evaluator(exp: Experiment):
    """Held-out loss and perplexity every evaluation; ROUGE-L and exact match (greedy,
    bounded) on ``eval_generate_per_category`` records per category every
    ``eval_generate_every`` rounds, round 0 and the last round."""
    cfg = fedit_of(exp)
    data = data_of(exp)
    lm = lm_of(exp)
    tests = _examples(exp, lm, "test", "response")
    cap = cfg.eval_generate_per_category
    chosen, seen = [], {}
    for record in data.test:  # the first `cap` test records of each category (fixed)
        seen[record.category] = seen.get(record.category, 0) + 1
        if cap == 0 or seen[record.category] <= cap:
            chosen.append(record)
    prompts = [encode_prompt(r, lm.tokenizer, cfg.template, cfg.max_length) for r in chosen]

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round == 0 and not cfg.eval_at_start:
            return MetricRecord({})  # e.g. local-only baselines: round 0 is the base model
        load_global(lm, arrays)
        out = heldout_loss(lm.model, tests, cfg.eval_batch_size, lm.device, _pad(lm))
        if generation_round(exp, server_round) and prompts:
            answers = generate(
                lm.model,
                lm.tokenizer,
                prompts,
                cfg.eval_max_new_tokens,
                cfg.eval_batch_size,
                lm.device,
            )
            refs, cats = [r.output for r in chosen], [r.category for r in chosen]
            out.update(generation_scores(answers, refs, cats))
        return MetricRecord(out)

    return evaluate_fn


def save_final(exp: Experiment, arrays: ArrayRecord, run_dir: Path) -> Path | None:
    """The final global adapter as a peft folder (``save_pretrained``) in RUN_DIR/adapter;
    exact mode's residuals go beside it in ``fedsim_residual.safetensors``."""
    if not fedit_of(exp).save_adapter:
        return None
    from safetensors.numpy import save_file

    lm = lm_of(exp)
    load_global(lm, arrays)
    out = Path(run_dir) / ADAPTER_DIR
    lm.model.save_pretrained(str(out))
    residuals = {k: v for k, v in from_arrays(arrays).items() if is_residual(k)}
    if residuals:
        save_file({k: v.astype("float32") for k, v in residuals.items()}, str(out / RESIDUAL_FILE))
    return out
