"""LoRA adapter <-> ArrayRecord: only adapter tensors travel, in fp32 or fp16.

Keys follow peft's saved-adapter names (``<module>.lora_A.weight``, ``<module>.lora_B.weight``)
so an ArrayRecord and an ``adapter_model.safetensors`` name the same tensors. Exact
aggregation adds one dense ``<module>.residual`` (out x in, already multiplied by the LoRA
scaling) per adapted layer, which the receiver adds to that layer's frozen base weight.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedsim.seeding import derive_seed
from fedsim_methods.fedit.model import ADAPTER, LoraLM
from fedsim_methods.fedit.seeds import LORA_INIT

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"
RESIDUAL_SUFFIX = ".residual"
WIRE_DTYPES = {"fp32": np.float32, "fp16": np.float16}


def key_a(module: str) -> str:
    return module + A_SUFFIX


def key_b(module: str) -> str:
    return module + B_SUFFIX


def key_residual(module: str) -> str:
    return module + RESIDUAL_SUFFIX


def is_residual(key: str) -> bool:
    return key.endswith(RESIDUAL_SUFFIX)


def modules_of(keys) -> list[str]:
    """Adapted module names in a set of array keys, in key order."""
    return [k[: -len(A_SUFFIX)] for k in keys if k.endswith(A_SUFFIX)]


def adapter_state(lm: LoraLM) -> dict[str, torch.Tensor]:
    """The live adapter parameters (A then B per module, in module order)."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lm.layers.items():
        out[key_a(name)] = layer.lora_A[ADAPTER].weight
        out[key_b(name)] = layer.lora_B[ADAPTER].weight
    return out


def to_numpy(state: dict[str, torch.Tensor | np.ndarray], dtype: str = "fp32") -> dict:
    np_dtype = WIRE_DTYPES[dtype]
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu", torch.float32).numpy()
        out[key] = np.ascontiguousarray(value, dtype=np_dtype)
    return out


def to_arrays(state: dict, dtype: str = "fp32") -> ArrayRecord:
    """An ArrayRecord of ``state`` in the wire dtype (fp32 or fp16; Flower refuses bf16)."""
    return ArrayRecord({k: Array(v) for k, v in to_numpy(state, dtype).items()})


def from_arrays(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in arrays.items()}


def adapter_arrays(lm: LoraLM, dtype: str = "fp32") -> ArrayRecord:
    """What a client sends back: the adapter only, never a base weight or a residual."""
    return to_arrays(adapter_state(lm), dtype)


@torch.no_grad()
def load_global(lm: LoraLM, arrays: ArrayRecord | dict[str, np.ndarray]) -> None:
    """Set the adapter from ``arrays``; apply residuals to base weights (or undo old ones).

    Raises ValueError when the arrays do not fit the model's adapter (e.g. another rank)."""
    values = from_arrays(arrays) if isinstance(arrays, ArrayRecord) else arrays
    params = adapter_state(lm)
    missing = sorted(set(params) - set(values))
    if missing:
        raise ValueError(f"arrays lack adapter tensor '{missing[0]}' ({len(missing)} missing)")
    for key, param in params.items():
        value = torch.from_numpy(np.asarray(values[key], dtype=np.float32))
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"adapter tensor '{key}' has shape {tuple(value.shape)}, the model's is "
                f"{tuple(param.shape)} (another lora.r or base model?)"
            )
        param.copy_(value)
    residuals = {m: values[key_residual(m)] for m in lm.layers if key_residual(m) in values}
    if residuals or lm.residual_applied:
        _apply_residuals(lm, residuals)


def _apply_residuals(lm: LoraLM, residuals: dict[str, np.ndarray]) -> None:
    """Base weight of each adapted layer = W0 + residual (W0 kept aside on first use)."""
    for name, layer in lm.layers.items():
        weight = layer.get_base_layer().weight
        if name not in lm.base_weights:
            lm.base_weights[name] = weight.detach().clone()
        w0 = lm.base_weights[name]
        if name in residuals:
            delta = torch.from_numpy(np.asarray(residuals[name], dtype=np.float32))
            weight.copy_(w0 + delta.to(w0.device))
        else:
            weight.copy_(w0)
    lm.residual_applied = bool(residuals)


def initial_adapter(lm: LoraLM, seed: int, with_residual: bool = False) -> dict[str, np.ndarray]:
    """peft's default init (A ~ kaiming-uniform(a=sqrt 5), B = 0), drawn on the CPU from
    (seed, LORA_INIT) so it is the same on every device and backend."""
    gen = torch.Generator().manual_seed(derive_seed(seed, LORA_INIT))
    out: dict[str, np.ndarray] = {}
    for name, layer in lm.layers.items():
        a = torch.empty(tuple(layer.lora_A[ADAPTER].weight.shape))
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
        out[key_a(name)] = a.numpy()
        out[key_b(name)] = np.zeros(tuple(layer.lora_B[ADAPTER].weight.shape), np.float32)
        if with_residual:
            shape = tuple(layer.get_base_layer().weight.shape)
            out[key_residual(name)] = np.zeros(shape, np.float32)
    return out


def count_bytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(v.nbytes for v in arrays.values()))
