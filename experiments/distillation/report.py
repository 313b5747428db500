"""Regenerate the distillation results in README.md.

    python experiments/distillation/report.py            # the synthesis-budget block
    python experiments/distillation/report.py RUNS_DIR   # also the grid block (`reproduce`)

The synthesis-budget block comes from the committed ``results/convergence/<dataset>.csv``
(``convergence.py``; ``tests/test_reports.py`` regenerates it byte for byte). The grid block
reads RUNS_DIR/<dataset>-<method>-b<beta>-seed<k>/ (as `fedsim sweep
experiments/distillation/sweep.toml` writes them) and rewrites the block between the grid
markers; plots go to experiments/distillation/plots/. Nothing is typed by hand: a missing
configuration is shown as missing.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.results.cells import by_cell, fmt_mean_std, mean_std, scan  # noqa: E402
from fedsim.results.readme import replace_marked_block  # noqa: E402
from fedsim.results.writer import read_metrics  # noqa: E402

LAYOUT = "{cell}-seed{seed}"
GRID_START, GRID_END = "<!-- results:start -->", "<!-- results:end -->"
START, END = "<!-- convergence:start -->", "<!-- convergence:end -->"
RESULTS = HERE / "results"  # committed: convergence/<dataset>.csv, plateau/<run>/
CHECKPOINTS = (15, 50, 100, 200, 300)  # iterations shown
FLAT = 0.01  # "flat from": the first iteration within this of the last iteration's loss
DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
BETAS = ("0.01", "0.1", "0.5")
METHODS = [  # (file stem, scope, column title)
    ("fedavg", "server-eval", "FedAvg"),
    ("fedprox", "server-eval", "FedProx"),
    ("feddm", "server-eval", "FedDM"),
    ("pixel", "server-eval", "pixel"),
    ("unlabelled", "server-eval", "unlab. gen."),
    ("generator", "server-eval", "labelled gen."),
    ("pixel", "server-model", "ResNet, pixel"),
    ("unlabelled", "server-model", "ResNet, unlab."),
    ("generator", "server-model", "ResNet, labelled"),
]
BASELINES = ("FedAvg", "FedProx")
DISTILLATION_BASELINES = ("FedDM",)  # the "+18 points over other distillation methods" claim
# Distilled models that learned from the clients' data only (no labelled server data):
DISTILLED = ("pixel", "unlab. gen.", "ResNet, pixel", "ResNet, unlab.")
LABELLED = ("labelled gen.", "ResNet, labelled")


def last(run_dir: Path, scope: str, key: str = "accuracy") -> float | None:
    rows = [r for r in read_metrics(run_dir) if r["scope"] == scope and key in r]
    return rows[-1][key] if rows else None


def curve(run_dir: Path, scope: str) -> dict[int, float]:
    return {r["round"]: r["accuracy"] for r in read_metrics(run_dir) if r["scope"] == scope}


def finals(runs: dict, dataset: str, beta: str, stem: str, scope: str) -> list[float]:
    cell = f"{dataset}-{stem}-b{beta}"
    values = [last(r.run_dir, scope) for r in runs.get(cell, [])]
    return [v for v in values if v is not None]


def synthesis_cost(runs: dict, dataset: str, stem: str) -> tuple[list[float], list[float], int]:
    """Seconds per client and round, matching loss first/last ratio, images per client."""
    seconds, ratio, images = [], [], []
    for beta in BETAS:
        for r in runs.get(f"{dataset}-{stem}-b{beta}", []):
            path = r.run_dir / "synthesis.csv"
            if not path.exists():
                continue
            with open(path, encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    seconds.append(float(row["seconds"]))
                    ratio.append(float(row["loss_last"]) / float(row["loss_first"]))
                    images.append(int(row["images"]))
    return seconds, ratio, int(statistics.fmean(images)) if images else 0


def cell(values: list[float]) -> str:
    """mean ± std, marked with the number of seeds when fewer than the three planned."""
    text = fmt_mean_std(values, 3, empty="missing")
    return f"{text} (n={len(values)})" if 0 < len(values) < 3 else text


def verdict(table: dict[str, list[float]], candidates=DISTILLED, against=BASELINES) -> str:
    """Best candidate column against the best baseline, in points, with the seeds' spread."""
    base = {k: v for k, v in table.items() if k in against and v}
    dist = {k: v for k, v in table.items() if k in candidates and v}
    most = max((len(v) for v in dist.values()), default=0)
    dist = {k: v for k, v in dist.items() if len(v) == most}  # the best-replicated columns
    if not base or not dist:
        return "incomplete"
    b_name = max(base, key=lambda k: statistics.fmean(base[k]))
    d_name = max(dist, key=lambda k: statistics.fmean(dist[k]))
    (bm, bs), (dm, ds) = mean_std(base[b_name]), mean_std(dist[d_name])
    gap = 100 * (dm - bm)
    spread = max(100 * max(bs, ds), 1.0)  # a point at least: 2,000 test images
    if min(len(base[b_name]), len(dist[d_name])) < 2:
        word = "**too few seeds to tell**"
    elif gap > spread:
        word = "**distillation wins**"
    elif gap < -spread:
        word = "**distillation loses**"
    else:
        word = "**no clear difference**"
    return f"{word}: {d_name} {100 * dm:.1f} vs {b_name} {100 * bm:.1f} ({gap:+.1f} points)"


