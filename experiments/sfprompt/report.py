"""Regenerate the SFPrompt results (table, verdict, plots) in README.md from the run directories.

Usage: python experiments/sfprompt/report.py RUNS_DIR   (what `reproduce` calls last)
Reads RUNS_DIR/<variant>-<partitioner>-seed<k>/ (as `fedsim sweep
experiments/sfprompt/sweep.toml` writes them) and rewrites the block between the results
markers of README.md; plots go to experiments/sfprompt/plots/. Every number is read from
`metrics.jsonl` and `comm.csv`: a missing configuration is shown as missing.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.results.cells import RunResult, by_cell, fmt_mean_std, mean_std, scan  # noqa: E402
from fedsim.results.readme import replace_marked_block  # noqa: E402

LAYOUT = "{cell}-seed{seed}"
START, END = "<!-- results:start -->", "<!-- results:end -->"
PARTITIONERS = {"iid": "IID", "dirichlet": "Dirichlet 0.5"}
VARIANTS = {  # file stem: row title
    "sfprompt": "SFPrompt",
    "global-prune": "SFPrompt, global EL2N (paper's rule)",
    "no-prune": "SFPrompt without pruning",
    "no-local-loss": "SFPrompt without local-loss update",
    "splitfed": "SplitFed (frozen body)",
    "prompt-tuning": "federated prompt tuning",
    "full-finetune": "federated full fine-tuning",
}
PAPER = "~0.46% of full fine-tuning's client compute, ~53% less communication, comparable accuracy"


def runs_of(runs: dict, stem: str, partitioner: str) -> list[RunResult]:
    return [r for r in runs.get(f"{stem}-{partitioner}", []) if r.status == "completed"]


def final_accuracy(run: RunResult) -> float | None:
    return run.final("server-eval", "accuracy")


def train_mean(run: RunResult, key: str) -> float | None:
    """A train-scope metric averaged over the run's rounds."""
    values = [r[key] for r in run.rows if r["scope"] == "train" and key in r]
    return statistics.fmean(values) if values else None


