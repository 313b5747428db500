"""What a FedIT process loads once and reuses: the model, the federated data, tokenised records.

Shared by the client handlers (``clients/fedit.py``) and the server side
(``strategies/fedit_server.py``); every cache is keyed by the settings that change it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from flwr.app import Context

from fedsim.config.schema import Experiment
from fedsim.training import pick_device
from fedsim_methods.fedit.config import fedit_of, lora_of
from fedsim_methods.fedit.instructions import FederatedInstructions, federated_instructions
from fedsim_methods.fedit.model import LoraLM, lora_model
from fedsim_methods.fedit.prompts import Example, encode

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


def client_examples(exp: Experiment, lm: LoraLM, context: Context, train_on: str) -> LazyExamples:
    """Tokenised records of the client behind ``context``: its own data folder (node config
    ``data-path``, ``fedsim.data.client``) or its partition."""
    from fedsim.data.client import client_records, own_data_key

    key = own_data_key(context)
    if key is None:
        return examples_of(exp, lm, str(int(context.node_config["partition-id"])), train_on)
    return examples_of(exp, lm, f"own:{key}", train_on, lambda: client_records(exp, context))


def examples_of(
    exp: Experiment,
    lm: LoraLM,
    which: str,
    train_on: str,
    records_of: Callable[[], Sequence] | None = None,
) -> LazyExamples:
    """Tokenised records of one client (``which`` = partition id) or of the test set;
    ``records_of`` gives the records of any other ``which`` (a node's own folder)."""
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
        if records_of is not None:
            records = records_of()
        else:
            data = data_of(exp)
            records = data.test if which == "test" else data.client(int(which))
        _EXAMPLES[key] = LazyExamples(
            records, lambda r: encode(r, lm.tokenizer, cfg.template, cfg.max_length, train_on)
        )
    return _EXAMPLES[key]


def pad_id(lm: LoraLM) -> int:
    return int(lm.tokenizer.pad_token_id)


def warm_client(exp: Experiment) -> None:
    """FedIT's ``Method.warm_client``: the partitions (unless every node has its own folder)
    and the LoRA-wrapped base model, loaded as the first client call would load them. The
    LoRA init draws from its own seeded generator and every client call seeds the global
    RNG itself, so loading early changes no result."""
    if not (exp.clients.data_paths and all(exp.clients.data_paths)):
        data_of(exp)
    lm_of(exp)