def convergence_rows(path: Path) -> dict[int, list[tuple[float, float]]]:
    """syn_steps -> [(loss, seconds per iteration)] in iteration order."""
    curves: dict[int, list[tuple[float, float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            curves.setdefault(int(row["syn_steps"]), []).append(
                (float(row["loss"]), float(row["seconds_per_iteration"]))
            )
    return curves


def flat_from(losses: list[float]) -> int:
    """The first iteration (1-based) whose loss is within FLAT of the last one's."""
    return next(i for i, loss in enumerate(losses, 1) if loss - losses[-1] <= FLAT)


PLATEAU_ROUNDS = (5, 10, 20, 30, 40, 50, 60)
PLATEAU_WINDOW, PLATEAU_BAND = 5, 1.0  # moving average over rounds; points of accuracy


def plateau_from(curve: list[float]) -> int | None:
    """The first round whose PLATEAU_WINDOW-round moving average (accuracy %) is within
    PLATEAU_BAND of the mean of the last 10 rounds."""
    if len(curve) < 11:
        return None
    final = statistics.fmean(curve[-10:])
    for r in range(PLATEAU_WINDOW, len(curve)):
        if abs(statistics.fmean(curve[r - PLATEAU_WINDOW + 1 : r + 1]) - final) <= PLATEAU_BAND:
            return r
    return None


def plateau_lines(runs_dir: Path) -> list[str]:
    """FedAvg's accuracy over 60 rounds on the grid's setting (``sweep-plateau.toml``)."""
    runs = by_cell(scan(runs_dir, LAYOUT)) if runs_dir.is_dir() else {}
    lines = [
        "FedAvg on the same setting for 60 rounds (`sweep-plateau.toml`, Dir(0.1), seed 0; "
        "server accuracy % on the 2,000 test images after the given round); *plateau "
        f"from*: the first round whose {PLATEAU_WINDOW}-round moving average is within "
        f"{PLATEAU_BAND:g} point of the last 10 rounds' mean.",
        "",
        "| dataset | "
        + " | ".join(f"round {r}" for r in PLATEAU_ROUNDS)
        + " | last 10 rounds | plateau from |",
        "|---|" + "---:|" * (len(PLATEAU_ROUNDS) + 2),
    ]
    for ds, ds_name in DATASETS.items():
        done = runs.get(f"{ds}-fedavg-b0.1", [])
        if not done:
            lines.append(f"| {ds_name} | not run yet |" + " |" * (len(PLATEAU_ROUNDS) + 1))
            continue
        curve = [100 * a for a in done[0].curve("server-eval", "accuracy")[1]]
        shown = [f"{curve[r]:.1f}" if r < len(curve) else "–" for r in PLATEAU_ROUNDS]
        start = plateau_from(curve)
        lines.append(
            f"| {ds_name} | "
            + " | ".join(shown)
            + f" | {statistics.fmean(curve[-10:]):.1f} | {start if start else 'not yet'} |"
        )
    return lines


def block(results: Path) -> str:
    """The synthesis-budget block, from ``results/convergence/*.csv``."""
    lines = [
        "Generated by `experiments/distillation/report.py` from `results/convergence/*.csv` "
        "(`convergence.py`: partition 0 of Dir(0.1), round 1, seed 0, pixel space, 1 CPU "
        "thread). Matching loss ||theta_N - theta_T||^2 / ||theta_0 - theta_T||^2 after the "
        f"given number of synthesis iterations (1 = no progress); *flat from*: the first "
        f"iteration within {FLAT} of the last one's loss.",
        "",
        "| dataset | syn_steps | "
        + " | ".join(f"it. {c}" for c in CHECKPOINTS)
        + " | flat from | s / iteration |",
        "|---|---:|" + "---:|" * len(CHECKPOINTS) + "---:|---:|",
    ]
    for ds, ds_name in DATASETS.items():
        path = results / "convergence" / f"{ds}.csv"
        if not path.is_file():
            lines.append(f"| {ds_name} | not measured yet |" + " |" * (len(CHECKPOINTS) + 2))
            continue
        for steps, points in sorted(convergence_rows(path).items()):
            losses = [loss for loss, _ in points]
            shown = [f"{losses[c - 1]:.3f}" if c <= len(losses) else "–" for c in CHECKPOINTS]
            lines.append(
                f"| {ds_name} | {steps} | "
                + " | ".join(shown)
                + f" | {flat_from(losses)} | {points[0][1]:.2f} |"
            )
    lines += ["", *plateau_lines(results / "plateau")]
    measured = [ds for ds in DATASETS if (results / "convergence" / f"{ds}.csv").is_file()]
    lines += ["", *(f"![convergence-{ds}](plots/convergence-{ds}.png)" for ds in measured)]
    return "\n".join(lines)


def main(runs_dir: Path) -> None:
    runs = by_cell(scan(runs_dir, LAYOUT))
    lines: list[str] = [
        f"Generated by `experiments/distillation/report.py {runs_dir}` from the run "
        "directories. Final test accuracy (last round, 2,000 test images) as mean ± std "
        "over seeds 0, 1, 2. *pixel*, *unlab. gen.*, *labelled gen.*: the distilled global "
        "surrogate (pixel space; generator trained on the server's images without labels; "
        "with labels). *ResNet, ...*: the server-only ResNet-18 (width 8) trained on the same "
        "synthetic data, never broadcast.",
        "",
    ]
    verdicts, labelled = [], []
    for ds, ds_name in DATASETS.items():
        lines += [f"**{ds_name}**", ""]
        header = "| beta | " + " | ".join(title for _, _, title in METHODS) + " |"
        lines += [header, "|---|" + "---:|" * len(METHODS)]
        for beta in BETAS:
            table = {title: finals(runs, ds, beta, stem, scope) for stem, scope, title in METHODS}
            cells = [cell(v) for v in table.values()]
            lines.append(f"| {beta} | " + " | ".join(cells) + " |")
            verdicts.append(f"- {ds_name}, beta {beta}: {verdict(table)}")
            verdicts.append(
                f"- {ds_name}, beta {beta}, against FedDM: "
                f"{verdict(table, against=DISTILLATION_BASELINES)}"
            )
            control = {"1,000 labelled images": control_of(runs, ds)}
            labelled.append(
                f"- {ds_name}, beta {beta}: against FedAvg/FedProx "
                f"{verdict(table, LABELLED)}; against the labelled images alone "
                f"{verdict({**table, **control}, LABELLED, tuple(control))}"
            )
        lines += [
            "",
            f"Control: the surrogate trained centrally on 1,000 labelled {ds_name} images "
            f"(what the labelled generator was trained on): "
            f"{cell(control_of(runs, ds))}.",
            "",
        ]
    lines += [
        "**Verdict per setting** (best distilled model against the best baseline; a gap "
        "within the seeds' spread, or under one point, counts as no difference):",
        "",
        *verdicts,
        "",
        "The labelled generator saw 1,000 labelled images the clients never had, so it is "
        "judged against both the baselines and those images alone:",
        "",
        *labelled,
        "",
    ]
    lines += [
        "**Synthesis cost** (server, 1 CPU thread, per participating client and round; "
        "from `synthesis.csv`):",
        "",
        "| dataset | generator | images per client | seconds per client "
        "| matching loss last/first |",
        "|---|---|---:|---:|---:|",
    ]
    for ds, ds_name in DATASETS.items():
        for stem in ("pixel", "unlabelled", "generator"):
            seconds, ratio, images = synthesis_cost(runs, ds, stem)
            lines.append(
                f"| {ds_name} | {stem} | {images} | {fmt_mean_std(seconds, 2, 'missing')} | "
                f"{fmt_mean_std(ratio, 3, 'missing')} |"
            )
    lines += ["", "![accuracy per round](plots/accuracy.png)", ""]
    grids = copy_grids(runs)
    lines += [f"![{name}](plots/{name}.png)" for name in grids]
    plot(runs)
    write_readme("\n".join(lines))
    print("\n".join(lines))


def control_of(runs: dict, dataset: str) -> list[float]:
    values = [last(r.run_dir, "server-eval") for r in runs.get(f"server-data-{dataset}", [])]
    return [v for v in values if v is not None]


def copy_grids(runs: dict) -> list[str]:
    """The last round's synthetic images of seed 0, beta 0.1, for each dataset and space."""
    names = []
    for ds in DATASETS:
        for stem in ("pixel", "unlabelled", "generator"):
            found = [r for r in runs.get(f"{ds}-{stem}-b0.1", []) if r.seed == 0]
            folder = found[0].run_dir / "synthetic" if found else None
            sets = sorted(folder.glob("round-*.pt")) if folder else []
            if sets:  # redrawn small: 8 images per class, low dpi (the repo keeps PNGs small)
                import torch

                from fedsim_methods.distillation.images import save_grid

                name = f"synthetic-{ds}-{stem}"
                saved = torch.load(sets[-1])
                out = HERE / "plots" / f"{name}.png"
                save_grid(saved["images"], saved["labels"], out, max_per_class=8, dpi=50)
                names.append(name)
    return names


def plot(runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(DATASETS), len(BETAS), figsize=(12, 7), squeeze=False)
    for i, (ds, ds_name) in enumerate(DATASETS.items()):
        for j, beta in enumerate(BETAS):
            ax = axes[i][j]
            for stem, scope, title in METHODS:
                curves = [curve(r.run_dir, scope) for r in runs.get(f"{ds}-{stem}-b{beta}", [])]
                curves = [c for c in curves if c]
                if not curves:
                    continue
                rounds = sorted(set.intersection(*(set(c) for c in curves)))
                mean = [statistics.fmean(c[k] for c in curves) for k in rounds]
                style = "--" if scope == "server-model" else "-"
                ax.plot(rounds, mean, style, marker="o", label=title)
            ax.set_title(f"{ds_name}, beta {beta}")
            ax.set_xlabel("round")
            ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    (HERE / "plots").mkdir(exist_ok=True)
    fig.savefig(HERE / "plots" / "accuracy.png", dpi=90)
    plt.close(fig)


def write_readme(text: str) -> None:
    replace_marked_block(HERE / "README.md", GRID_START, GRID_END, text)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        raise SystemExit(__doc__)
    replace_marked_block(HERE / "README.md", START, END, block(RESULTS))
    print(block(RESULTS))
    if len(sys.argv) == 2:
        main(Path(sys.argv[1]))
