"""Regenerate the distillation results in README.md from the committed runs.

    python experiments/distillation/report.py            # both blocks, from results/
    python experiments/distillation/report.py RUNS_DIR   # and redraw seed 0's synthetic sets
    python experiments/distillation/report.py --check-mu # do the FedProx files use the chosen mu?

Both blocks come from ``results/`` only (``tests/test_reports.py`` regenerates them byte for
byte): the synthesis-budget block from ``convergence/<dataset>.csv`` (``convergence.py``) and
``plateau/`` (``sweep-plateau.toml``); the grid block from ``fedprox-mu/``
(``sweep-fedprox-mu.toml``), ``main/`` (``sweep.toml``) and ``scaffold-weighting/``
(``sweep-scaffold-weighting.toml``), compact runs laid out
``<dataset>-<method>-b<beta>-seed<k>/``. Nothing is typed by hand: a cell with no committed
run says so. Synthetic sets are not committed; given the sweep's RUNS_DIR, the last round's
sets of seed 0 at beta 0.1 are drawn into plots/.
"""

from __future__ import annotations

import csv
import statistics
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.results import plateau  # noqa: E402
from fedsim.results.cells import by_cell, fmt_mean_std, scan  # noqa: E402
from fedsim.results.readme import replace_marked_block  # noqa: E402
from fedsim.results.verdict import RULE, paired_verdict  # noqa: E402

LAYOUT = "{cell}-seed{seed}"
START, END = "<!-- convergence:start -->", "<!-- convergence:end -->"
GRID_START, GRID_END = "<!-- results:start -->", "<!-- results:end -->"
RESULTS = HERE / "results"  # convergence/, plateau/, fedprox-mu/, main/, scaffold-weighting/
GRID_DIRS = ("main", "scaffold-weighting")  # the grid's runs and SCAFFOLD weighted by samples
EPOCHS_PROBE = ("scaffold-epochs", 20, "0.1")  # sweep-scaffold-epochs.toml: folder, rounds, beta
ACCURACY_PLOT = HERE / "plots" / "accuracy.png"
CHECKPOINTS = (15, 50, 100, 200, 300)  # iterations shown
FLAT = 0.01  # "flat from": the first iteration within this of the last iteration's loss
DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
BETAS = ("0.01", "0.1")
SEEDS = (0, 1, 2)
MUS = ("0.001", "0.01", "0.1", "1.0")  # sweep-fedprox-mu.toml's grid
COLUMNS = [  # (file stem, scope, column title)
    ("fedavg", "server-eval", "FedAvg"),
    ("fedprox", "server-eval", "FedProx"),
    ("scaffold", "server-eval", "SCAFFOLD"),
    ("scaffold-samples", "server-eval", "SCAFFOLD, samples"),
    ("feddm", "server-eval", "FedDM"),
    ("pixel", "server-eval", "pixel"),
    ("generator", "server-eval", "labelled gen."),
    ("pixel", "server-model", "ResNet, pixel"),
    ("generator", "server-model", "ResNet, labelled"),
]
# the paper's non-distillation FL; SCAFFOLD in both model steps (sweep-scaffold-weighting.toml)
WEIGHT_AVERAGING = ("FedAvg", "FedProx", "SCAFFOLD", "SCAFFOLD, samples")
# (candidate, against, paper's figure): the claims, per dataset and beta. "best of" picks,
# per setting, the weight-averaging column with the highest mean: the hardest competitor.
CLAIMS = [
    ("pixel", WEIGHT_AVERAGING, "up to +40"),
    ("pixel", ("FedDM",), "up to +18"),
    ("labelled gen.", WEIGHT_AVERAGING, "up to +40"),
    ("labelled gen.", ("FedDM",), "up to +18"),
    ("labelled gen.", ("1,000 labelled images",), "–"),
]


def per_seed(runs: dict, cell: str, scope: str = "server-eval") -> dict[int, float]:
    """seed -> final accuracy (%) of the completed runs of ``cell``."""
    out = {}
    for r in runs.get(cell, []):
        value = r.final(scope, "accuracy")
        if value is not None:
            out[r.seed] = 100 * value
    return out


