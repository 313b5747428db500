"""The frozen pretrained encoder, and running a contiguous slice of its blocks.

Both sides of a split run the backbone's own ``BertLayer`` modules with the attention mask
built by the same Hugging Face function ``BertModel.forward`` uses, so a slice-by-slice
forward is the unsplit forward, op for op (bitwise equal, see tests/test_sfprompt.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

# Eager attention: plain matmuls and softmax, counted by torch's FLOP counter and identical
# on every device type; at the short sequences of text classification it is not slower.
ATTENTION = "eager"


@lru_cache(maxsize=4)
def load_backbone(asset: str, device: str = "cpu") -> nn.Module:
    """The encoder of model asset ``asset`` (a Hugging Face BERT-like folder, read offline),
    in eval mode (no dropout: a deterministic forward is what makes the split exact and a
    recomputed forward identical) with every parameter frozen.

    Cached per process and device: the clients and the server of an in-process run share
    one copy; nothing may modify it (trainable tail blocks are copies, ``parts.Tail``).
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from fedsim.assets import fetch

    hf_logging.disable_progress_bar()  # a weight-loading bar per process is noise in logs
    model = AutoModel.from_pretrained(
        str(fetch(asset)),
        dtype=torch.float32,
        attn_implementation=ATTENTION,
        local_files_only=True,
    )
    model.eval().requires_grad_(False)
    return model.to(device)


def blocks_of(backbone: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-like encoder, in order."""
    return backbone.encoder.layer


def run_blocks(
    blocks: Sequence[nn.Module],
    hidden: torch.Tensor,
    mask: torch.Tensor,
    config,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``hidden`` (batch, tokens, dim) through ``blocks``; ``mask`` (batch, tokens) is True
    where a token may be attended to. The 2-D mask becomes the attention bias exactly as
    in ``BertModel.forward`` (``create_bidirectional_mask``), once per slice.

    ``dtype`` (``sfprompt.precision``): the blocks run under ``torch.autocast`` with it, so
    their matmuls take bfloat16 inputs while weights and gradients stay float32; the output
    is float32 either way (autocast keeps LayerNorm, each block's last op, in float32), so a
    slice-by-slice forward is still the unsplit one and what crosses the split is unchanged
    in size."""
    if len(blocks) == 0:
        return hidden
    from transformers.masking_utils import create_bidirectional_mask

    bias = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)
    with torch.autocast(hidden.device.type, dtype=dtype, enabled=dtype is not None):
        for block in blocks:
            hidden = block(hidden, bias)
    return hidden.float()
