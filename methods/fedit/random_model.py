"""A model folder with a real model's architecture and tokenizer but seeded random weights.

For measuring speed and memory where the pretrained weights cannot be brought (the GPU
machines lent here take at most 64 MiB of files per call; SmolLM2-135M's weights are
540 MB): the arithmetic, the shapes and the memory are the real model's, only the values,
and so the losses, are not. Never for results about learning.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def random_weights_copy(source: Path, dest: Path, seed: int = 0) -> Path:
    """``dest``: ``source``'s config, tokenizer and other small files, and weights drawn from
    ``transformers``' own initialisation under ``torch.manual_seed(seed)``. ``source`` needs
    no weights (``config.json`` and the tokenizer's files are enough)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    for item in Path(source).iterdir():
        if item.is_file() and item.suffix not in (".safetensors", ".bin", ".gguf"):
            shutil.copy2(item, dest / item.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(dest))
    model.save_pretrained(dest)
    return dest
