"""Texts -> padded WordPiece ids with the tokenizer of the ``minilm-l6`` model asset (real,
offline), so text clients index shared int64 tensors exactly as image clients do."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TOKENIZER_ASSET = "minilm-l6"


@dataclass(frozen=True)
class Vocabulary:
    size: int
    pad_id: int


@lru_cache(maxsize=1)
def text_tokenizer():
    from transformers import AutoTokenizer

    from fedsim.assets import fetch

    return AutoTokenizer.from_pretrained(str(fetch(TOKENIZER_ASSET)))


def vocabulary() -> Vocabulary:
    tokenizer = text_tokenizer()
    return Vocabulary(size=len(tokenizer), pad_id=int(tokenizer.pad_token_id))


def token_ids(texts: list[str], max_length: int) -> np.ndarray:
    """(len(texts), max_length) int64 ids, [CLS] ... [SEP] then padding; long texts cut."""
    encoded = text_tokenizer()(
        texts, max_length=max_length, truncation=True, padding="max_length", return_tensors="np"
    )
    return np.ascontiguousarray(encoded["input_ids"], dtype=np.int64)


def pretrained_embeddings():
    """MiniLM-L6's word-embedding matrix (30,522 x 384) as a float32 tensor."""
    from safetensors.torch import load_file

    from fedsim.assets import fetch

    weights = load_file(str(fetch(TOKENIZER_ASSET) / "model.safetensors"))
    key = next(k for k in weights if k.endswith("embeddings.word_embeddings.weight"))
    return weights[key].float()
