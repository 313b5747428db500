"""The floor of the FedAvg benchmarks: fedsim's FedAvg arithmetic with nothing around it.

The same data, model, seeded sampling, local shuffles and ``fedsim.training.train_epochs``
(looked up on the module at each call, so a benchmark's timer around it sees these calls
too), and the weighted mean in numpy; no messages, no checks, no callbacks.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def bare_fedavg(
    exp, started: Callable[[], None] = lambda: None, finished: Callable[[], None] = lambda: None
) -> dict:
    """Run ``exp``'s rounds; ``started`` before round 1 (after round 0's evaluation, as
    fedsim evaluates), ``finished`` after the last round; returns the final evaluation."""
    import numpy as np
    import torch

    import fedsim.training
    from fedsim.data.federated import federated_image_data
    from fedsim.lazy_dynamo import defer_dynamo_import
    from fedsim.models import build_model
    from fedsim.seeding import CLIENT_SAMPLING, LOCAL_SHUFFLE, derive_seed, torch_generator

    defer_dynamo_import()  # as fedsim's client calls: no compiler import for nothing
    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    model = build_model(exp.model, data.input_shape, data.num_classes, exp.run.seed)
    cpu = torch.device("cpu")
    fedsim.training.evaluate(model, data.x_test, data.y_test, exp.eval.batch_size, cpu)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    started()
    for rnd in range(1, exp.run.rounds + 1):
        random.seed(derive_seed(exp.run.seed, rnd, CLIENT_SAMPLING))
        chosen = sorted(random.sample(range(exp.clients.num), exp.clients.per_round))
        states, sizes = [], []
        for pid in chosen:
            model.load_state_dict(global_state)
            x, y = data.client(pid)
            gen = torch_generator(exp.run.seed, rnd, pid, LOCAL_SHUFFLE)
            fedsim.training.train_epochs(model, x, y, exp.client, gen, cpu)
            states.append({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
            sizes.append(len(y))
        total = sum(sizes)
        agg: dict[str, np.ndarray] = {}
        for state, n in zip(states, sizes):
            for k, v in state.items():
                agg[k] = v * (n / total) if k not in agg else agg[k] + v * (n / total)
        global_state = {k: torch.from_numpy(np.asarray(v)) for k, v in agg.items()}
    finished()
    model.load_state_dict(global_state)
    return fedsim.training.evaluate(model, data.x_test, data.y_test, exp.eval.batch_size, cpu)
