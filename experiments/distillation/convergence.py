"""How far the matching loss falls with synthesis iterations and syn_steps: what chooses the
distillation grid's settings (README.md, "Choosing the synthesis budget").

For one client and round of the reproduction's setting (partition 0, round 1, the global
surrogate's seeded initial weights, the client's local training as the method runs it), the
server's synthesis runs ``--iterations`` steps for each ``--syn-steps`` value and records the
matching loss ||theta_N - theta_T||^2 / ||theta_0 - theta_T||^2 after every iteration and
the seconds it took. Writes ``results/convergence/<dataset>.csv`` (committed) and
``plots/convergence-<dataset>.png``.

    python experiments/distillation/convergence.py cifar10 --iterations 300 --syn-steps 5 10 20
    python experiments/distillation/convergence.py --plot-only
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

RESULTS = HERE / "results" / "convergence"
PLOTS = HERE / "plots"
DATASETS = ("mnist", "cifar10")


def client_update(dataset: str, beta: float, seed: int, partition: int):
    """(experiment, surrogate, weights sent, client's weights, the client's classes)."""
    import torch

    from fedsim.config import load_experiment
    from fedsim.data.federated import federated_image_data
    from fedsim.models import build_model
    from fedsim.seeding import LOCAL_SHUFFLE, torch_generator
    from fedsim.threads import torch_threads
    from fedsim.training import train_epochs

    exp = load_experiment(
        HERE / f"{dataset}-pixel.toml", [f"data.alpha={beta}", f"run.seed={seed}"]
    )
    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    model = build_model(exp.model, data.input_shape, data.num_classes, exp.run.seed)
    sent = [p.detach().clone() for p in model.parameters()]
    x, y = data.client(partition)
    with torch_threads(1):
        gen = torch_generator(exp.run.seed, 1, partition, LOCAL_SHUFFLE)
        train_epochs(model, x, y, exp.client, gen, torch.device("cpu"))
    target = [p.detach().clone() for p in model.parameters()]
    model.load_state_dict({**model.state_dict(), **dict(zip(
        [n for n, _ in model.named_parameters()], sent))})  # fmt: skip
    classes = sorted(int(c) for c in torch.unique(y))
    return exp, data, model, sent, target, classes


def measure(dataset: str, iterations: int, syn_steps: list[int], beta: float, seed: int) -> Path:
    import torch

    from fedsim.seeding import torch_generator
    from fedsim.threads import torch_threads
    from fedsim_methods.distillation import SYNTHESIS, distillation_of
    from fedsim_methods.distillation.generators import PixelSpace
    from fedsim_methods.distillation.synthesis import synthesise

    partition = 0
    exp, data, model, sent, target, classes = client_update(dataset, beta, seed, partition)
    base = distillation_of(exp)
    labels = torch.tensor(classes).repeat_interleave(base.ipc)
    rows = []
    for steps in syn_steps:
        cfg = base.model_copy(update={"syn_steps": steps, "iterations": iterations})
        gen = torch_generator(exp.run.seed, 1, partition, SYNTHESIS)
        start = time.perf_counter()
        with torch_threads(1):
            result = synthesise(model, sent, target, labels, PixelSpace(data.input_shape), cfg, gen)
        seconds = time.perf_counter() - start
        print(f"{dataset} syn_steps={steps}: loss {result.losses[0]:.4f} -> "
              f"{result.losses[-1]:.4f} in {seconds:.0f} s")  # fmt: skip
        for i, loss in enumerate(result.losses, 1):
            rows.append({"syn_steps": steps, "iteration": i, "loss": f"{loss:.6g}",
                         "seconds_per_iteration": f"{seconds / iterations:.4g}"})  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{dataset}.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def plot() -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for dataset in DATASETS:
        path = RESULTS / f"{dataset}.csv"
        if not path.is_file():
            continue
        curves: dict[int, list[float]] = {}
        for row in csv.DictReader(path.open()):
            curves.setdefault(int(row["syn_steps"]), []).append(float(row["loss"]))
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for steps, losses in sorted(curves.items()):
            ax.plot(range(1, len(losses) + 1), losses, label=f"syn_steps = {steps}")
        ax.set_xlabel("synthesis iteration")
        ax.set_ylabel("matching loss (1 = no progress)")
        ax.set_title(f"{dataset}: one client, round 1")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        PLOTS.mkdir(exist_ok=True)
        out = PLOTS / f"convergence-{dataset}.png"
        fig.savefig(out, dpi=80, metadata={"Software": None})
        plt.close(fig)
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", help=f"of {DATASETS} (default: both)")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--syn-steps", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.plot_only:
        for dataset in args.datasets or DATASETS:
            print(
                f"wrote {measure(dataset, args.iterations, args.syn_steps, args.beta, args.seed)}"
            )
    for path in plot():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
