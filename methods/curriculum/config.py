"""The ``[curriculum]`` section: data curricula in local training, client curricula across rounds.

Vahidian et al., "When Do Curricula Work in Federated Learning?" (ICCV 2023). The section
works with ``method = "curriculum"`` and with every method that declares it as an optional
section (the supervised baselines): they train with the supervised client, whose local loop
follows the data curriculum, and wrap their strategy in the client curriculum when it is on.

Data curriculum (every training call, restarted each round): score the client's samples
(``scoring``), order them (``ordering``), and train on a pool of the first samples that
grows at pass boundaries from fraction ``b`` of the data at local step 0 to all of it at
step ``a * T`` (``pacing``; ``T`` = the local steps plain training would take,
``local_epochs * ceil(n / batch_size)``), never below ``min_pool`` samples.

Client curriculum (server side, ``client_curriculum = true``): a scoring round asks every
client for the global model's mean loss on its data, orders clients by it
(``client_ordering``), and draws each round's clients from the first ``g(round)`` of that
order, where ``g`` is ``client_pacing`` with ``client_a``/``client_b`` over the rounds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from fedsim.config.schema import Section

PacingName = Literal["linear", "quad", "sqrt", "step", "exp", "log"]


class CurriculumConfig(Section):
    """Every curriculum knob, with the paper's defaults (linear pacing, a=0.8, b=0.2)."""

    ordering: Literal["curriculum", "anti", "random", "vanilla"] = Field(
        "curriculum",
        description="easy->hard, hard->easy, random order with the same pacing, or all data",
    )
    scoring: Literal["global", "local", "both"] = Field(
        "global",
        description="per-sample loss under the global model (G), the client's previous "
        "local model (L), or their sum (G+L)",
    )
    pacing: PacingName = "linear"
    a: float = Field(0.8, gt=0, le=100, description="fraction of local steps to reach all data")
    b: float = Field(0.2, gt=0, le=1, description="fraction of the data in the pool at step 0")
    min_pool: PositiveInt = Field(32, description="smallest pool, in samples")
    score_batch_size: PositiveInt = Field(256, description="batch size of the scoring pass")

    client_curriculum: bool = False
    client_ordering: Literal["ascending", "descending", "random"] = Field(
        "ascending", description="clients by global-model loss: easy first, hard first, random"
    )
    client_pacing: PacingName = "linear"
    client_a: float = Field(0.8, gt=0, le=100, description="fraction of rounds to reach all")
    client_b: float = Field(0.2, gt=0, le=1, description="fraction of clients eligible at first")
    client_score_every: PositiveInt = Field(1, description="rounds between scoring rounds")

    @property
    def data_curriculum(self) -> bool:
        """Whether local training departs from plain shuffled epochs."""
        return self.ordering != "vanilla"

    @property
    def needs_scores(self) -> bool:
        """Whether local training must score samples (random/vanilla orders need none)."""
        return self.ordering in ("curriculum", "anti")

    @property
    def keeps_local_model(self) -> bool:
        """Whether clients must remember their last local model (L or G+L scoring)."""
        return self.needs_scores and self.scoring in ("local", "both")
