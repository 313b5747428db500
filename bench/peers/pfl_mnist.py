"""pfl-research's half of bench/peers_mnist.py: FedAvg on MNIST, run under pfl 0.6.0.

Runs in pfl's own virtualenv (.venv-pfl, bench/peers/requirements-pfl.txt), which has no
fedsim: the model is fedsim's SmallCNN (fedsim/models/cnn.py) typed again here, and the
images are the uint8 arrays the driver exported from fedsim's asset loader
(bench/out/mnist.npz), so both sides train on the same pixels. Written the way pfl-research's
own CIFAR-10 benchmark is (benchmarks/image_classification/pytorch/train.py: a
``FederatedDataset.from_slices`` of IID users, a ``PyTorchModel`` with ``loss``/``metrics``
methods, ``SimulatedBackend``, ``FederatedAveraging`` with a central SGD of lr 1.0, a
``CentralEvaluationCallback``), with two changes so that it does what fedsim's run does:
  * the test set is evaluated at the start and after the last round only (a
    ``CentralEvaluationCallback`` whose ``after_central_iteration`` waits for the last
    round), and no per-user evaluation of the training cohort (pfl does it on every
    ``evaluation_frequency``-th round, round 0 included, unless the context says not to);
  * images stay uint8 in memory and are scaled to [0, 1] per batch in the model (fedsim
    keeps uint8 and scales per client), instead of pfl's benchmark's float32 copy of all.
Users are 60,000 / 1,000 = 60 images each, an IID split of a seeded permutation; each round
samples 50 of them with pfl's 'random' user sampler, as its benchmark does.

One process: ``python bench/peers/pfl_mnist.py``. Several: pfl's own multi-process
simulation, under ``torchrun --standalone --nnodes=1 --nproc_per_node=N`` (pfl reads
torchrun's environment, starts a gloo process group on CPU and splits every cohort, and
the central evaluation, among the processes; docs/source/guides/simulation_distributed.rst).
Each process prints one line ``RESULT {json}``: seconds per round (round 1's start to the
last round's model update: no set-up, no evaluation), seconds inside local training
(``PyTorchModel.do_multiple_epochs_of``), final test accuracy (rank 0) and, with
``--count-steps``, the local optimiser steps it ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByUser
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.central_evaluation import CentralEvaluationCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.internal.ops import pytorch_ops
from pfl.metrics import Metrics, Weighted
from pfl.model.pytorch import PyTorchModel
from torch import nn
from torch.nn import functional as F

TRAIN = {"s": 0.0, "calls": 0, "steps": 0}


class SmallCNN(nn.Module):
    """fedsim's SmallCNN (conv5-pool-conv5-pool-fc-fc; 80,202 parameters on MNIST), with
    the ``loss`` and ``metrics`` methods pfl's ``PyTorchModel`` calls."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, divisor: float,
                 hidden: int = 128):  # fmt: skip
        super().__init__()
        self.divisor = divisor
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Linear(32 * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:  # stored pixels: scaled as fedsim scales them
            x = x.to(torch.float32) / self.divisor
        return self.classifier(self.features(x))

    def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:  # noqa: A002
        self.eval() if eval else self.train()
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = True) -> dict:  # noqa: A002
        self.eval() if eval else self.train()
        logits = self(x)
        n = len(y)
        return {
            "loss": Weighted(float(F.cross_entropy(logits, y, reduction="sum")), n),
            "accuracy": Weighted(float((logits.argmax(1) == y).sum()), n),
        }


class NoCohortEvaluation(FederatedAveraging):
    """FedAvg without pfl's evaluation of each training user before and after its local
    training (``do_evaluation``, always on in round 0): fedsim does none."""

    def get_next_central_contexts(self, *args, **kwargs):
        contexts, model, metrics = super().get_next_central_contexts(*args, **kwargs)
        if contexts is not None:
            contexts = tuple(dataclasses.replace(c, do_evaluation=False) for c in contexts)
        return contexts, model, metrics


class StartEndEvaluation(CentralEvaluationCallback):
    """The test set before round 1 and after the last round, nothing between; it also
    clocks the rounds between the two evaluations."""

    def __init__(self, dataset: Dataset, eval_params: NNEvalHyperParams, rounds: int):
        super().__init__(dataset, model_eval_params=eval_params, frequency=rounds)
        self.rounds = rounds
        self.started = self.ended = 0.0
        self.final: dict[str, float] = {}

    def on_train_begin(self, *, model) -> Metrics:
        metrics = super().on_train_begin(model=model)
        self.started = time.perf_counter()
        return metrics

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration: int):
        if central_iteration != self.rounds - 1:  # central_iteration counts from 0
            return False, Metrics()
        self.ended = time.perf_counter()
        stop, metrics = self._eval(model)
        for name, value in metrics:  # Weighted values, or floats once reduced over workers
            value = getattr(value, "overall_value", value)
            self.final[str(name).removeprefix("Central val | ")] = float(value)
        return stop, metrics


