"""Server half of the supervised methods (image or text classification): the initial global
model and the centralised evaluation on the dataset's test split. Server only: a SuperNode
never imports this module. Their declarations are in ``fedsim_methods.supervised``.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, MetricRecord

from fedsim.config.schema import Experiment

# Data, models and training are imported inside the functions: building the strategy needs
# none of them, and a server process that only validates should stay quick to start.


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
