"""Held-out loss / perplexity, greedy generation, ROUGE-L and exact match, per category.

The held-out loss is the mean negative log-likelihood of the reference response (+ EOS)
given the prompt, over all response tokens of a category (token-weighted), whatever
``train_on`` was; perplexity = exp(loss). Generation is greedy with at most
``max_new_tokens`` new tokens; ROUGE-L is the F-measure of ``rouge-score`` (stemmed) and
exact match compares case-, space- and end-punctuation-normalised strings.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from functools import lru_cache

import torch
from torch import nn

from fedsim_methods.fedit.prompts import IGNORE, Example, collate


def _by_length(items: list, length) -> list[int]:
    """Indices sorted by length (stable): batches of similar length waste little padding."""
    return sorted(range(len(items)), key=lambda i: length(items[i]))


@torch.no_grad()
def heldout_loss(
    model: nn.Module, examples: list[Example], batch_size: int, device: torch.device, pad_id: int
) -> dict[str, float]:
    """``loss``, ``perplexity`` and ``loss/<category>`` over ``examples``."""
    model.eval()
    nll: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    order = _by_length(examples, lambda e: len(e.input_ids))
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        for e in chunk:  # one example per forward row, summed per category
            count[e.category] += e.num_targets
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        targets = batch["labels"][:, 1:]
        per_token = nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
        )
        per_example = per_token.sum(1).cpu().tolist()
        for e, value in zip(chunk, per_example):
            nll[e.category] += value
    total_nll, total_n = sum(nll.values()), sum(count.values())
    loss = total_nll / max(total_n, 1)
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    for cat in sorted(nll):
        out[f"loss/{cat}"] = nll[cat] / max(count[cat], 1)
    return out


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
) -> list[str]:
    """Greedy answers (special tokens dropped, stripped), in the order of ``prompts``."""
    model.eval()
    pad = tokenizer.pad_token_id
    answers: list[str] = [""] * len(prompts)
    order = _by_length(prompts, len)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding: every answer starts at column `width`
            n = len(prompts[i])
            ids[row, width - n :] = torch.tensor(prompts[i])
            mask[row, width - n :] = 1
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row, i in enumerate(idx):
            answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    return answers


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def normalise(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.rstrip(" .!?")


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def generation_scores(
    predictions: list[str], references: list[str], categories: list[str]
) -> dict[str, float]:
    """``rouge_l``, ``exact_match`` overall (mean over examples) and per category."""
    per: dict[str, list[tuple[float, float]]] = defaultdict(list)
    before = list(logging.root.handlers)
    try:
        for p, r, c in zip(predictions, references, categories, strict=True):
            per[c].append((rouge_l(p, r), exact_match(p, r)))
    finally:
        # rouge-score logs through the root logger's module functions, which install a
        # stderr handler (logging.basicConfig) on first use: every fedsim/flwr INFO line
        # would then reach the console. Remove what scoring added.
        for handler in logging.root.handlers[:]:
            if handler not in before:
                logging.root.removeHandler(handler)
    everything = [s for scores in per.values() for s in scores]
    out = {
        "rouge_l": sum(s[0] for s in everything) / max(len(everything), 1),
        "exact_match": sum(s[1] for s in everything) / max(len(everything), 1),
    }
    for cat in sorted(per):
        scores = per[cat]
        out[f"rouge_l/{cat}"] = sum(s[0] for s in scores) / len(scores)
        out[f"exact_match/{cat}"] = sum(s[1] for s in scores) / len(scores)
    return out
