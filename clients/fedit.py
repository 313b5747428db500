"""FedIT client: LoRA instruction tuning of a causal LM on the client's instruction records.

Each train message carries the global adapter (plus, in exact mode, one dense residual per
adapted layer); the client sets it, runs one local LoRA run (micro-batches, gradient
accumulation, linear LR decay) and replies with its adapter only, in the wire dtype, with
``num-examples`` and ``train_loss``. The base model is loaded once per process
(``fedsim_methods.fedit.cache``) on the GPU the client was given, else the CPU. The server side
(initial adapter, evaluation, final save) is ``strategies/fedit_server.py``.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from fedsim.config.schema import Experiment
from fedsim.seeding import LOCAL_SHUFFLE, derive_seed, torch_generator
from fedsim_methods.fedit.adapter import adapter_arrays, load_global
from fedsim_methods.fedit.cache import client_examples, lm_of, pad_id
from fedsim_methods.fedit.config import fedit_of
from fedsim_methods.fedit.evaluate import heldout_loss
from fedsim_methods.fedit.seeds import LORA_DROPOUT
from fedsim_methods.fedit.train import train_lora


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
    examples = client_examples(exp, lm, context, cfg.train_on)
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
    cfg = fedit_of(exp)
    lm = lm_of(exp)
    load_global(lm, msg.content["arrays"])
    examples = client_examples(exp, lm, context, "response")
    result = heldout_loss(lm.model, examples, cfg.eval_batch_size, lm.device, pad_id(lm))
    metrics = {"eval_loss": result["loss"], "num-examples": len(examples)}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