def bytes_per_client_round(run: RunResult) -> dict[str, float]:
    """Bytes one sampled client moves per round, by kind: model (down + up), activations
    and gradients (the split stages), averaged over the (round, client) pairs."""
    totals: dict[str, float] = defaultdict(float)
    pairs = set()
    with open(run.run_dir / "comm.csv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            pairs.add((row["round"], row["partition_id"]))
            kind = "split" if row["stage"].startswith("train.split") else "model"
            totals[kind] += int(row["bytes"])
    n = max(len(pairs), 1)
    return {kind: totals[kind] / n for kind in ("model", "split")}


def costs(runs: dict, stem: str) -> dict[str, float] | None:
    """Mean costs over every completed run of a variant (both partitionings, all seeds)."""
    found = [r for p in PARTITIONERS for r in runs_of(runs, stem, p)]
    if not found:
        return None
    traffic = [bytes_per_client_round(r) for r in found]
    out = {
        "model": statistics.fmean(t["model"] for t in traffic),
        "split": statistics.fmean(t["split"] for t in traffic),
    }
    for key in ("client-flops", "flops-ratio", "trainable-params", "full-ft-params"):
        values = [v for v in (train_mean(r, key) for r in found) if v is not None]
        out[key] = statistics.fmean(values) if values else float("nan")
    out["total"] = out["model"] + out["split"]
    return out


def less(ours: float, other: float) -> str:
    """'x% less' or 'x% more' of ``ours`` against ``other``."""
    change = 100 * (1 - ours / other)
    return f"{abs(change):.1f}% {'less' if change >= 0 else 'more'}"


def percent(ratio: float) -> str:
    """1 decimal, or 2 significant digits below 1% (prompt tuning's traffic is tiny)."""
    value = 100 * ratio
    return f"{value:.1f}%" if value >= 1 or value == 0 else f"{value:.2g}%"


def megabytes(n: float) -> str:
    return f"{n / 1e6:,.2f}"


def accuracy_cell(values: list[float]) -> str:
    text = fmt_mean_std([100 * v for v in values], 1, empty="missing")
    return f"{text} (n={len(values)})" if 0 < len(values) < 3 else text


def accuracies(runs: dict, stem: str, partitioner: str) -> list[float]:
    values = [final_accuracy(r) for r in runs_of(runs, stem, partitioner)]
    return [v for v in values if v is not None]


def accuracy_verdict(runs: dict, partitioner: str) -> str:
    """SFPrompt against full fine-tuning: a gap within the seeds' spread (or 1 point) is no
    clear difference."""
    ours, full = (
        accuracies(runs, "sfprompt", partitioner),
        accuracies(runs, "full-finetune", partitioner),
    )
    if len(ours) < 2 or len(full) < 2:
        return "too few seeds to tell"
    (om, os_), (fm, fs) = mean_std(ours), mean_std(full)
    gap, spread = 100 * (om - fm), max(100 * max(os_, fs), 1.0)
    word = "no clear difference" if abs(gap) <= spread else ("better" if gap > 0 else "worse")
    return f"**{word}**: {100 * om:.1f} vs {100 * fm:.1f} ({gap:+.1f} points, spread {spread:.1f})"


def main(runs_dir: Path) -> None:
    runs = by_cell(scan(runs_dir, LAYOUT))
    cost = {stem: costs(runs, stem) for stem in VARIANTS}
    full = cost.get("full-finetune")
    lines = [
        f"Generated by `experiments/sfprompt/report.py {runs_dir}` from the run directories. "
        "Accuracy: the global model on 500 test snippets after the last round, mean ± std "
        "over seeds 0, 1, 2. Costs per sampled client and round, averaged over every run of "
        "the row: traffic from `comm.csv` (model = trainable arrays down + up; split = "
        "activations + gradients), client FLOPs counted by `torch.utils.flop_counter` "
        "(`client-flops` in `metrics.jsonl`), and their ratio to one local epoch of full "
        "fine-tuning over the client's samples (`flops-ratio`).",
        "",
        "| method | acc. IID (%) | acc. Dirichlet (%) | traffic MB (model + split) "
        "| traffic vs full FT | client GFLOPs | FLOPs vs full FT | client trainable params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stem, title in VARIANTS.items():
        accs = [accuracy_cell(accuracies(runs, stem, p)) for p in PARTITIONERS]
        c = cost[stem]
        if c is None:
            lines.append(f"| {title} | " + " | ".join(accs) + " | missing | | | | |")
            continue
        vs_full = percent(c["total"] / full["total"]) if full else "missing"
        lines.append(
            f"| {title} | {accs[0]} | {accs[1]} | {megabytes(c['total'])} "
            f"({megabytes(c['model'])} + {megabytes(c['split'])}) | {vs_full} "
            f"| {c['client-flops'] / 1e9:,.1f} | {100 * c['flops-ratio']:.1f}% "
            f"| {c['trainable-params']:,.0f} |"
        )
    lines += ["", f"**Paper's claims** (ViT-B/L on images): {PAPER}.", "", "**Verdict here:**", ""]
    for p, name in PARTITIONERS.items():
        lines.append(
            f"- Accuracy, {name}, SFPrompt vs full fine-tuning: {accuracy_verdict(runs, p)}."
        )
    ours, split = cost.get("sfprompt"), cost.get("splitfed")
    if ours and full:
        lines.append(
            f"- Client compute: SFPrompt costs {100 * ours['flops-ratio']:.1f}% of full "
            f"fine-tuning's FLOPs (paper: ~0.46%)."
        )
        versus = [f"{less(ours['total'], full['total'])} than full fine-tuning "
                  f"({megabytes(full['total'])} MB)"]  # fmt: skip
        if split:
            mb = megabytes(split["total"])
            versus.append(f"{less(ours['total'], split['total'])} than SplitFed ({mb} MB)")
        lines.append(
            f"- Communication: SFPrompt moves {megabytes(ours['total'])} MB per client and round, "
            + " and ".join(versus)
            + " (paper: ~53% less)."
        )
    lines += ["", "![accuracy per round](plots/accuracy.png)", "", "![costs](plots/costs.png)", ""]
    plot(runs, cost)
    replace_marked_block(HERE / "README.md", START, END, "\n".join(lines))
    print("\n".join(lines))


def plot(runs: dict, cost: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (HERE / "plots").mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, len(PARTITIONERS), figsize=(11, 4), squeeze=False)
    for ax, (p, name) in zip(axes[0], PARTITIONERS.items(), strict=True):
        for stem, title in VARIANTS.items():
            curves = [dict(zip(*r.curve("server-eval", "accuracy"), strict=True))
                      for r in runs_of(runs, stem, p)]  # fmt: skip
            curves = [c for c in curves if c]
            if not curves:
                continue
            rounds = sorted(set.intersection(*(set(c) for c in curves)))
            mean = [100 * statistics.fmean(c[k] for c in curves) for k in rounds]
            ax.plot(rounds, mean, marker="o", label=title)
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "plots" / "accuracy.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for stem, title in VARIANTS.items():
        c, accs = cost.get(stem), accuracies(runs, stem, "iid")
        if c is None or not accs:
            continue
        ax.scatter(c["total"] / 1e6, 100 * statistics.fmean(accs), s=20 + 300 * c["flops-ratio"])
        ax.annotate(title, (c["total"] / 1e6, 100 * statistics.fmean(accs)), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("traffic per client and round (MB, log)")
    ax.set_ylabel("IID test accuracy (%)")
    ax.set_title("marker area ~ client FLOPs vs full fine-tuning")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "plots" / "costs.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
