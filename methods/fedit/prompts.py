"""Prompt templates and tokenisation: Alpaca (FedIT/Shepherd) or the model's chat template.

An example is ``prompt tokens + response tokens + EOS``. Prompt and response are
tokenised separately, so the prompt prefix is exactly what generation is given later.
Labels are -100 on the prompt when training on the response only. Too long examples keep
the end of the prompt (where the input and ``### Response:`` are) and at least half of
``max_length`` for the prompt; the response is cut after that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsim.data.sources import InstructionRecord

IGNORE = -100

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def prompt_text(instruction: str, input_text: str, template: str, tokenizer) -> str:
    """The text the model sees before its answer."""
    if template == "alpaca":
        if input_text:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
        return ALPACA_NO_INPUT.format(instruction=instruction)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("fedit.template: 'chat' needs a tokenizer with a chat template")
    content = f"{instruction}\n\n{input_text}" if input_text else instruction
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut (prompt, response) to ``max_length`` tokens; see the module docstring."""
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    keep_r = min(len(response), max_length - min(len(prompt), max_length // 2))
    keep_p = max_length - keep_r
    return prompt[len(prompt) - keep_p :], response[:keep_r]


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    category: str

    @property
    def num_targets(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def encode(
    record: InstructionRecord, tokenizer, template: str, max_length: int, train_on: str
) -> Example:
    """One training (or scoring) example: prompt + response + EOS, labels masked as asked."""
    prompt = _ids(tokenizer, prompt_text(record.instruction, record.input, template, tokenizer))
    response = _ids(tokenizer, record.output) + [tokenizer.eos_token_id]
    prompt, response = fit(prompt, response, max_length)
    masked = [IGNORE] * len(prompt) if train_on == "response" else list(prompt)
    return Example(tuple(prompt + response), tuple(masked + response), record.category)


def encode_prompt(record: InstructionRecord, tokenizer, template: str, max_length: int) -> list:
    """Prompt tokens for generation (the end kept when too long)."""
    prompt = _ids(tokenizer, prompt_text(record.instruction, record.input, template, tokenizer))
    return prompt[-max_length:]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
