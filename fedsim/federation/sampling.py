"""How many clients a Flower strategy samples: exactly ``clients.per_round`` (public API).

Flower's strategies take fractions and minimums; these are the arguments that make them
pick exactly ``per_round`` of ``num`` clients for training (and ``fraction_evaluate`` of
them for client-side evaluation). Every built-in strategy and any plugin built on Flower's
``FedAvg`` family passes them, so sampling means the same thing for every method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment


class SamplingKwargs(TypedDict):
    """The keyword arguments of ``flwr.serverapp.strategy.FedAvg`` that set sampling."""

    fraction_train: float
    min_train_nodes: int
    fraction_evaluate: float
    min_evaluate_nodes: int
    min_available_nodes: int


def sampling_kwargs(exp: Experiment) -> SamplingKwargs:
    """Flower's fraction/minimum arguments that pick exactly ``per_round`` clients.

    Under ``[systems]`` the grid lists only the clients online at the round's start, so
    the minimums are what a round needs of them: ``sample_size`` (``per_round``
    over-committed) for training, and for evaluation ``fraction_evaluate`` of those online
    (at least one), never a wait for clients who are offline.
    """
    from fedsim.config.systems import sample_size

    num, per_round = exp.clients.num, exp.clients.per_round
    if exp.systems is not None:
        need = sample_size(exp)
        return SamplingKwargs(
            fraction_train=per_round / num,
            min_train_nodes=need,
            fraction_evaluate=exp.strategy.fraction_evaluate,
            min_evaluate_nodes=1 if exp.strategy.fraction_evaluate else 0,
            min_available_nodes=need,
        )
    n_eval = round(exp.strategy.fraction_evaluate * num)
    return SamplingKwargs(
        fraction_train=per_round / num,
        min_train_nodes=per_round,
        fraction_evaluate=exp.strategy.fraction_evaluate,
        min_evaluate_nodes=n_eval,
        min_available_nodes=num,
    )
