"""Regenerate the curricula's results at the paper's setting (table, verdict rows, curves) in
README.md from the committed runs.

    python experiments/curriculum/report.py [RESULTS_DIR]

Without RESULTS_DIR it reads ``experiments/curriculum/results/<config>/seed<k>/``, the
compact files of the runs ``fedsim sweep experiments/curriculum/sweep-paper.toml`` made
(``python -m fedsim.results.compact runs/curriculum-paper experiments/curriculum/results``
adds finished ones); ``tests/test_reports.py`` regenerates the block from them byte for byte.
Only completed runs count; a cell with fewer than three seeds says so, and a claim whose two
cells are not complete is *pending*. The paper's numbers are the constants below (from the
authors' figure notebooks).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.results.cells import by_cell, fmt_mean_std, scan  # noqa: E402
from fedsim.results.readme import replace_marked_block, shown_path  # noqa: E402
from fedsim.results.verdict import RULE, paired_verdict  # noqa: E402

RESULTS = HERE / "results"  # the committed compact runs of sweep-paper.toml
START, END = "<!-- paper-setting:start -->", "<!-- paper-setting:end -->"
PLOT = HERE / "plots" / "paper-setting.png"
SEEDS = (0, 1, 2)

HETEROGENEITY = {"dir0.05": "Dir(0.05)", "dir0.2": "Dir(0.2)", "dir0.9": "Dir(0.9)", "iid": "IID"}
# The paper's LeNet-5 runs on Fashion-MNIST (fmnist-*.toml): its text says that there the
# curricula do not beat random ordering, and gives no number.
FMNIST = {"fmnist-dir0.05": "FMNIST Dir(0.05)", "fmnist-iid": "FMNIST IID"}
FMNIST_ORDERINGS = ("curriculum", "anti", "random", "vanilla")
FMNIST_CLAIMS = [("fmnist-dir0.05", "curriculum", "random"), ("fmnist-iid", "curriculum", "random")]
FMNIST_PAPER = "no gain (text)"
PLOT_FMNIST = HERE / "plots" / "paper-setting-fmnist.png"
ORDERINGS = {
    "curriculum": "curriculum (easy→hard)",
    "anti": "anti-curriculum (hard→easy)",
    "random": "random order, same pacing",
    "vanilla": "vanilla (all data, shuffled)",
    "client": "client curriculum only",
    "both": "data + client curriculum",
}
# FedAvg, CIFAR-10, final global accuracy %, Vahidian et al. 2023 (the authors' figure
# notebooks in sreevatsank1999/Curriculum-FL).
PAPER = {
    ("dir0.05", "curriculum"): 47.07,
    ("dir0.05", "random"): 41.07,
    ("dir0.05", "anti"): 34.11,
    ("dir0.05", "vanilla"): 42.60,
    ("iid", "curriculum"): 56.15,
    ("iid", "random"): 51.23,
    ("iid", "anti"): 44.78,
    ("iid", "vanilla"): 52.73,
    ("dir0.2", "both"): 56.03,
    ("dir0.2", "curriculum"): 54.29,
    ("dir0.2", "client"): 54.23,
    ("dir0.2", "vanilla"): 52.13,
}
# (setting, better, worse): the paper's claim that `better` beats `worse` in `setting`.
CLAIMS = [
    ("dir0.05", "curriculum", "vanilla"),
    ("dir0.05", "curriculum", "random"),
    ("dir0.05", "curriculum", "anti"),
    ("iid", "curriculum", "vanilla"),
    ("iid", "curriculum", "random"),
    ("iid", "curriculum", "anti"),
    ("dir0.2", "both", "curriculum"),
    ("dir0.2", "curriculum", "vanilla"),
    ("dir0.2", "client", "vanilla"),
    ("dir0.9", "curriculum", "vanilla"),  # the paper's table has no Dir(0.9) numbers
    ("dir0.9", "curriculum", "anti"),
]
# (more heterogeneous, less, better, worse): the paper's claim that the gain of `better`
# over `worse` grows with heterogeneity, as a difference of the two settings' gains.
TRENDS = [
    ("dir0.05", "iid", "curriculum", "vanilla"),
    ("dir0.05", "dir0.9", "curriculum", "vanilla"),
]


@dataclass
class Cell:
    """A configuration's completed seeds: final accuracy % and the curve per seed."""

    final: dict[int, float] = field(default_factory=dict)
    curves: dict[int, list[float]] = field(default_factory=dict)


def collect(results: Path) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for name, done in by_cell(scan(results)).items():
        cell = cells.setdefault(name, Cell())
        for run in done:
            cell.final[run.seed] = 100 * run.final("server-eval", "accuracy")
            cell.curves[run.seed] = [100 * a for a in run.curve("server-eval", "accuracy")[1]]
    return cells


def cell_text(cell: Cell | None) -> str:
    values = list(cell.final.values()) if cell else []
    text = fmt_mean_std(values, digits=2, empty="not run yet")
    return f"{text} (n={len(values)})" if 0 < len(values) < len(SEEDS) else text


def claim_row(cells: dict[str, Cell], setting: str, better: str, worse: str) -> str:
    a, b = cells.get(f"{setting}-{better}"), cells.get(f"{setting}-{worse}")
    seeds = sorted(set(a.final) & set(b.final)) if a and b else []
    diffs = [a.final[s] - b.final[s] for s in seeds]
    title = {**HETEROGENEITY, **FMNIST}[setting]
    claim = f"{title}: {better} > {worse}"
    paper = FMNIST_PAPER if setting in FMNIST else _paper_gap(setting, better, worse)
    return _row(claim, paper, seeds, diffs)


