"""Server-side generative dataset distillation (Jia et al., arXiv 2312.01537).

Clients train a small surrogate; the server turns each client's update into a small labelled
synthetic set by trajectory matching (``synthesis``), optionally through a generator's latents
(``generators``, ``pretrain``), and trains the next global surrogate and a larger server-only
model on the union (``server_training``). The server half is
``fedsim_methods.strategies.distillation``, the client half
``fedsim_methods.clients.distillation``; this module declares the method (its section,
rules, random streams, the record both halves exchange, and ``fedsim distill-generator``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.method import Method
from fedsim.seeding import purpose
from fedsim_methods.distillation.config import DistillationConfig
from fedsim_methods.supervised import HANDLERS, validate_data_and_model, validate_own_strategy

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment

METHOD_NAME = "distillation"
CLASS_COUNTS = "class-counts"  # the client's label counts, in its train reply's metrics

SYNTHESIS = purpose("distillation.synthesis")
GLOBAL_TRAIN = purpose("distillation.global-train")
SERVER_TRAIN = purpose("distillation.server-train")
SERVER_INIT = purpose("distillation.server-model-init")
PRETRAIN = purpose("distillation.generator-pretrain")
STREAMS = {
    "distillation.synthesis": SYNTHESIS,
    "distillation.global-train": GLOBAL_TRAIN,
    "distillation.server-train": SERVER_TRAIN,
    "distillation.server-model-init": SERVER_INIT,
    "distillation.generator-pretrain": PRETRAIN,
}


def distillation_of(exp: Experiment) -> DistillationConfig:
    return exp.section("distillation") or DistillationConfig()


def validate(exp: Experiment) -> None:
    """(Image data only: the engine checks ``tasks`` before this runs.)"""
    validate_data_and_model(exp)
    validate_own_strategy(exp)
    cfg = distillation_of(exp)
    if cfg.generator == "pretrained" and exp.data.server_share <= 0:
        raise ValueError(
            "data.server_share: distillation.generator = 'pretrained' is trained on data only "
            "the server holds; set data.server_share > 0 (e.g. 0.1)"
        )


DISTILLATION = Method(
    name=METHOD_NAME,
    description="server-side generative dataset distillation (Jia et al. 2023): clients "
    "train surrogates, the server synthesises data from their updates and trains on it",
    tasks=("image-classification",),
    strategy="fedsim_methods.strategies.distillation:build_strategy",
    handlers={**HANDLERS, "train": "fedsim_methods.clients.distillation:train"},
    initial_arrays="fedsim_methods.strategies.supervised:initial_arrays",
    server_evaluator="fedsim_methods.strategies.supervised:server_evaluator",
    sections={"distillation": DistillationConfig},
    validate="fedsim_methods.distillation:validate",
    preflight="fedsim_methods.strategies.distillation:preflight",
    callbacks="fedsim_methods.strategies.distillation:callbacks",
    own_data=True,
    streams=STREAMS,
    commands={"distill-generator": "fedsim_methods.distillation.command:distill_generator"},
)