def cell_text(values: dict[int, float]) -> str:
    """mean ± std over seeds, marked with n below the three planned."""
    if not values:
        return "not run yet"
    text = fmt_mean_std(list(values.values()), 1)
    return f"{text} (n={len(values)})" if len(values) < len(SEEDS) else text


def setting_columns(runs: dict, ds: str, beta: str) -> dict[str, dict[int, float]]:
    table = {title: per_seed(runs, f"{ds}-{stem}-b{beta}", scope) for stem, scope, title in COLUMNS}
    table["1,000 labelled images"] = per_seed(runs, f"server-data-{ds}")
    return table


def claim_row(setting: str, table: dict, candidate: str, against: tuple, paper: str) -> str:
    """One verdict row: per-seed differences candidate - competitor (points)."""
    done = {name: table[name] for name in against if table[name]}
    if done:
        rival = max(done, key=lambda name: statistics.fmean(done[name].values()))
    else:
        rival = against[0]
    title = rival if len(against) == 1 else f"best of {'/'.join(against)}"
    if done and len(against) > 1:
        title += f" ({rival})"
    seeds = sorted(set(table[candidate]) & set(table[rival]))
    diffs = [table[candidate][s] - table[rival][s] for s in seeds]
    ours = fmt_mean_std(diffs, 1, empty="–")
    each = ", ".join(f"s{s}: {d:+.1f}" for s, d in zip(seeds, diffs)) or "–"
    word = paired_verdict(diffs, 1.0, len(SEEDS))
    claim = f"{candidate} > {title}"
    return f"| {setting} | {claim} | {paper} | {ours} (n={len(diffs)}) | {each} | {word} |"


def files_mu(ds: str) -> str:
    """The mu the grid's ``<ds>-fedprox.toml`` uses."""
    with open(HERE / f"{ds}-fedprox.toml", "rb") as fh:
        return str(float(tomllib.load(fh)["fedprox"]["proximal_mu"]))


def mu_scores(results: Path, ds: str) -> dict[str, tuple[float, float] | None]:
    """mu -> (validation accuracy %, validation loss) of the mu sweep's run, None if missing."""
    runs = by_cell(scan(results, LAYOUT)) if results.is_dir() else {}
    scores = {}
    for mu in MUS:
        done = [r for r in runs.get(f"{ds}-fedprox-mu{mu}", []) if r.seed == 0]
        accuracy = done[0].final("server-eval", "accuracy") if done else None
        scores[mu] = (
            None if accuracy is None else (100 * accuracy, done[0].final("server-eval", "loss"))
        )
    return scores


def chosen_mu(scores: dict[str, tuple[float, float] | None]) -> str | None:
    """The best validation accuracy, ties broken by the lower validation loss; None until
    every mu has run."""
    if any(v is None for v in scores.values()):
        return None
    return max(scores, key=lambda mu: (scores[mu][0], -scores[mu][1]))


def mu_lines(results: Path) -> list[str]:
    lines = [
        "**Choosing FedProx's mu** (`sweep-fedprox-mu.toml`: Dir(0.1), seed 0, the grid's "
        "rounds; final accuracy % on the validation rows, 10% of the training slice held out "
        "of every client, validation loss in brackets; the test split is never looked at). "
        "*best*: the highest accuracy, ties broken by the lower loss. **Bold**: the mu the "
        "`*-fedprox.toml` files use.",
        "",
        "| dataset | " + " | ".join(f"mu {mu}" for mu in MUS) + " | best | the files use |",
        "|---|" + "---:|" * len(MUS) + "---:|---:|",
    ]
    for ds, ds_name in DATASETS.items():
        scores = mu_scores(results, ds)
        used = files_mu(ds)
        shown = []
        for mu, v in scores.items():
            text = "not run yet" if v is None else f"{v[0]:.1f} ({v[1]:.4f})"
            shown.append(f"**{text}**" if v is not None and mu == used else text)
        best = chosen_mu(scores)
        note = used if best is None or best == used else f"{used} (**differs: rerun with {best}**)"
        lines.append(f"| {ds_name} | " + " | ".join(shown) + f" | {best or '–'} | {note} |")
    return lines


