"""What a client pays, against federated full fine-tuning: trainable parameters and FLOPs.

FLOPs are counted with ``torch.utils.flop_counter``'s formulas on the computations that
actually run (matmuls and attention products, 2 per multiply-add; element-wise ops such as
softmax, LayerNorm and GELU are not counted, the usual convention). SFPrompt's client count
includes EL2N scoring, the local-loss update and the recomputed head forward of every
chunk. The full fine-tuning reference is one forward + backward of the whole encoder with
every weight trainable (and the same classifier) per sample and local epoch, on the
same token length without prompts: measured once on one sample, FLOPs being linear in the
batch at a fixed length.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch.nn import functional
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from fedsim_methods.sfprompt.parts import mean_pool


class _FlopSum(TorchDispatchMode):
    """Sums ``flop_registry``'s count of every op that runs, and nothing else.

    ``FlopCounterMode`` gives the same total (a test compares them) but also attributes
    every op to the modules it runs in, through hooks on every module call and backward;
    that bookkeeping, unused here, made a MiniLM prompt-tuning step 1.27x the uncounted CPU
    time on one thread, this mode 1.13x (``bench/sfprompt_flop_meter.py``). The ops run
    unchanged, so results keep their bytes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(getattr(func, "_overloadpacket", None))
        if count is not None:
            self.total += int(count(*args, **kwargs, out_val=out))
        return out


class FlopMeter:
    """Adds up the FLOPs of the blocks run under ``measure()``."""

    def __init__(self) -> None:
        self.total = 0

    @contextmanager
    def measure(self) -> Iterator[None]:
        mode = _FlopSum()
        with mode:
            yield
        self.total += mode.total


def full_model_params(backbone: torch.nn.Module, num_classes: int) -> int:
    """Weights full fine-tuning trains: the encoder (without the unused pooler) and the
    classifier."""
    encoder = sum(
        p.numel() for name, p in backbone.named_parameters() if not name.startswith("pooler.")
    )
    return encoder + (backbone.config.hidden_size + 1) * num_classes


FIRST_ID = 1000  # any ordinary token: FLOPs do not depend on which


@lru_cache(maxsize=8)
def _full_step_flops(backbone: torch.nn.Module, num_classes: int, tokens: int) -> int:
    trainable = copy.deepcopy(backbone).requires_grad_(True)
    trainable.pooler = None  # unused by the classifier: neither its weights nor its FLOPs
    classifier = torch.nn.Linear(backbone.config.hidden_size, num_classes)
    ids = torch.full((1, tokens), FIRST_ID, dtype=torch.long)
    mask = torch.ones(1, tokens, dtype=torch.bool)
    meter = FlopMeter()
    with meter.measure():
        hidden = trainable(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = classifier(mean_pool(hidden, mask, 0))
        functional.cross_entropy(logits, torch.zeros(1, dtype=torch.long)).backward()
    return meter.total


def full_finetune_flops(
    backbone: torch.nn.Module, num_classes: int, tokens: int, samples: int, epochs: int
) -> int:
    """FLOPs of ``epochs`` epochs of full fine-tuning over ``samples`` of ``tokens`` ids
    (``backbone`` on the CPU; it is copied once per process, never modified)."""
    return _full_step_flops(backbone, num_classes, tokens) * samples * epochs
