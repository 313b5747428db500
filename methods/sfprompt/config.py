"""``[sfprompt]``: SFPrompt's own settings (the optimiser, its learning rate, the
micro-batch size and the local-loss epochs are the shared ``[client]`` keys)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator

from fedsim.config.schema import Section, refuse_unread
from fedsim_methods.sfprompt.parts import Body, ClientParts, SplitPoints

SPLIT = "split"
LOCAL_MODES = ("prompt-tuning", "full-finetune")


class SFPromptConfig(Section):
    """Split points, prompts, pruning and the local-loss update; switches turn the method
    into its baselines (``prompts``, ``prune``, ``local_loss`` false and ``train_head``,
    ``train_body`` true = SplitFed-V1: every layer trains on its side of the split), and
    ``mode`` into the unsplit federated baselines (the whole encoder on the client, one
    exchange per round)."""

    mode: Literal["split", "prompt-tuning", "full-finetune"] = Field(
        SPLIT,
        description="split: SFPrompt / SplitFed; prompt-tuning: the whole frozen encoder on "
        "the client, prompts + classifier train; full-finetune: every weight trains",
    )
    model: str = Field(
        "minilm-l6", description="model asset: a BERT-like Hugging Face folder, read offline"
    )
    head_layers: int = Field(
        0,
        ge=0,
        description="blocks on the client before the server's (0: the paper's split, the "
        "client holds the embeddings and prompts)",
    )
    tail_layers: int = Field(
        0, ge=0, description="blocks on the client after the server's (0: only the classifier)"
    )
    train_tail_blocks: bool = Field(
        True, description="train (and average) the tail's blocks; false: only the classifier"
    )
    train_head: bool = Field(
        False,
        description="the client trains its head's embeddings and blocks too (SplitFed); "
        "false: of the head only the prompts train",
    )
    train_body: bool = Field(
        False,
        description="the server trains its body (SplitFed-V1: one copy per sampled client, "
        "averaged at the round's end like the clients' parts); false: frozen",
    )
    prompts: bool = Field(True, description="learnable soft prompts in front of the input")
    num_prompts: PositiveInt = Field(10, description="soft prompt vectors (with prompts = true)")
    prune: bool = Field(True, description="keep only the hardest samples by EL2N each round")
    gamma: float = Field(0.5, gt=0, le=1, description="fraction of samples kept by pruning")
    prune_by_class: bool = Field(
        True,
        description="keep the hardest gamma of each class; false: of all samples (the paper; "
        "with 2 classes it keeps mostly the class the model under-predicts)",
    )
    local_loss: bool = Field(
        True,
        description="before split training, client.local_epochs epochs on head -> tail "
        "(no traffic)",
    )
    logit_adjustment: float = Field(
        0.0,
        ge=0,
        description="tau: clients train on logits + tau * log(their own class frequencies) "
        "and the model predicts without the shift (Menon et al. 2021); 0 = off, as in the "
        "paper; 1 keeps SFPrompt from collapsing to one class under label skew",
    )
    centre_features: bool = Field(
        False,
        description="the classifier reads the pooled features minus their mean over the "
        "samples the clients trained on last round (averaged like the weights; the paper: "
        "false); keeps a classifier on frozen features from collapsing under label skew",
    )
    chunk_size: PositiveInt = Field(
        1, description="micro-batches (client.batch_size each) per exchange and optimiser step"
    )
    split_epochs: PositiveInt = Field(1, description="passes of split training over kept data")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="the encoder blocks' arithmetic: fp32, or bf16 under torch.autocast "
        "(bfloat16 matmuls, float32 weights, gradients, optimiser state, losses and "
        "split traffic; about 3x faster on CPUs with AVX-512 BF16, docs/sfprompt.md)",
    )

    @model_validator(mode="after")
    def _split_points_only_when_split(self) -> SFPromptConfig:
        if self.mode != SPLIT:  # the whole encoder is on the client: nothing is cut
            keys = ("head_layers", "tail_layers", "train_head", "train_body")
            refuse_unread(self, "sfprompt", keys, f"sfprompt.mode = '{self.mode}'")
        return self

    @property
    def split(self) -> bool:
        return self.mode == SPLIT

    def points(self, num_layers: int) -> SplitPoints:
        """Where an encoder of ``num_layers`` blocks is cut (unsplit modes: all on the
        client)."""
        if not self.split:
            return SplitPoints(num_layers, 0, self.prompt_count, whole=True)
        return SplitPoints(self.head_layers, self.tail_layers, self.prompt_count)

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The encoder blocks' autocast dtype; None: plain float32."""
        return torch.bfloat16 if self.precision == "bf16" else None

    def client_parts(self, backbone, num_classes: int) -> ClientParts:
        """A fresh head + tail of ``backbone`` for this configuration."""
        from fedsim_methods.sfprompt.backbone import blocks_of
        from fedsim_methods.sfprompt.parts import client_parts

        points = self.points(len(blocks_of(backbone)))
        train_backbone = self.mode == "full-finetune" or self.train_head
        return client_parts(
            backbone, points, num_classes, self.train_tail_blocks, train_backbone,
            self.centre_features, self.compute_dtype,
        )  # fmt: skip

    def body(self, backbone) -> Body:
        """The server's part of ``backbone`` for this configuration (empty when unsplit)."""
        from fedsim_methods.sfprompt.backbone import blocks_of

        return Body(backbone, self.points(len(blocks_of(backbone))), self.compute_dtype)

    @property
    def head_trains(self) -> bool:
        """Whether anything on the client's side of the body trains (then the server sends
        d loss / d head activations back)."""
        return self.prompt_count > 0 or self.train_head

    @property
    def prompt_count(self) -> int:
        return self.num_prompts if self.prompts else 0
