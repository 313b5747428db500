"""``[distillation]``: synthesis, generator and server-training settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from fedsim.config.schema import Section

AUGMENTATIONS = ("color", "crop", "cutout", "flip", "scale", "rotate")


class DistillationConfig(Section):
    """Defaults follow the reference (FedDG-main) where 2 CPU cores allow; the experiment
    folder says what it scales down."""

    # -- synthesis (per participating client, per round) ----------------------------------
    ipc: PositiveInt = Field(10, description="synthetic images per class the client holds")
    syn_steps: PositiveInt = Field(20, description="N: SGD steps unrolled on the synthetic set")
    iterations: PositiveInt = Field(100, description="optimisation steps of the synthetic set")
    batch_syn: NonNegativeInt = Field(0, description="images per inner step; 0 = the whole set")
    syn_lr: PositiveFloat = Field(0.01, description="initial learnable synthetic learning rate")
    lr_lr: PositiveFloat = Field(1e-5, description="SGD step on the synthetic learning rate")
    lr_images: PositiveFloat = Field(1000.0, description="SGD step on pixels (pixel space)")
    lr_latents: PositiveFloat = Field(100.0, description="SGD step on generator latents")
    augment: str = Field(
        "color_crop_cutout_flip_scale_rotate",
        description="differentiable augmentations joined by '_' (or 'none')",
    )
    gradient: Literal["first_order", "unrolled"] = Field(
        "first_order",
        description="first_order: the reference's memory-flat gradient (one inner step "
        "in memory); unrolled: exact backprop through all N steps (memory grows with N)",
    )
    step_graphs: Literal["replay", "keep"] = Field(
        "replay",
        description="first_order: replay each inner step in the second pass (one step's "
        "graph in memory) or keep the N steps' graphs from the first (no second forward and "
        "backward: 0.77-0.83x the time on CPU; memory grows with N; the same gradient up to "
        "float rounding, as the trajectory's gradients then come from torch's differentiable "
        "backward formulas)",
    )
    # -- generator --------------------------------------------------------------------------
    generator: Literal["pixel", "pretrained", "custom"] = Field(
        "pixel",
        description="pixel: optimise pixels; pretrained: fedsim's conditional generator "
        "trained on data.server_share; custom: generator_module + generator_checkpoint",
    )
    generator_module: str = Field(
        "", description="custom: 'package.module:factory', factory(num_classes, image_shape)"
    )
    generator_checkpoint: str = Field("", description="custom: a torch state_dict file")
    latent_dim: PositiveInt = Field(32, description="pretrained: latent size")
    generator_labels: bool = Field(
        True,
        description="pretrained: condition on the server data's labels (false: an "
        "unconditional generator trained on the server's images as unlabelled)",
    )
    generator_epochs: PositiveInt = Field(30, description="pretrained: training epochs")
    # -- server training on the union of synthetic sets -----------------------------------
    global_epochs: PositiveInt = Field(50, description="epochs of the surrogate per round")
    global_lr: PositiveFloat = 0.01
    server_model: Literal["resnet18", "none"] = Field(
        "resnet18", description="the larger server-only model trained on the same union"
    )
    server_model_width: PositiveInt = Field(16, description="resnet18: first-stage channels")
    server_epochs: PositiveInt = Field(50, description="epochs of the server model per round")
    server_lr: PositiveFloat = 0.01
    train_batch: PositiveInt = Field(256, description="batch size of both server trainings")
    server_threads: PositiveInt = Field(1, description="torch threads for synthesis/training")
    synthesis_workers: PositiveInt = Field(
        1,
        description="processes that synthesise a round's clients side by side, each with "
        "server_threads threads (the same bytes for any number; cpu only)",
    )
    server_device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where the server synthesises and trains (cuda: a GPU on the server)"
    )
    save_images: bool = Field(True, description="synthetic sets per round to synthetic/ + plots/")

    @model_validator(mode="after")
    def _check(self) -> DistillationConfig:
        if self.augment != "none":
            unknown = [a for a in self.augment.split("_") if a not in AUGMENTATIONS]
            if unknown:
                raise ValueError(
                    f"augment: unknown {unknown}; use 'none' or a '_'-joined subset of "
                    f"{', '.join(AUGMENTATIONS)}"
                )
        if self.synthesis_workers > 1 and self.server_device != "cpu":
            raise ValueError(
                "synthesis_workers: worker processes synthesise on the CPU; with "
                f"server_device = '{self.server_device}' leave it at 1"
            )
        if self.generator == "custom" and ":" not in self.generator_module:
            raise ValueError(
                "generator_module: generator = 'custom' needs 'package.module:factory'"
            )
        if self.generator != "custom" and (self.generator_module or self.generator_checkpoint):
            raise ValueError(
                "generator_module: only read when generator = 'custom' "
                f"(generator is '{self.generator}')"
            )
        return self

    def augmentations(self) -> tuple[str, ...]:
        return () if self.augment == "none" else tuple(self.augment.split("_"))
