"""Split learning of a pretrained BERT-like encoder (SFPrompt, arXiv 2407.17533).

The encoder is cut in three: the client's HEAD (embeddings, soft prompts, first blocks),
the server's BODY (middle blocks, frozen) and the client's TAIL (last blocks + classifier).
One module per job:

- ``backbone``: load the frozen encoder from a local model asset; run a slice of its blocks.
- ``parts``: ``Head``, ``Body``, ``Tail`` and the split points; the client-only path.
- ``plan``: micro-batches, chunks, and the loss normalisation that makes accumulation exact.
- ``el2n``: EL2N scores and keeping the hardest fraction.
- ``wire``: tensors <-> Flower ``ArrayRecord`` (activations, optimiser state).
- ``accounting``: trainable parameters and FLOPs, against full fine-tuning.
- ``protocol``: message types, ``comm.csv`` stages, array and ``Context.state`` keys.
- ``config``: the ``[sfprompt]`` section.

Nothing here knows about Flower's messages or fedsim's loop: the method's halves are
``fedsim_methods.strategies.sfprompt`` (server) and ``fedsim_methods.clients.sfprompt``
(client); this module declares the method (its section, rules, handlers and streams).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.method import Method
from fedsim.seeding import purpose
from fedsim_methods.sfprompt import protocol as p
from fedsim_methods.sfprompt.config import SFPromptConfig

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment

# The client's named random streams (purpose(name), drawn in fedsim_methods.clients.sfprompt).
STREAM_NAMES = ("sfprompt.local-loss", "sfprompt.split-order")


def validate(exp: Experiment) -> None:
    """Pure cross-key rules (the model folder itself is checked by ``preflight``)."""
    from fedsim.config.schema import ModelConfig
    from fedsim.text import TOKENIZER_ASSET

    cfg = exp.section("sfprompt")  # text data only: the schema checks the method's tasks
    if cfg.model != TOKENIZER_ASSET:
        raise ValueError(
            f"sfprompt.model: text data are WordPiece ids of '{TOKENIZER_ASSET}''s vocabulary; "
            f"'{cfg.model}' would read them as other tokens"
        )
    if exp.model.name != ModelConfig().name:
        raise ValueError("model.name: sfprompt takes its model from sfprompt.model; remove it")
    if exp.strategy.name not in (None, exp.method):
        raise ValueError(f"strategy.name: sfprompt averages with FedAvg, not '{exp.strategy.name}'")
    if exp.strategy.fraction_evaluate > 0:
        raise ValueError(
            "strategy.fraction_evaluate: sfprompt clients hold no body to evaluate the model "
            "with; the server evaluates it (eval.server)"
        )
    if exp.data.server_share > 0:
        raise ValueError("data.server_share: only image datasets hold a server share")


SFPROMPT = Method(
    name="sfprompt",
    description="SFPrompt (Cao et al. 2024): split federated prompt tuning of a frozen encoder",
    tasks=("text-classification",),
    strategy="fedsim_methods.strategies.sfprompt:build_strategy",
    handlers={
        p.PRUNE: "fedsim_methods.clients.sfprompt:prune",
        p.FORWARD: "fedsim_methods.clients.sfprompt:forward",
        p.TAIL: "fedsim_methods.clients.sfprompt:tail",
        p.BACKWARD: "fedsim_methods.clients.sfprompt:backward",
        p.COLLECT: "fedsim_methods.clients.sfprompt:train",
    },
    initial_arrays="fedsim_methods.strategies.sfprompt:initial_arrays",
    server_evaluator="fedsim_methods.strategies.sfprompt:server_evaluator",
    sections={"sfprompt": SFPromptConfig},
    validate="fedsim_methods.sfprompt:validate",
    preflight="fedsim_methods.strategies.sfprompt:preflight",
    validate_reply="fedsim_methods.strategies.sfprompt:validate_reply",
    own_data=True,
    streams={name: purpose(name) for name in STREAM_NAMES},
)