def synthesis_lines(runs: dict) -> list[str]:
    lines = [
        "**Synthesis cost** (server, per participating client and round, from "
        "`synthesis.csv`; one thread per process):",
        "",
        "| dataset | space | images per client | seconds per client | matching loss last/first |",
        "|---|---|---:|---:|---:|",
    ]
    for ds, ds_name in DATASETS.items():
        for stem in ("pixel", "generator"):
            seconds, ratio, images = [], [], []
            for beta in BETAS:
                for r in runs.get(f"{ds}-{stem}-b{beta}", []):
                    path = r.run_dir / "synthesis.csv"
                    if not path.is_file():
                        continue
                    with open(path, encoding="utf-8") as fh:
                        for row in csv.DictReader(fh):
                            seconds.append(float(row["seconds"]))
                            ratio.append(float(row["loss_last"]) / float(row["loss_first"]))
                            images.append(int(row["images"]))
            count = f"{statistics.fmean(images):.0f}" if images else "–"
            lines.append(
                f"| {ds_name} | {stem} | {count} | {fmt_mean_std(seconds, 2, 'not run yet')} | "
                f"{fmt_mean_std(ratio, 3, 'not run yet')} |"
            )
    return lines


def grid_runs(results: Path) -> dict:
    """cell -> runs, over the grid's folders that are committed."""
    runs: dict = {}
    for name in GRID_DIRS:
        if (results / name).is_dir():
            runs.update(by_cell(scan(results / name, LAYOUT)))
    return runs


def paired_text(a: dict[int, float], b: dict[int, float]) -> str:
    """a - b per shared seed: 'mean ± std (s0 .., s1 ..)', or '–' with no shared seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "–"
    diffs = [a[s] - b[s] for s in seeds]
    each = ", ".join(f"{d:+.1f}" for d in diffs)
    return f"{fmt_mean_std(diffs, 1)} ({each})"


def weighting_lines(runs: dict) -> list[str]:
    """SCAFFOLD's model step, uniform (the paper) against weighted by samples, paired."""
    lines = [
        "**SCAFFOLD's model step** (`sweep-scaffold-weighting.toml`): the paper's uniform "
        "mean of the clients' changes against the mean weighted by their training examples "
        '(`scaffold.weighting = "samples"`, as FedAvg and NIID-Bench\'s code weight), the '
        "same partitions, initial models and seeds. Final test accuracy (%); differences in "
        "points, paired per seed (seeds 0, 1, 2 in brackets).",
        "",
        "| setting | uniform | samples | samples - uniform | samples - FedAvg |",
        "|---|---:|---:|---:|---:|",
    ]
    for ds, ds_name in DATASETS.items():
        for beta in BETAS:
            table = setting_columns(runs, ds, beta)
            uniform, samples = table["SCAFFOLD"], table["SCAFFOLD, samples"]
            lines.append(
                f"| {ds_name}, beta {beta} | {cell_text(uniform)} | {cell_text(samples)} | "
                f"{paired_text(samples, uniform)} | {paired_text(samples, table['FedAvg'])} |"
            )
    return lines


def at_round(runs: dict, cell: str, round_: int) -> dict[int, float]:
    """seed -> test accuracy (%) after ``round_`` of the runs of ``cell`` that reached it."""
    out = {}
    for r in runs.get(cell, []):
        rounds, values = r.curve("server-eval", "accuracy")
        if round_ in rounds:
            out[r.seed] = 100 * values[rounds.index(round_)]
    return out


