"""The three parts of a split encoder and the client-only path.

HEAD (client): word embeddings, ``num_prompts`` learnable soft prompts prepended to them
(prompt tuning, Lester et al. 2021: the prompts go through the position/type embeddings
and the embedding LayerNorm like any token, and the attention mask grows by the same
number of always-visible positions), then the first ``head_layers`` blocks. Only the
prompts train; the embeddings and blocks stay frozen.

BODY (server): the middle blocks, frozen.

TAIL (client): the last ``tail_layers`` blocks (copies of the pretrained ones, trainable
unless ``train_blocks=False``; 0 is allowed), then a linear classifier on the MEAN of the
last hidden states over the input's real tokens (prompts and padding excluded). Mean
pooling because all-MiniLM-L6-v2 was trained as a mean-pooled sentence encoder; with
prompts prepended, position 0 is a prompt rather than [CLS], so "first token" pooling
would not mean what it does in BERT.

``Head`` -> ``Body`` -> ``Tail`` is the full model; ``Head`` -> ``Tail`` is the client-only
path (SFPrompt scores EL2N and runs its local-loss update there, without traffic).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fedsim_methods.sfprompt.backbone import blocks_of, run_blocks

PROMPTS = "prompts"  # the array key of the soft prompts
TAIL_PREFIX = "tail."  # the array keys of the tail: tail.blocks.*, tail.classifier.*
CENTRE = "tail.centre"  # centre_features: the mean pooled feature the classifier subtracts
HEAD_PREFIX = "head."  # full fine-tuning only: head.embeddings.*, head.blocks.*
FIRST_PROMPT_TOKEN = 1000  # BERT's WordPiece ids below this are special or [unused]


@dataclass(frozen=True)
class SplitPoints:
    """Where the encoder is cut: blocks [0, head) | [head, n - tail) | [n - tail, n).
    ``whole``: no cut, every block is the client's (the unsplit baselines)."""

    head_layers: int
    tail_layers: int
    num_prompts: int
    whole: bool = False

    def check(self, num_layers: int) -> None:
        if min(self.head_layers, self.tail_layers, self.num_prompts) < 0:
            raise ValueError("head_layers, tail_layers and num_prompts cannot be negative")
        if self.whole:
            if (self.head_layers, self.tail_layers) != (num_layers, 0):
                raise ValueError(f"an unsplit encoder is {num_layers} head blocks and no tail")
            return
        if self.head_layers + self.tail_layers >= num_layers:
            raise ValueError(
                f"head_layers + tail_layers must leave the server at least one of the "
                f"{num_layers} blocks (got {self.head_layers} + {self.tail_layers})"
            )


