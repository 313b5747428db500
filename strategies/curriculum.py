"""Curricula in FL (Vahidian et al., ICCV 2023): server side.

``method = "curriculum"`` is FedAvg (or the ``strategy.name`` it composes with: FedProx,
FedAdam, FedYogi) whose clients train under the ``[curriculum]`` data curriculum, wrapped in
the client curriculum when ``curriculum.client_curriculum = true``. The plain baselines get
the same wrapper from ``strategies/baselines.py`` when their experiment has the section.

Client curriculum, each round:
1. scoring exchange (every ``client_score_every`` rounds): a ``query.curriculum_score``
   message carrying the global model goes to every client; each replies with the model's
   mean loss on its own data.
2. order clients by that score (``client_ordering``), make the first ``g(round)`` eligible
   (``client_pacing``, ``client_a``, ``client_b``), draw the round's clients from them
   (seeded; ``fedsim_methods.curriculum.schedule``), and send them the inner strategy's TRAIN
   message.

Privacy: the scoring round reveals one statistic of every client to the server each time
it runs: the global model's mean loss on the client's data (and the client's sample count),
which says how well the client's data fits the model and leaks something about its
label mix. Plain FedAvg reveals nothing about clients that are not sampled. Traffic: the
scoring exchange sends the model to every client; ``comm.csv`` counts it under its own stage,
``curriculum-score``, so the cost is visible.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.config.schema import Experiment
from fedsim.federation.strategy import (
    UsesFederation,
    load_strategy_state,
    nested_state,
    strategy_state,
    unnest_state,
)
from fedsim_methods.curriculum import optimiser_of
from fedsim_methods.curriculum.config import CurriculumConfig
from fedsim_methods.curriculum.schedule import (
    SCORE_MESSAGE,
    SCORE_METRIC,
    RoundChoice,
    choose_clients,
)

log = logging.getLogger("fedsim")
SCORE_STAGE = "curriculum-score"


class ClientCurriculum(UsesFederation, Strategy):
    """Wraps any Message-API strategy; only the choice of training clients changes.

    The inner strategy configures the round as usual (its config, e.g. ``proximal-mu``, and
    its state, e.g. FedAdam's current arrays); its TRAIN content is then sent to the
    clients the curriculum chose instead of the ones it sampled. Aggregation and evaluation
    are the inner strategy's.
    """

    def __init__(
        self, inner: Strategy, cfg: CurriculumConfig, per_round: int, rounds: int, seed: int
    ) -> None:
        self.inner = inner
        self.cfg = cfg
        self.per_round = per_round
        self.rounds = rounds
        self.seed = seed
        self.scores: dict[int, float] = {}  # partition id -> last score (checkpointed)
        self.history: list[RoundChoice] = []

    # -- scoring round ------------------------------------------------------------------
    def score_clients(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> dict[int, float]:
        """Ask every client for the global model's mean loss on its data."""
        query = ConfigRecord({**dict(config), "server-round": server_round})
        content = RecordDict({"arrays": arrays, "config": query})
        messages = [self.ctx.message(content, pid, SCORE_MESSAGE) for pid in self.ctx.partition_ids]
        scores: dict[int, float] = {}
        for reply in self.ctx.exchange(messages, stage=SCORE_STAGE):
            if not reply.has_error():
                pid = self.ctx.partition_of(reply.metadata.src_node_id)
                scores[pid] = float(reply.content["metrics"][SCORE_METRIC])
        return scores

    # -- Strategy API -------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        due = (server_round - 1) % self.cfg.client_score_every == 0 or not self.scores
        if due:
            self.scores = self.score_clients(server_round, arrays, config)
        if not self.scores:
            raise RuntimeError("client curriculum: no client answered the scoring round")
        choice = choose_clients(
            self.scores,
            ordering=self.cfg.client_ordering,
            pacing=self.cfg.client_pacing,
            a=self.cfg.client_a,
            b=self.cfg.client_b,
            server_round=server_round,
            total_rounds=self.rounds,
            per_round=self.per_round,
            seed=self.seed,
        )
        self.history.append(choice)
        log.info(
            "round %d: client curriculum pool %d of %d, chosen %s",
            server_round,
            len(choice.pool),
            len(choice.order),
            list(choice.chosen),
        )
        template = list(self.inner.configure_train(server_round, arrays, config, grid))
        if not template:
            return []
        content = template[0].content
        return [self.ctx.message(content, pid, MessageType.TRAIN) for pid in choice.chosen]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.info(
            "ClientCurriculum(%s, %s pacing a=%s b=%s) around:",
            self.cfg.client_ordering,
            self.cfg.client_pacing,
            self.cfg.client_a,
            self.cfg.client_b,
        )
        self.inner.summary()

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> RecordDict:
        pids = sorted(self.scores)
        history = [[list(c.order), list(c.pool), list(c.chosen)] for c in self.history]
        state = RecordDict(
            {
                "curriculum": ConfigRecord(
                    {
                        "score_pids": pids,
                        "score_values": [float(self.scores[p]) for p in pids],
                        "history": json.dumps(history),
                    }
                )
            }
        )
        for key, record in nested_state("inner", strategy_state(self.inner)).items():
            state[key] = record
        return state

    def load_state_dict(self, state: RecordDict) -> None:
        own = state["curriculum"]
        pids, values = list(own["score_pids"]), list(own["score_values"])
        self.scores = {int(p): float(v) for p, v in zip(pids, values)}
        self.history = [
            RoundChoice(tuple(o), tuple(p), tuple(c)) for o, p, c in json.loads(own["history"])
        ]
        load_strategy_state(self.inner, unnest_state("inner", state))


def with_client_curriculum(strategy: Strategy, exp: Experiment) -> Strategy:
    """``strategy`` wrapped in the client curriculum when the experiment asks for it."""
    cfg = exp.section("curriculum")
    if cfg is None or not cfg.client_curriculum:
        return strategy
    return ClientCurriculum(strategy, cfg, exp.clients.per_round, exp.run.rounds, exp.run.seed)


def build_strategy(exp: Experiment) -> Strategy:
    from fedsim.privacy.server import with_privacy
    from fedsim_methods.strategies.flower import flower_strategy

    inner = flower_strategy(exp, optimiser_of(exp))
    return with_privacy(with_client_curriculum(inner, exp), exp)
