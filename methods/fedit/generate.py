"""Answer prompts with a finished FedIT run: base model + the saved peft adapter.

The adapter is read back with peft (``PeftModel.from_pretrained(base, RUN_DIR/adapter)``);
an exact-mode run also has ``fedsim_residual.safetensors`` there, added to the base weights
of the adapted layers (without it the model would miss the exact correction).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedsim.errors import FedsimError

ADAPTER_DIR = "adapter"
RESIDUAL_FILE = "fedsim_residual.safetensors"


class GenerateError(FedsimError, RuntimeError):
    """A run directory that cannot answer (not fedit, no adapter); the message says why."""


def load_tuned(run_dir: Path, device: torch.device | None = None):
    """(peft model, tokenizer, experiment) of a finished fedit run."""
    from peft import PeftModel
    from safetensors.numpy import load_file

    from fedsim.config.load import load_run_config
    from fedsim_methods.fedit.adapter import key_residual
    from fedsim_methods.fedit.config import fedit_of
    from fedsim_methods.fedit.model import (
        load_base_model,
        load_tokenizer,
        lora_layers,
        model_source,
    )

    exp = load_run_config(run_dir)
    if exp.method != "fedit":
        raise GenerateError(f"{run_dir}: a '{exp.method}' run; generate needs a fedit run")
    folder = Path(run_dir) / ADAPTER_DIR
    if not (folder / "adapter_config.json").is_file():
        raise GenerateError(f"{run_dir}: no saved adapter in {folder} (did the run finish?)")
    cfg = fedit_of(exp)
    device = device or torch.device("cpu")
    source = model_source(cfg)
    model = PeftModel.from_pretrained(load_base_model(source, cfg.online, device), str(folder))
    model.eval()
    residual_path = folder / RESIDUAL_FILE
    if residual_path.is_file():
        residuals = load_file(str(residual_path))
        with torch.no_grad():
            for name, layer in lora_layers(model).items():
                if key_residual(name) in residuals:
                    delta = torch.from_numpy(residuals[key_residual(name)]).to(device)
                    layer.get_base_layer().weight.add_(delta)
    return model, load_tokenizer(source, cfg.online), exp


def answer(
    run_dir: Path, prompts: list[str], input_text: str = "", max_new_tokens: int | None = None
) -> list[str]:
    """Greedy answers of the tuned model, prompted with the run's template."""
    from fedsim.data.sources import InstructionRecord
    from fedsim_methods.fedit.config import fedit_of
    from fedsim_methods.fedit.evaluate import generate
    from fedsim_methods.fedit.prompts import encode_prompt

    model, tokenizer, exp = load_tuned(run_dir)
    cfg = fedit_of(exp)
    records = [InstructionRecord("", p, input_text, "", "cli") for p in prompts]
    ids = [encode_prompt(r, tokenizer, cfg.template, cfg.max_length) for r in records]
    new = max_new_tokens or cfg.eval_max_new_tokens
    return generate(model, tokenizer, ids, new, cfg.eval_batch_size, torch.device("cpu"))