def epochs_lines(results: Path, grid: dict) -> list[str]:
    """The local-epochs probe: SCAFFOLD (samples) - FedAvg after the same round at E=2, E=10."""
    folder, rounds, beta = EPOCHS_PROBE
    probe = by_cell(scan(results / folder, LAYOUT)) if (results / folder).is_dir() else {}
    rows = {
        2: (
            at_round(grid, f"cifar10-scaffold-samples-b{beta}", rounds),
            at_round(grid, f"cifar10-fedavg-b{beta}", rounds),
        ),
        10: (
            at_round(probe, "cifar10-scaffold-samples-e10", rounds),
            at_round(probe, "cifar10-fedavg-e10", rounds),
        ),
    }
    seeds = sorted(set(rows[10][0]) & set(rows[10][1])) or [0, 1]  # the probe's seeds
    lines = [
        f"**SCAFFOLD with more local steps** (`sweep-scaffold-epochs.toml`, a probe: CIFAR-10, "
        f"beta {beta}, seeds {', '.join(map(str, seeds))}, SCAFFOLD weighted by "
        f"samples). Test accuracy (%) after round {rounds}; the gap paired per seed.",
        "",
        "| local epochs | FedAvg | SCAFFOLD, samples | SCAFFOLD - FedAvg |",
        "|---:|---:|---:|---:|",
    ]
    for epochs, (scaffold, fedavg) in rows.items():
        scaffold = {s: v for s, v in scaffold.items() if s in seeds}
        fedavg = {s: v for s, v in fedavg.items() if s in seeds}
        lines.append(
            f"| {epochs} | {fmt_mean_std(list(fedavg.values()), 1, empty='not run yet')} | "
            f"{fmt_mean_std(list(scaffold.values()), 1, empty='not run yet')} | "
            f"{paired_text(scaffold, fedavg)} |"
        )
    return lines


def grid_block(results: Path) -> str:
    """The grid block: FedProx's mu, the accuracy tables, the verdict rows, synthesis cost."""
    runs = grid_runs(results)
    lines = [
        "Generated by `experiments/distillation/report.py` from the committed runs in "
        "`results/` (`sweep.toml`: MNIST 45 rounds, CIFAR-10 60, syn_steps 10, 100 "
        "iterations). Final test accuracy (%, last round, 2,000 test images), mean ± sample "
        "std over seeds 0, 1, 2. *pixel*, *labelled gen.*: the distilled global surrogate "
        "(pixel space; through the generator trained on the server's 1,000 labelled images). "
        "*ResNet, ...*: the server-only ResNet-18 (width 8) trained on the same synthetic "
        "data, never broadcast. *SCAFFOLD, samples*: SCAFFOLD with its model step weighted "
        "by the clients' training examples (below).",
        "",
        *mu_lines(results / "fedprox-mu"),
        "",
    ]
    rows = []
    for ds, ds_name in DATASETS.items():
        lines += [
            f"**{ds_name}**",
            "",
            "| beta | " + " | ".join(title for _, _, title in COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS),
        ]
        for beta in BETAS:
            table = setting_columns(runs, ds, beta)
            lines.append(
                f"| {beta} | "
                + " | ".join(cell_text(table[title]) for _, _, title in COLUMNS)
                + " |"
            )
            rows += [claim_row(f"{ds_name}, beta {beta}", table, *c) for c in CLAIMS]
        control = per_seed(runs, f"server-data-{ds}")
        lines += [
            "",
            f"Control: the surrogate trained centrally on 1,000 labelled {ds_name} training "
            f"images, as many as the generator was trained on (`server-data-{ds}.toml`): "
            f"{cell_text(control)}.",
            "",
        ]
    lines += [
        *weighting_lines(runs),
        "",
        *epochs_lines(results, runs),
        "",
        "Verdict rows: paired per-seed differences of final test accuracy (percentage "
        "points; the same seed's partitions and initial model on both sides). The paper's "
        "figures are its headline claims (README, 'Paper'): up to +40 points over "
        "non-distillation FL and up to +18 over FedDM, at its own scale. " + RULE,
        "",
        "| setting | claim | paper | ours: mean ± std | per seed | verdict |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        *synthesis_lines(runs),
    ]
    if any(runs.values()):
        lines += ["", f"![accuracy per round](plots/{ACCURACY_PLOT.name})"]
    return "\n".join(lines)


def blocks(results: Path) -> list[tuple[str, str, str]]:
    """Every generated block of README.md: (start marker, end marker, text)."""
    return [(START, END, block(results)), (GRID_START, GRID_END, grid_block(results))]


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


