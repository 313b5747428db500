"""Curricula in FL (Vahidian et al., ICCV 2023): server side.

``method = "curriculum"`` is FedAvg (or the ``strategy.name`` it composes with: FedProx,
FedAdam, FedYogi) whose clients train under the ``[curriculum]`` data curriculum, wrapped in
the client curriculum when ``curriculum.client_curriculum = true``. The plain baselines get
the same wrapper from ``strategies/baselines.py`` when their experiment has the section.

Client curriculum, each round:
1. scoring round (every ``client_score_every`` rounds): a QUERY carrying the global model
   goes to every client; each replies with the model's mean loss on its own data.
2. order clients by that score (``client_ordering``), make the first ``g(round)`` eligible
   (``client_pacing``, ``client_a``, ``client_b``), draw the round's clients from them
   (seeded; ``fedsim.curriculum.schedule``), and send them the inner strategy's TRAIN
   message.

Privacy: the scoring round reveals one statistic of every client to the server each time
it runs: the global model's mean loss on the client's data (and the client's sample count),
which says how well the client's data fits the model and leaks something about its
label mix. Plain FedAvg reveals nothing about clients that are not sampled. Traffic: the
scoring round sends the model to every client; ``comm.csv`` counts those downloads in the
round's ``train`` stage, so the cost is visible.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.config.curriculum import CurriculumConfig
from fedsim.config.schema import Experiment
from fedsim.curriculum.schedule import SCORE_METRIC, SCORE_QUERY, RoundChoice, choose_clients

log = logging.getLogger("fedsim")
SCORE_STAGE = "curriculum-score"


class ClientCurriculum(Strategy):
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
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> dict[int, float]:
        """Ask every client for the global model's mean loss on its data."""
        partition_of = _partition_map(grid)
        query = ConfigRecord({**dict(config), SCORE_QUERY: 1, "server-round": server_round})
        content = RecordDict({"arrays": arrays, "config": query})
        messages = [Message(content, node_id, MessageType.QUERY) for node_id in grid.get_node_ids()]
        stage = getattr(grid, "stage", None)
        if stage is not None:
            grid.stage = SCORE_STAGE
        try:
            replies = list(grid.send_and_receive(messages))
        finally:
            if stage is not None:
                grid.stage = stage
        _report_scoring_failures(grid, server_round)
        scores: dict[int, float] = {}
        for reply in replies:
            if reply.has_error():
                continue
            pid = partition_of[reply.metadata.src_node_id]
            scores[pid] = float(reply.content["metrics"][SCORE_METRIC])
        return scores

    # -- Strategy API -------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        due = (server_round - 1) % self.cfg.client_score_every == 0 or not self.scores
        if due:
            self.scores = self.score_clients(server_round, arrays, config, grid)
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
        node_of = {pid: node for node, pid in _partition_map(grid).items()}
        content = template[0].content
        return [Message(content, node_of[pid], MessageType.TRAIN) for pid in choice.chosen]

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


def _partition_map(grid: Grid) -> dict[int, int]:
    """Node id -> partition id: the FederationGrid's map, else the grid's listing order."""
    mapping = getattr(grid, "partition_of", None)
    if mapping:
        return dict(mapping)
    return {node: i for i, node in enumerate(grid.get_node_ids())}


def _report_scoring_failures(grid: Grid, server_round: int) -> None:
    """Scoring failures are logged here and kept out of the round's training failures."""
    failures = getattr(grid, "failures", None)
    if not failures:
        return
    scoring = [f for f in failures if f.stage == SCORE_STAGE]
    for failure in scoring:
        log.warning(
            "round %d: client %d left out of the client curriculum: %s",
            server_round,
            failure.partition_id,
            failure.reason.splitlines()[0],
        )
    failures[:] = [f for f in failures if f.stage != SCORE_STAGE]


def with_client_curriculum(strategy: Strategy, exp: Experiment) -> Strategy:
    """``strategy`` wrapped in the client curriculum when the experiment asks for it."""
    cfg = exp.curriculum
    if cfg is None or not cfg.client_curriculum:
        return strategy
    return ClientCurriculum(strategy, cfg, exp.clients.per_round, exp.run.rounds, exp.run.seed)


def validate(exp: Experiment) -> None:
    """The curriculum method trains the small image models; it composes with the baselines.

    Fills in the default ``[curriculum]`` section when the experiment has none, so the
    resolved config shows every setting the run used.
    """
    from strategies.baselines import validate as validate_baseline

    validate_baseline(exp)
    if exp.curriculum is None:
        exp.curriculum = CurriculumConfig()


def build_strategy(exp: Experiment) -> Strategy:
    from strategies.baselines import flower_strategy

    return with_client_curriculum(flower_strategy(exp), exp)
