"""Server-side functions of the supervised methods (image or text classification).

The initial global model and the centralised evaluation on the dataset's test split. They
run on the server only: a SuperNode never imports this module.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, MetricRecord

from fedsim.config.schema import Experiment
from fedsim.method import Method

# Data, models and training are imported inside the functions: the method declarations
# import this module, and every process that reads the registry should stay quick to start.


def initial_arrays(exp: Experiment) -> ArrayRecord:
    """The global model's initial weights, seeded by (seed, MODEL_INIT)."""
    from fedsim.data.federated import federated_image_data
    from fedsim.models import build_model

    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    model = build_model(exp.model, data.input_shape, data.num_classes, exp.run.seed, data.vocab)
    return ArrayRecord(model.state_dict())


def server_evaluator(exp: Experiment):
    """Centralised evaluation on the dataset's held-out test split (or ``eval.max_samples``
    of it, the same seeded subset every round)."""
    from fedsim.data.federated import federated_image_data, server_test_set
    from fedsim.models import build_model
    from fedsim.training import evaluate as evaluate_model
    from fedsim.training import pick_device

    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    x_test, y_test = server_test_set(data, exp.eval.max_samples, exp.run.seed)
    device = pick_device(exp.clients.num_gpus)
    model = build_model(exp.model, data.input_shape, data.num_classes, exp.run.seed, data.vocab)
    model = model.to(device)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        return MetricRecord(evaluate_model(model, x_test, y_test, exp.eval.batch_size, device))

    return evaluate_fn


# What every supervised method shares: its client, initial model and evaluation.
HANDLERS = {
    "train": "clients.supervised:train",
    "evaluate": "clients.supervised:evaluate",
    "query.curriculum_score": "clients.supervised:curriculum_score",
}


def supervised_method(**fields) -> Method:
    """A Method on the supervised client (image or text classification)."""
    shared = {
        "tasks": TASKS,
        "handlers": HANDLERS,
        "initial_arrays": "strategies.supervised:initial_arrays",
        "server_evaluator": "strategies.supervised:server_evaluator",
        "own_data": True,
    }
    return Method(**{**shared, **fields})


SUPPORTED_MODELS = ("cnn", "mlp", "convnet", "resnet18")
MODELS_FOR_TASK = {
    "image-classification": SUPPORTED_MODELS,
    "text-classification": ("bag_of_embeddings",),
}
TASKS = tuple(MODELS_FOR_TASK)


def validate_data_and_model(exp: Experiment) -> None:
    """Rules the schema alone cannot know: which small models fit which data."""
    from fedsim.data.registry import task_of

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
