"""Regenerate the asynchronous-FL results (table, verdict rows, plot) in README.md.

Usage: python experiments/async/report.py [RUNS_DIR]
Without RUNS_DIR it reads the committed compact runs in experiments/async/results/ (what the
README's block was made from; tests/test_reports.py regenerates it byte for byte). Reads
RUNS_DIR/<config>/seed<k>/ (sweep.toml) and rewrites the block between the results markers of
README.md; the plot goes to experiments/async/plots/. Nothing is typed by hand: a missing run
is shown as missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.results.cells import RunResult, by_cell, fmt_mean_std, scan  # noqa: E402
from fedsim.results.readme import replace_marked_block, shown_path  # noqa: E402
from fedsim.results.verdict import RULE, paired_verdict  # noqa: E402

LAYOUT = "{cell}/seed{seed}"
RESULTS = HERE / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"
SEEDS = 3
TARGET = 0.85  # test accuracy whose first crossing is timed (chosen before the runs)
SERVERS = {
    "fedavg": "FedAvg (synchronous)",
    "fedavg-deadline": "FedAvg, 60 s deadline",
    "fedbuff": "FedBuff (K = 10, 20 in flight)",
    "fedasync": "FedAsync (alpha = 0.6, 10 in flight)",
}
# (better, worse, the paper's figure): FedBuff's abstract (Nguyen et al., AISTATS 2022)
CLAIMS = [
    ("fedbuff", "fedavg", "up to 3.3x more efficient than synchronous FL"),
    ("fedbuff", "fedavg-deadline", "up to 3.3x more efficient than synchronous FL"),
    ("fedbuff", "fedasync", "up to 2.5x more efficient than asynchronous FL"),
]


def _by_round(run: RunResult, scope: str) -> dict[int, dict]:
    return {r["round"]: r for r in run.rows if r["scope"] == scope}


def updates_by_round(run: RunResult) -> dict[int, int]:
    """Client updates aggregated up to each round's end: a synchronous round's usable
    replies, an asynchronous step's arrivals."""
    total, out = 0, {0: 0}
    for r, row in sorted(_by_round(run, "train").items()):
        total += int(row.get("aggregated", row.get("clients", 0)))
        out[r] = total
    return out


def hours_by_round(run: RunResult) -> dict[int, float]:
    return {0: 0.0} | {
        r: row["virtual-time-s"] / 3600 for r, row in _by_round(run, "systems").items()
    }


def to_target(run: RunResult) -> tuple[float, int] | None:
    """(virtual hours, updates) when the test accuracy first reaches TARGET, or None."""
    hours, updates = hours_by_round(run), updates_by_round(run)
    for r, row in sorted(_by_round(run, "server-eval").items()):
        if row.get("accuracy", 0.0) >= TARGET:
            return hours[r], updates[r]
    return None


def _cell(values: list[float], digits: int, runs: int | None = None) -> str:
    """mean ± std; with ``runs``, how many of that many runs reached the target when not all."""
    text = fmt_mean_std(values, digits, empty="not reached")
    if runs is not None and values and len(values) < runs:
        return f"{text} ({len(values)}/{runs} reached)"
    return text


def table(runs: dict[str, list[RunResult]]) -> list[str]:
    lines = [
        f"| server | seeds | final accuracy | best accuracy | virtual h to {TARGET:.0%} | "
        f"updates to {TARGET:.0%} | virtual h in all | updates in all |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell, label in SERVERS.items():
        done = runs.get(cell, [])
        if not done:
            lines.append(f"| {label} | 0 | missing | | | | | |")
            continue
        final = [r.final("server-eval", "accuracy") for r in done]
        best = [r.best("server-eval", "accuracy") for r in done]
        hits = [t for t in map(to_target, done) if t is not None]
        total_h = [max(hours_by_round(r).values()) for r in done]
        total_u = [max(updates_by_round(r).values()) for r in done]
        lines.append(
            f"| {label} | {len(done)} | {_cell(final, 3)} | {_cell(best, 3)} | "
            f"{_cell([h for h, _ in hits], 2, len(done))} | "
            f"{_cell([u for _, u in hits], 0, len(done))} | {_cell(total_h, 2)} | "
            f"{_cell(total_u, 0)} |"
        )
    return lines


def verdicts(runs: dict[str, list[RunResult]]) -> list[str]:
    lines = [
        f"| claim | paper | ours: speed-up in virtual time to {TARGET:.0%} (per seed) | "
        "paired difference, h | verdict |",
        "|---|---|---|---|---|",
    ]
    for better, worse, paper in CLAIMS:
        a = {r.seed: to_target(r) for r in runs.get(better, [])}
        b = {r.seed: to_target(r) for r in runs.get(worse, [])}
        seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
        diffs = [b[s][0] - a[s][0] for s in seeds]  # hours saved: worse - better
        ratios = [b[s][0] / a[s][0] for s in seeds if a[s][0] > 0]
        shown = ", ".join(f"{x:.2f}x" for x in ratios) or "–"
        diff = fmt_mean_std(diffs, 2) if diffs else "–"
        verdict = paired_verdict(diffs, +1, SEEDS)
        claim = (
            f"{SERVERS[better].split(' (')[0]} reaches {TARGET:.0%} sooner than {SERVERS[worse]}"
        )
        lines.append(f"| {claim} | {paper} | {shown} | {diff} | {verdict} |")
    return lines


def block(runs_dir: Path = RESULTS) -> str:
    runs = by_cell(scan(runs_dir, LAYOUT))
    n = sum(len(v) for v in runs.values())
    parts = [
        f"Generated by `experiments/async/report.py {shown_path(runs_dir, ROOT)}` from {n} "
        f'runs (seeds 0-{SEEDS - 1}); server evaluation on 2,000 test images. "Updates" '
        "are client updates aggregated (a synchronous round's usable replies, an "
        "asynchronous step's arrivals).",
        "",
        *table(runs),
        "",
        f"Verdict rule (paired by seed: same partitions, devices and initial model): {RULE}",
        "",
        *verdicts(runs),
        "",
        "![accuracy against virtual time and updates](plots/accuracy.png)",
    ]
    return "\n".join(parts)


def plot(runs: dict[str, list[RunResult]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (HERE / "plots").mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for cell, label in SERVERS.items():
        for i, run in enumerate(runs.get(cell, [])):
            hours, updates = hours_by_round(run), updates_by_round(run)
            evals = sorted(_by_round(run, "server-eval").items())
            acc = [row["accuracy"] for _, row in evals]
            color = f"C{list(SERVERS).index(cell)}"
            kw = {"color": color, "alpha": 0.8, "label": label if i == 0 else None}
            axes[0].plot([hours[r] for r, _ in evals], acc, **kw)
            axes[1].plot([updates[r] for r, _ in evals], acc, **kw)
    for ax, xlabel in zip(axes, ("virtual hours", "client updates aggregated")):
        ax.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_xscale("symlog", linthresh=0.1)
    axes[0].set_xlim(left=0)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "plots" / "accuracy.png", dpi=80)
    plt.close(fig)


def main(runs_dir: Path = RESULTS) -> None:
    text = block(runs_dir)
    plot(by_cell(scan(runs_dir, LAYOUT)))
    replace_marked_block(HERE / "README.md", START, END, text)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
