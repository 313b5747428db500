"""``fedsim_methods.fedit.random_model``: a real model's architecture and tokenizer with seeded
random weights (the GPU checks use it where the pretrained weights cannot be brought)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from fedsim.assets import fetch


def _tiny_smollm2_config(folder: Path) -> Path:
    """SmolLM2-135M's tokenizer and config, shrunk (2 layers, hidden 64): a fast test."""
    from transformers import AutoConfig

    folder.mkdir()
    for item in fetch("smollm2-135m-instruct").iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            shutil.copy2(item, folder / item.name)
    config = AutoConfig.from_pretrained(folder)
    config.update({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16})  # fmt: skip
    config.save_pretrained(folder)
    return folder


def test_random_weights_are_seeded_and_load_as_the_architecture(tmp_path):
    from fedsim_methods.fedit.model import load_base_model, load_tokenizer
    from fedsim_methods.fedit.random_model import random_weights_copy

    source = _tiny_smollm2_config(tmp_path / "config-only")
    first = random_weights_copy(source, tmp_path / "a", seed=0)
    again = random_weights_copy(source, tmp_path / "b", seed=0)
    other = random_weights_copy(source, tmp_path / "c", seed=1)
    weights = [(d / "model.safetensors").read_bytes() for d in (first, again, other)]
    assert weights[0] == weights[1] != weights[2]
    model = load_base_model(str(first), online=False, device=torch.device("cpu"))
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == 49152
    tokenizer = load_tokenizer(str(first), online=False)
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 49152)
