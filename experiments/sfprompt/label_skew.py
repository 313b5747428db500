"""Why SFPrompt collapses to one class under label skew: the smallest model that shows it.

Usage: python experiments/sfprompt/label_skew.py [OUT_DIR]
        (default experiments/sfprompt/results/label-skew/: probe.csv, partitions.csv,
        features.csv; report.py reads them)

FedAvg of a LINEAR classifier on FROZEN all-MiniLM-L6-v2 features (mean-pooled, no prompts,
no split, no pruning, no local-loss update) on the partitions of ``base.toml`` at small
scale (the partitions of ``label-skew.toml``'s runs, seed by seed): 2,000 Rotten Tomatoes
snippets, 20 clients under Dirichlet(0.5), 5 per round, two
local epochs of micro-batches of 16, 8 rounds. If this collapses, none of SFPrompt's own
machinery is the cause. Rows: the optimiser and learning rate, centring the features by
their mean over the training split, and logit adjustment (each client trains on
logits + log of its own class prior, ``sfprompt.logit_adjustment = 1``). Per row and
seed: accuracy, balanced accuracy and the share of test predictions given to the most
predicted class, after each round. Deterministic (one torch thread, seeded streams).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.config.schema import DataConfig  # noqa: E402
from fedsim.data.federated import federated_image_data, server_test_set  # noqa: E402
from fedsim_methods.sfprompt.backbone import load_backbone  # noqa: E402
from fedsim_methods.sfprompt.logit_adjustment import logit_shift  # noqa: E402
from fedsim_methods.sfprompt.parts import mean_pool  # noqa: E402

OUT = HERE / "results" / "label-skew"
CLIENTS, PER_ROUND, ROUNDS, EPOCHS, BATCH = 20, 5, 8, 2, 16
SEEDS = (0, 1, 2)
# (row name, optimiser, lr, centre the features, logit adjustment tau)
ROWS = [
    ("AdamW 1e-3", "adamw", 1e-3, False, 0.0),
    ("AdamW 1e-4", "adamw", 1e-4, False, 0.0),
    ("SGD 1e-1, momentum 0.9", "sgd", 1e-1, False, 0.0),
    ("AdamW 1e-3, centred features", "adamw", 1e-3, True, 0.0),
    ("AdamW 1e-3, logit adjustment", "adamw", 1e-3, False, 1.0),
    ("AdamW 1e-4, logit adjustment", "adamw", 1e-4, False, 1.0),
]


@torch.no_grad()
def features(ids: torch.Tensor) -> torch.Tensor:
    """Mean-pooled last hidden states of the frozen encoder (what SFPrompt's classifier reads)."""
    backbone = load_backbone("minilm-l6")
    out = []
    for start in range(0, len(ids), 250):
        batch = ids[start : start + 250]
        mask = batch != 0
        hidden = backbone(input_ids=batch, attention_mask=mask).last_hidden_state
        out.append(mean_pool(hidden, mask, 0))
    return torch.cat(out)


def fedavg_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    partitions,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    step: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    tau: float,
    seed: int,
) -> list[tuple[float, float, float]]:
    """(accuracy, balanced accuracy, top prediction share) of the global model per round."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    weight, bias = torch.randn(2, x.shape[1], generator=gen) * 0.02, torch.zeros(2)
    history = []
    for _ in range(ROUNDS):
        sampled = sorted(rng.choice(CLIENTS, PER_ROUND, replace=False).tolist())
        updates, sizes = [], []
        for pid in sampled:
            rows = torch.from_numpy(partitions[pid])
            w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
            optimizer = step([w, b])
            shift = logit_shift(y[rows], 2, tau)
            for _ in range(EPOCHS):
                order = rows[torch.randperm(len(rows), generator=gen)]
                for start in range(0, len(order), BATCH):
                    idx = order[start : start + BATCH]
                    loss = torch.nn.functional.cross_entropy(x[idx] @ w.T + b + shift, y[idx])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            updates.append((w.detach(), b.detach()))
            sizes.append(len(rows))
        share = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
        weight = sum(float(s) * w for s, (w, _) in zip(share, updates, strict=True))
        bias = sum(float(s) * b for s, (_, b) in zip(share, updates, strict=True))
        predicted = (x_test @ weight.T + bias).argmax(1)
        recalls = [float((predicted[y_test == c] == c).double().mean()) for c in (0, 1)]
        top = max(float((predicted == c).double().mean()) for c in (0, 1))
        history.append((float((predicted == y_test).double().mean()), sum(recalls) / 2, top))
    return history


def main(out: Path) -> None:
    torch.set_num_threads(1)
    cfg = DataConfig(
        dataset="rotten_tomatoes",
        partitioner="dirichlet",
        alpha=0.5,
        max_train_samples=2000,
        min_partition_size=10,
        max_length=32,
    )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "partitions.csv", "w", newline="", encoding="utf-8") as fh:
        table = csv.writer(fh)
        table.writerow(["seed", "partition", "samples", "share_1"])
        for seed in SEEDS:
            data = federated_image_data(cfg, CLIENTS, seed)
            for pid in range(CLIENTS):
                labels = data.y_train[torch.from_numpy(data.partitions[pid])]
                table.writerow([seed, pid, len(labels), f"{float(labels.double().mean()):.4f}"])
    shape = open(out / "features.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115
    with shape, open(out / "probe.csv", "w", newline="", encoding="utf-8") as fh:
        stats = csv.writer(shape)
        stats.writerow(["seed", "mean_norm", "mean_distance_to_mean"])
        table = csv.writer(fh)
        table.writerow(["row", "seed", "round", "accuracy", "balanced_accuracy", "top_share"])
        for seed in SEEDS:
            data = federated_image_data(cfg, CLIENTS, seed)
            x_test, y_test = server_test_set(data, 500, seed)
            x, x_eval = features(data.x_train), features(x_test)
            mean = x.mean(0)
            spread = float((x - mean).norm(dim=1).mean())
            stats.writerow([seed, f"{float(mean.norm()):.4f}", f"{spread:.4f}"])
            for name, kind, lr, centre, tau in ROWS:

                def step(params, kind=kind, lr=lr):
                    if kind == "sgd":
                        return torch.optim.SGD(params, lr=lr, momentum=0.9)
                    return torch.optim.AdamW(params, lr=lr)

                xs, xe = (x - mean, x_eval - mean) if centre else (x, x_eval)
                history = fedavg_probe(
                    xs, data.y_train, data.partitions, xe, y_test, step, tau, seed
                )
                for rnd, (acc, balanced, top) in enumerate(history, start=1):
                    table.writerow([name, seed, rnd, f"{acc:.4f}", f"{balanced:.4f}", f"{top:.4f}"])
                print(f"seed {seed} {name:32s} " + " ".join(f"{a:.2f}" for a, _, _ in history))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