class Head(nn.Module):
    """Client: embeddings, prompts, first blocks. ``forward(ids, token_mask)`` returns the
    activations sent to the server and the attention mask that goes with them."""

    def __init__(
        self, backbone: nn.Module, points: SplitPoints, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.config = backbone.config
        self.dtype = dtype  # the blocks' autocast dtype (sfprompt.precision); None: float32
        self.embeddings = backbone.embeddings
        self.blocks = nn.ModuleList(blocks_of(backbone)[: points.head_layers])
        dim = self.config.hidden_size
        self.num_prompts = points.num_prompts
        prompts = torch.zeros(points.num_prompts, dim) if self.num_prompts else None
        self.prompts = nn.Parameter(prompts) if prompts is not None else None

    def mask(self, token_mask: torch.Tensor) -> torch.Tensor:
        """The attention mask with the prompt positions (always visible) in front."""
        if not self.num_prompts:
            return token_mask
        visible = token_mask.new_ones(token_mask.shape[0], self.num_prompts)
        return torch.cat([visible, token_mask], dim=1)

    def input_embeddings(self, ids: torch.Tensor, token_mask: torch.Tensor):
        """(word embeddings with the prompts in front, the extended mask)."""
        embeds = self.embeddings.word_embeddings(ids)
        if self.prompts is not None:
            prompts = self.prompts.unsqueeze(0).expand(ids.shape[0], -1, -1)
            embeds = torch.cat([prompts, embeds], dim=1)
        return embeds, self.mask(token_mask)

    def forward(self, ids: torch.Tensor, token_mask: torch.Tensor):
        embeds, mask = self.input_embeddings(ids, token_mask)
        hidden = self.embeddings(inputs_embeds=embeds)
        return run_blocks(self.blocks, hidden, mask, self.config, self.dtype), mask


class Body(nn.Module):
    """Server: the middle blocks, frozen."""

    def __init__(
        self, backbone: nn.Module, points: SplitPoints, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.config = backbone.config
        self.dtype = dtype
        layers = blocks_of(backbone)
        self.blocks = nn.ModuleList(layers[points.head_layers : len(layers) - points.tail_layers])

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, hidden, mask, self.config, self.dtype)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """Mean of ``hidden`` over the real tokens: prompt positions and padding excluded."""
    tokens = hidden[:, num_prompts:]
    weights = mask[:, num_prompts:].unsqueeze(-1).to(hidden.dtype)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class Tail(nn.Module):
    """Client: the last blocks (own trainable copies) and the classifier. With ``centre``
    the classifier reads the pooled features minus ``self.centre``, a vector that is not
    trained by gradient but set each round to the mean pooled feature the clients saw
    (``feature centring``, docs/sfprompt.md)."""

    def __init__(
        self,
        backbone: nn.Module,
        points: SplitPoints,
        num_classes: int,
        train_blocks: bool = True,
        centre: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = backbone.config
        self.dtype = dtype
        layers = blocks_of(backbone)
        kept = layers[len(layers) - points.tail_layers :] if points.tail_layers else []
        self.blocks = nn.ModuleList(copy.deepcopy(list(kept))).requires_grad_(train_blocks)
        self.classifier = nn.Linear(self.config.hidden_size, num_classes)
        self.num_prompts = points.num_prompts
        dim = self.config.hidden_size
        self.centre = nn.Parameter(torch.zeros(dim), requires_grad=False) if centre else None

    def features(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The pooled features the classifier reads (before centring)."""
        hidden = run_blocks(self.blocks, hidden, mask, self.config, self.dtype)
        return mean_pool(hidden, mask, self.num_prompts)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        if self.centre is not None:
            features = features - self.centre
        return self.classifier(features)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(hidden, mask))


@dataclass
class ClientParts:
    """What a client holds: the head and the tail (and nothing of the body). With a
    trainable backbone (full fine-tuning) the head's embeddings and blocks train too."""

    head: Head
    tail: Tail

    def client_only(self, ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Logits of head -> tail, skipping the body (EL2N scoring, the local-loss update)."""
        return self.tail(*self.head(ids, token_mask))

    def trainable(self) -> dict[str, nn.Parameter]:
        """The parameters a client trains and the server averages, by array key."""
        params = {} if self.head.prompts is None else {PROMPTS: self.head.prompts}
        for name, param in self.head.named_parameters():
            if param.requires_grad and name != PROMPTS:
                params[HEAD_PREFIX + name] = param
        for name, param in self.tail.named_parameters():
            if param.requires_grad:
                params[TAIL_PREFIX + name] = param
        return params

    def shared(self) -> dict[str, nn.Parameter]:
        """What the server averages: the trainable parameters, and the feature centre."""
        params = self.trainable()
        if self.tail.centre is not None:
            params[CENTRE] = self.tail.centre
        return params

    def state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().cpu().clone() for k, p in self.shared().items()}

    @torch.no_grad()
    def load(self, values: dict[str, torch.Tensor]) -> None:
        params = self.shared()
        if set(values) != set(params):
            missing, extra = sorted(set(params) - set(values)), sorted(set(values) - set(params))
            raise ValueError(f"trainable arrays do not match: missing {missing}, extra {extra}")
        for key, param in params.items():
            param.copy_(values[key])


def initialise(parts: ClientParts, seed: int) -> None:
    """The round-0 prompts and classifier, seeded: prompts are copies of the word vectors
    of random vocabulary tokens (Lester et al.'s sampled-vocabulary init), the classifier
    N(0, 0.02^2) with zero bias (BERT's initializer range). Tail blocks keep their
    pretrained weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if parts.head.prompts is not None:
            vocab = parts.head.embeddings.word_embeddings.weight
            ids = torch.randint(FIRST_PROMPT_TOKEN, vocab.shape[0], (parts.head.num_prompts,),
                                generator=gen)  # fmt: skip
            parts.head.prompts.copy_(vocab[ids.to(vocab.device)])
        weight = parts.tail.classifier.weight
        weight.copy_(torch.randn(weight.shape, generator=gen) * 0.02)
        parts.tail.classifier.bias.zero_()


def client_parts(
    backbone: nn.Module,
    points: SplitPoints,
    num_classes: int,
    train_tail_blocks: bool = True,
    train_backbone: bool = False,
    centre: bool = False,
    dtype: torch.dtype | None = None,
) -> ClientParts:
    """A fresh head and tail on ``backbone`` (trainable arrays still to be loaded).
    ``train_backbone``: the head trains its embeddings and blocks, on its own copy (the
    loaded backbone is shared by everything in the process and stays frozen). ``dtype``:
    the blocks' autocast dtype (``sfprompt.precision``)."""
    points.check(len(blocks_of(backbone)))
    device = next(backbone.parameters()).device
    if train_backbone:
        backbone = copy.deepcopy(backbone).requires_grad_(True)
    # eval(): no dropout anywhere (the pretrained blocks were loaded in eval mode already).
    head = Head(backbone, points, dtype).to(device).eval()
    tail = Tail(backbone, points, num_classes, train_tail_blocks, centre, dtype)
    tail = tail.to(device).eval()
    return ClientParts(head, tail)
