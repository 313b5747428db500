"""Base causal LM + tokenizer + peft LoRA wrapper, loaded once per process and reused.

``fedit.base_model`` is a model asset name (offline cache, see ``datasets/*.toml``), a local
Hugging Face folder, or - only with ``fedit.online = true`` - a hub id. Every virtual client
of one process shares one ``LoraLM``: each message overwrites the adapter (and, in exact
mode, the base weights of the adapted layers), so sharing is safe and costs one model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from fedsim_methods.fedit.config import FedITConfig, LoraConfig

ADAPTER = "default"  # peft's adapter name; the only one we use


def model_source(cfg: FedITConfig) -> str:
    """What ``from_pretrained`` gets: a prepared asset folder, a local folder or a hub id.

    Raises ValueError("fedit.base_model: ...") when it is none of them."""
    from fedsim.assets import fetch
    from fedsim.assets.manifest import list_manifests

    assets = {m.name: m for m in list_manifests()}
    if cfg.base_model in assets:
        manifest = assets[cfg.base_model]
        if manifest.kind != "model":
            raise ValueError(
                f"fedit.base_model: '{cfg.base_model}' is a {manifest.kind} asset, not a model"
            )
        return str(fetch(cfg.base_model))
    path = Path(cfg.base_model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if cfg.online:
        return cfg.base_model
    models = sorted(n for n, m in assets.items() if m.kind == "model")
    raise ValueError(
        f"fedit.base_model: '{cfg.base_model}' is neither a model asset ({', '.join(models)}) "
        "nor a local folder; set fedit.online = true to load it as a Hugging Face hub id"
    )


def local_folder(cfg: FedITConfig) -> Path | None:
    """The model's folder if it is on disk already (no download, no conversion), else None."""
    from fedsim.assets import asset_dir, is_prepared
    from fedsim.assets.manifest import list_manifests

    if cfg.base_model in {m.name for m in list_manifests() if m.kind == "model"}:
        return asset_dir(cfg.base_model) if is_prepared(cfg.base_model) else None
    path = Path(cfg.base_model).expanduser()
    return path.resolve() if path.is_dir() else None


@lru_cache(maxsize=4)
def module_names(folder: str) -> tuple[tuple[str, str], ...]:
    """(module name, class name) of the model in ``folder``, built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return tuple((name, type(mod).__name__) for name, mod in model.named_modules() if name)


def _quiet_transformers() -> None:
    """No progress bars, and no deprecation notices about transformers' own internals (a
    FutureWarning from peft's use of them reached users' stderr in every FedIT command)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")


@lru_cache(maxsize=4)
def load_tokenizer(source: str, online: bool = False):
    from transformers import AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not online)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"fedit.base_model: the tokenizer of {source} has no EOS token")
    return tokenizer


def load_base_model(source: str, online: bool, device: torch.device) -> nn.Module:
    """The base LM in float32 (adapters are trained and sent in fp32 or fp16, never bf16)."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    if not online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=torch.float32, local_files_only=not online
    )
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)


@dataclass(eq=False)
class LoraLM:
    """A peft-wrapped LM, its tokenizer and its LoRA layers by module name."""

    model: nn.Module
    tokenizer: object
    layers: dict[str, nn.Module]
    device: torch.device
    source: str
    lora: LoraConfig
    base_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # W0 of adapted layers
    residual_applied: bool = False


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}


def wrap_lora(base: nn.Module, lora: LoraConfig) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


_MODELS: dict[str, LoraLM] = {}


def lora_model(cfg: FedITConfig, lora: LoraConfig, device: torch.device) -> LoraLM:
    """One ``LoraLM`` per process, base model and adapter shape: loaded on first use."""
    source = model_source(cfg)
    device = torch.device(device)
    if device.type == "cuda":
        # A process-wide switch: one experiment per process, so set it from that experiment.
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    key = f"{source}|{cfg.online}|{lora.model_dump_json()}|{device}"
    if key not in _MODELS:
        base = load_base_model(source, cfg.online, device)
        model = wrap_lora(base, lora).to(device)
        layers = lora_layers(model)
        if not layers:
            raise ValueError(f"lora.target_modules: {lora.target_modules} adapted no layer")
        _MODELS[key] = LoraLM(
            model, load_tokenizer(source, cfg.online), layers, device, source, lora
        )
    return _MODELS[key]


def clear_cache() -> None:
    """Drop cached models (tests, benchmarks)."""
    _MODELS.clear()