def plateau_lines(runs_dir: Path) -> list[str]:
    """FedAvg's accuracy over 60 rounds on the grid's setting (``sweep-plateau.toml``)."""
    runs = by_cell(scan(runs_dir, LAYOUT)) if runs_dir.is_dir() else {}
    lines = [
        "FedAvg on the same setting for 60 rounds (`sweep-plateau.toml`, Dir(0.1), seed 0; "
        "server accuracy % on the 2,000 test images after the given round); *plateau "
        f"from*: {plateau.rule()}.",
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
        rounds, accuracy = done[0].curve("server-eval", "accuracy")
        curve = [100 * a for a in accuracy]
        shown = [f"{curve[r]:.1f}" if r < len(curve) else "–" for r in PLATEAU_ROUNDS]
        start = plateau.plateau_from(rounds, curve)
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


def plot(results: Path) -> None:
    """Mean accuracy per round of each column, one panel per dataset and beta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = grid_runs(results)
    if not any(runs.values()):
        return
    fig, axes = plt.subplots(len(DATASETS), len(BETAS), figsize=(9, 7), squeeze=False)
    for i, (ds, ds_name) in enumerate(DATASETS.items()):
        for j, beta in enumerate(BETAS):
            ax = axes[i][j]
            for stem, scope, title in COLUMNS:
                curves = [r.curve(scope, "accuracy") for r in runs.get(f"{ds}-{stem}-b{beta}", [])]
                curves = [dict(zip(*c)) for c in curves if c[0]]
                if not curves:
                    continue
                rounds = sorted(set.intersection(*(set(c) for c in curves)))
                mean = [100 * statistics.fmean(c[k] for c in curves) for k in rounds]
                style = "--" if scope == "server-model" else "-"
                ax.plot(rounds, mean, style, label=f"{title} (n={len(curves)})")
            ax.set_title(f"{ds_name}, beta {beta}")
            ax.set_xlabel("round")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    ACCURACY_PLOT.parent.mkdir(exist_ok=True)
    fig.savefig(ACCURACY_PLOT, dpi=90)
    plt.close(fig)


def draw_synthetic_sets(runs_dir: Path) -> list[Path]:
    """The last round's synthetic images of seed 0 at beta 0.1, per dataset and space, drawn
    small (8 images per class, low dpi) from the sweep's run directories."""
    import torch

    from fedsim_methods.distillation.images import save_grid

    drawn = []
    for ds in DATASETS:
        for stem in ("pixel", "generator"):
            sets = sorted((runs_dir / f"{ds}-{stem}-b0.1-seed0" / "synthetic").glob("round-*.pt"))
            if sets:
                saved = torch.load(sets[-1])
                out = HERE / "plots" / f"synthetic-{ds}-{stem}.png"
                save_grid(saved["images"], saved["labels"], out, max_per_class=8, dpi=50)
                drawn.append(out)
    return drawn


def check_mu(results: Path) -> str:
    """Why the grid's FedProx runs cannot start yet, or '' when the files use the chosen mu."""
    for ds in DATASETS:
        scores = mu_scores(results / "fedprox-mu", ds)
        missing = [mu for mu, v in scores.items() if v is None]
        if missing:
            return (
                f"{ds}: the mu sweep has no committed run for mu {', '.join(missing)} "
                "(STEPS=mu experiments/distillation/reproduce)"
            )
        best = chosen_mu(scores)
        if best != files_mu(ds):
            return f"{ds}-fedprox.toml uses proximal_mu = {files_mu(ds)}, the mu sweep chose {best}"
    return ""


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check-mu"]:
        problem = check_mu(RESULTS)
        print(f"FedProx's mu: {problem or 'the files use the chosen mu'}")
        return 1 if problem else 0
    if len(argv) > 2:
        raise SystemExit(__doc__)
    for start, end, text in blocks(RESULTS):
        replace_marked_block(HERE / "README.md", start, end, text)
        print(text, end="\n\n")
    plot(RESULTS)
    if len(argv) == 2:
        for path in draw_synthetic_sets(Path(argv[1])):
            print(f"drew {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
