"""FedDM (Xiong et al., CVPR 2023, "FedDM: Iterative Distribution Matching for
Communication-Efficient Federated Learning"), declared.

Each round the sampled clients receive the global model w and upload a small synthetic set
instead of a model: ``ipc`` images for each class they hold, initialised from their own real
images and optimised so that, for models w' drawn around w (``rho`` away from it), the mean
embedding of the synthetic images of each class matches that of the client's real images
(distribution matching; the embedding is the input of the model's last linear layer, the
distance relative to the real mean: fedsim_methods.clients.feddm). The
server trains w on the union of the synthetic sets and broadcasts it. The baseline of the
server-side distillation paper's "+18 points over other distillation methods" claim.

The halves: ``fedsim_methods.clients.feddm`` (the matching) and
``fedsim_methods.strategies.feddm`` (training on the union). Traffic: the model down, the
synthetic images and labels up, both counted in ``comm.csv``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, PositiveInt

from fedsim.config.schema import Section
from fedsim.seeding import purpose
from fedsim_methods.supervised import (
    HANDLERS,
    supervised_method,
    validate_data_and_model,
    validate_own_strategy,
)

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment

METHOD_NAME = "feddm"
# The records a client's reply carries (both halves agree on them).
SYNTHETIC = "synthetic"  # ArrayRecord: IMAGES (float32, N x C x H x W) and LABELS (int64, N)
IMAGES, LABELS = "images", "labels"

SYNTHESIS_INIT = purpose("feddm.synthesis-init")  # which real images start the synthetic set
PERTURBATION = purpose("feddm.perturbation")  # the model drawn around w at each iteration
REAL_BATCH = purpose("feddm.real-batch")  # the real images each iteration matches
SERVER_TRAIN = purpose("feddm.server-train")  # the server's shuffles over the union
STREAMS = {
    "feddm.synthesis-init": SYNTHESIS_INIT,
    "feddm.perturbation": PERTURBATION,
    "feddm.real-batch": REAL_BATCH,
    "feddm.server-train": SERVER_TRAIN,
}


class FedDMConfig(Section):
    """``[feddm]``: the clients' distribution matching and the server's training on its result."""

    ipc: PositiveInt = Field(10, description="synthetic images per class a client holds")
    iterations: PositiveInt = Field(100, description="distribution-matching steps per round")
    image_lr: float = Field(1.0, gt=0, description="SGD learning rate of the synthetic images")
    image_momentum: float = Field(0.5, ge=0, lt=1)
    rho: float = Field(
        5.0, ge=0, description="distance of the sampled models from the global one (L2 norm)"
    )
    real_batch: PositiveInt = Field(256, description="real images per class per matching step")
    init: Literal["real", "noise"] = Field("real", description="what the synthetic set starts as")
    server_epochs: PositiveInt = Field(50, description="server epochs over the synthetic union")
    server_lr: float = Field(0.01, gt=0)
    server_momentum: float = Field(0.9, ge=0, lt=1)
    server_batch: PositiveInt = 256


def feddm_of(exp: Experiment) -> FedDMConfig:
    return exp.section(METHOD_NAME) or FedDMConfig()


def validate(exp: Experiment) -> None:
    validate_data_and_model(exp)
    validate_own_strategy(exp)


FEDDM = supervised_method(
    name=METHOD_NAME,
    description="FedDM (Xiong et al. 2023): clients upload synthetic sets from distribution "
    "matching around the global model; the server trains on their union",
    tasks=("image-classification",),
    strategy="fedsim_methods.strategies.feddm:build_strategy",
    handlers={**HANDLERS, "train": "fedsim_methods.clients.feddm:train"},
    sections={METHOD_NAME: FedDMConfig},
    validate="fedsim_methods.feddm:validate",
    validate_reply="fedsim_methods.strategies.feddm:validate_reply",
    streams=STREAMS,
)
