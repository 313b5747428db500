"""What the supervised methods (image or text classification) share: their client handlers,
initial model and evaluation (``supervised_method``), which models fit which data, and the
rules every one of them checks. Pure: imported by every method declaration that builds on
the supervised client, in every process that reads the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.method import Method

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment

# What every supervised method shares: its client, initial model and evaluation.
HANDLERS = {
    "train": "fedsim_methods.clients.supervised:train",
    "evaluate": "fedsim_methods.clients.supervised:evaluate",
    "query.curriculum_score": "fedsim_methods.clients.supervised:curriculum_score",
}


def supervised_method(**fields) -> Method:
    """A Method on the supervised client (image or text classification)."""
    shared = {
        "tasks": TASKS,
        "handlers": HANDLERS,
        "initial_arrays": "fedsim_methods.strategies.supervised:initial_arrays",
        "server_evaluator": "fedsim_methods.strategies.supervised:server_evaluator",
        "own_data": True,
    }
    return Method(**{**shared, **fields})


SUPPORTED_MODELS = ("cnn", "lenet5", "mlp", "convnet", "resnet18")
MODELS_FOR_TASK = {
    "image-classification": SUPPORTED_MODELS,
    "text-classification": ("bag_of_embeddings",),
}
TASKS = tuple(MODELS_FOR_TASK)


def validate_data_and_model(exp: Experiment) -> None:
    """Rules the schema alone cannot know: which small models fit which data."""
    from fedsim.assets.datasets import task_of

    task = task_of(exp.data.dataset)
    supported = MODELS_FOR_TASK.get(task, SUPPORTED_MODELS)
    if exp.model.name not in supported:
        raise ValueError(
            f"model.name: '{exp.model.name}' is not one of {', '.join(supported)} "
            f"(the models for {task} data such as '{exp.data.dataset}')"
        )
    if task == "text-classification" and exp.data.partitioner == "disparity":
        raise ValueError("data.partitioner: disparity scores images only (its scorer is a CNN)")
    if task == "text-classification" and exp.data.server_share > 0:
        raise ValueError("data.server_share: only image datasets hold a server share so far")
    if exp.model.init != "random" and exp.model.name != "bag_of_embeddings":
        raise ValueError(f"model.init: '{exp.model.init}' is for bag_of_embeddings only")


def validate_own_strategy(exp: Experiment) -> None:
    """A method that is its own strategy: ``strategy.name`` may only repeat the method."""
    if exp.strategy.name not in (None, exp.method):
        raise ValueError(
            f"strategy.name: '{exp.strategy.name}' contradicts method '{exp.method}' "
            "(for a baseline, set one of them)"
        )


def validate(exp: Experiment) -> None:
    validate_data_and_model(exp)
    validate_own_strategy(exp)