def _paper_gap(setting: str, better: str, worse: str) -> float | None:
    a, b = PAPER.get((setting, better)), PAPER.get((setting, worse))
    return None if a is None or b is None else a - b


def _gains(cells: dict[str, Cell], setting: str, better: str, worse: str) -> dict[int, float]:
    a, b = cells.get(f"{setting}-{better}"), cells.get(f"{setting}-{worse}")
    seeds = set(a.final) & set(b.final) if a and b else set()
    return {s: a.final[s] - b.final[s] for s in seeds}


def trend_row(cells: dict[str, Cell], more: str, less: str, better: str, worse: str) -> str:
    """Seed s's gain at the more heterogeneous setting minus its gain at the less one."""
    high, low = _gains(cells, more, better, worse), _gains(cells, less, better, worse)
    seeds = sorted(set(high) & set(low))
    diffs = [high[s] - low[s] for s in seeds]
    gaps = _paper_gap(more, better, worse), _paper_gap(less, better, worse)
    paper = None if None in gaps else gaps[0] - gaps[1]
    claim = f"{better} − {worse}: {HETEROGENEITY[more]} gain > {HETEROGENEITY[less]} gain"
    return _row(claim, paper, seeds, diffs)


def _row(claim: str, paper: float | str | None, seeds: list[int], diffs: list[float]) -> str:
    ours = fmt_mean_std(diffs, digits=2, empty="–", sep=" ± ")
    each = ", ".join(f"s{s}: {d:+.2f}" for s, d in zip(seeds, diffs)) or "–"
    word = paired_verdict(diffs, 1.0, len(SEEDS))
    paper_text = "–" if paper is None else paper if isinstance(paper, str) else f"{paper:+.2f}"
    return f"| {claim} | {paper_text} | {ours} (n={len(diffs)}) | {each} | {word} |"


def plot(cells: dict[str, Cell], out: Path, panels: dict[str, str] = HETEROGENEITY) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), sharey=True)
    for ax, (key, title) in zip(axes, panels.items()):
        for ordering in ORDERINGS:
            cell = cells.get(f"{key}-{ordering}")
            if not cell or not cell.curves:
                continue
            curves = list(cell.curves.values())
            length = min(len(c) for c in curves)
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(length)]
            ax.plot(range(length), mean, label=f"{ordering} (n={len(curves)})")
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("test accuracy % (mean over seeds)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, metadata={"Software": None})
    plt.close(fig)


def block(results: Path) -> str:
    """The README's block at the paper's setting, from ``results`` (committed by default)."""
    cells = collect(results)
    lines = [
        f"Generated by `experiments/curriculum/report.py {shown_path(results, ROOT)}` from the "
        "committed runs. Final server-side accuracy (%) on the 10,000 CIFAR-10 test images "
        "after round 100, mean ± sample std over seeds 0, 1, 2 (each seed: its own partition, "
        "8,000-image subset and initial model, shared by every ordering of a setting).",
        "",
        "| setting | ordering | ours | paper |",
        "|---|---|---|---|",
    ]
    for key, title in HETEROGENEITY.items():
        for ordering, label in ORDERINGS.items():
            name = f"{key}-{ordering}"
            if ordering in ("client", "both") and key != "dir0.2":
                continue  # the client-curriculum ablation runs at Dir(0.2) only
            paper = PAPER.get((key, ordering))
            paper_text = f"{paper:.2f}" if paper is not None else "–"
            lines.append(f"| {title} | {label} | {cell_text(cells.get(name))} | {paper_text} |")
    lines += [
        "",
        "Verdict rows: each claim's paired per-seed differences of final accuracy (percentage "
        "points; the same seed's partitions and initial model on both sides; a trend row "
        "takes each seed's gain in one setting minus its gain in the other). " + RULE,
        "",
        "| claim | paper | ours: mean ± std | per seed | verdict |",
        "|---|---|---|---|---|",
        *(claim_row(cells, *claim) for claim in CLAIMS),
        *(trend_row(cells, *trend) for trend in TRENDS),
        "",
        f"![accuracy over rounds at the paper's setting](plots/{PLOT.name})",
        "",
        "**Fashion-MNIST, LeNet-5** (`fmnist-*.toml`: the same setting on 8,000 of the 60,000 "
        "Fashion-MNIST training images and all 10,000 test images). The paper reports no "
        "FMNIST numbers; its text says the curricula do not beat random ordering there, so "
        "its claim is supported where the *curriculum > random* row is *inconclusive* or "
        "*does not hold*, and contradicted where it *holds*.",
        "",
        "| setting | ordering | ours |",
        "|---|---|---|",
    ]
    for key, title in FMNIST.items():
        for ordering in FMNIST_ORDERINGS:
            text = cell_text(cells.get(f"{key}-{ordering}"))
            lines.append(f"| {title} | {ORDERINGS[ordering]} | {text} |")
    lines += [
        "",
        "| claim | paper | ours: mean ± std | per seed | verdict |",
        "|---|---|---|---|---|",
        *(claim_row(cells, *claim) for claim in FMNIST_CLAIMS),
        "",
        f"![accuracy over rounds, Fashion-MNIST](plots/{PLOT_FMNIST.name})",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    results = Path(argv[1]) if len(argv) > 1 else RESULTS
    text = block(results)
    replace_marked_block(HERE / "README.md", START, END, text)
    cells = collect(results)
    plot(cells, PLOT)
    plot(cells, PLOT_FMNIST, FMNIST)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