def timed_local_training() -> None:
    """Time every call of ``PyTorchModel.do_multiple_epochs_of`` (one user's local epochs)."""
    original = PyTorchModel.do_multiple_epochs_of

    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            TRAIN["s"] += time.perf_counter() - t0
            TRAIN["calls"] += 1

    PyTorchModel.do_multiple_epochs_of = wrapper


def count_steps(central: torch.optim.Optimizer) -> None:
    """Count optimiser steps, all but the central optimiser's (one per round)."""

    def hook(optimizer, args, kwargs) -> None:
        if optimizer is not central:
            TRAIN["steps"] += 1

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(hook)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="the driver's mnist.npz")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--count-steps", action="store_true")
    args = parser.parse_args()
    t_launch = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # pfl's 'random' user sampler draws from numpy's global state

    # pfl started the process group (gloo) when pytorch_ops was imported, under torchrun
    rank, world = pytorch_ops.distributed.global_rank, pytorch_ops.distributed.world_size
    with np.load(args.data) as z:
        x_train, y_train = z["x_train"], z["y_train"].astype(np.int64)
        x_test, y_test = z["x_test"], z["y_test"].astype(np.int64)
        divisor = float(z["divisor"])
    order = np.random.permutation(len(y_train))  # IID users: consecutive slices of a shuffle
    x_all, y_all = torch.from_numpy(x_train[order]), torch.from_numpy(y_train[order])
    size = len(y_all) // args.clients
    users = {u: (x_all[u * size : (u + 1) * size], y_all[u * size : (u + 1) * size])
             for u in range(args.clients)}  # fmt: skip
    training = FederatedDataset.from_slices(users, get_user_sampler("random", range(args.clients)))
    central = Dataset(raw_data=[torch.from_numpy(x_test), torch.from_numpy(y_test)])

    module = SmallCNN(x_train.shape[1], x_train.shape[2], int(y_train.max()) + 1, divisor)
    params = [p for p in module.parameters() if p.requires_grad]
    central_optimizer = torch.optim.SGD(params, 1.0)  # FedAvg: the averaged delta, applied
    model = PyTorchModel(
        model=module, local_optimizer_create=torch.optim.SGD, central_optimizer=central_optimizer
    )
    timed_local_training()
    if args.count_steps:
        count_steps(central_optimizer)
    backend = SimulatedBackend(
        training_data=training, val_data=training, postprocessors=[WeightByUser()]
    )
    algorithm_params = NNAlgorithmParams(
        central_num_iterations=args.rounds,
        evaluation_frequency=args.rounds,
        train_cohort_size=args.per_round,
        val_cohort_size=0,
    )
    train_params = NNTrainHyperParams(
        local_learning_rate=args.lr,
        local_num_epochs=args.epochs,
        local_batch_size=args.batch_size,
    )
    eval_params = NNEvalHyperParams(local_batch_size=args.eval_batch_size)
    evaluation = StartEndEvaluation(central, eval_params, args.rounds)
    NoCohortEvaluation().run(
        algorithm_params=algorithm_params,
        backend=backend,
        model=model,
        model_train_params=train_params,
        model_eval_params=eval_params,
        callbacks=[evaluation],
    )
    result = {
        "rank": rank,
        "world": world,
        "torch": torch.__version__,
        "pfl": _pfl_version(),
        "params": sum(p.numel() for p in params),
        "setup_s": evaluation.started - t_launch,
        "s_per_round": (evaluation.ended - evaluation.started) / args.rounds,
        "train_s": TRAIN["s"],
        "train_calls": TRAIN["calls"],
        "local_steps": TRAIN["steps"] if args.count_steps else None,
        **({"accuracy": evaluation.final.get("accuracy"), "loss": evaluation.final.get("loss")}
           if rank == 0 else {}),
    }  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()


def _pfl_version() -> str:
    from importlib.metadata import version

    return version("pfl")


if __name__ == "__main__":
    os.environ.setdefault("PFL_PYTORCH_DEVICE", "cpu")
    main()
