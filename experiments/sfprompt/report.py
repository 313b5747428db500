"""Regenerate the SFPrompt results in README.md from the committed runs.

    python experiments/sfprompt/report.py [RESULTS_DIR]

Without RESULTS_DIR it reads ``experiments/sfprompt/results/``:

- ``costs/<method>-<split>-seed0/``: one round of ``splits.toml`` per split point (SFPrompt and
  SplitFed-V1): what the client computes (``client-flops``) and moves (``comm.csv``);
- ``label-skew/probe.csv`` and ``partitions.csv``: ``label_skew.py``'s FedAvg of a linear
  classifier on frozen features;
- ``label-skew/<variant>-seed<k>/``: the runs of ``label-skew.toml`` (Dirichlet 0.5);
- ``lr/<variant>-lr<rate>-seed0/``: ``lr.toml``'s learning-rate selection (bf16, as the grid);
- ``lr-fp32/<variant>-lr<rate>-seed0/``: ``lr-fp32.toml``, the same grid in fp32 (run first);
- ``oscillation/<variant>-seed0/``: ``oscillation.toml``, where SFPrompt's round-to-round
  alternation comes from;
- ``main/<variant>-<partitioning>-seed<k>/``: ``sweep.toml``, the converged-scale grid.

``python -m fedsim.results.compact runs/sfprompt-costs experiments/sfprompt/results/costs
--layout "{cell}-seed{seed}"`` (and the same for ``runs/sfprompt-skew``) adds finished runs;
``tests/test_reports.py`` regenerates the block from them byte for byte.
``python experiments/sfprompt/report.py --check-lr`` says whether every variant file trains at
the rate ``lr.toml`` chose for it (``reproduce``'s grid step waits for that). Only completed runs
count; a verdict with fewer than three seeds is *pending*.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.results import plateau  # noqa: E402
from fedsim.results.cells import (  # noqa: E402
    RunResult,
    by_cell,
    fmt_mean_std,
    mean_curve,
    scan,
)
from fedsim.results.readme import replace_marked_block, shown_path  # noqa: E402
from fedsim.results.verdict import RULE, paired_verdict  # noqa: E402

RESULTS = HERE / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"
LAYOUT = "{cell}-seed{seed}"
SEEDS = (0, 1, 2)
PLOT = HERE / "plots" / "label-skew.png"
LR_PLOT = HERE / "plots" / "lr-curves.png"
CURVE_ROUNDS = (5, 10, 20, 30)  # the rounds a curve table shows
SCORE_ROUNDS = 5  # a run's score: the mean accuracy of its last evaluations
BYTES_PER_WEIGHT = 4  # float32

SPLITS = {
    "0-0": "0 / 0 (the paper's: embeddings + prompts, classifier)",
    "1-1": "1 / 1",
    "2-2": "2 / 2",
}
COST_METHODS = {"sfprompt": "SFPrompt", "splitfed": "SplitFed-V1"}
SKEW_VARIANTS = {
    "sfprompt-tau0.0": "SFPrompt",
    "sfprompt-tau1.0": "SFPrompt + logit adjustment",
    "prompt-tuning-tau0.0": "federated prompt tuning",
    "prompt-tuning-tau1.0": "federated prompt tuning + logit adjustment",
    "sfprompt-centred": "SFPrompt + feature centring",
    "prompt-tuning-centred": "federated prompt tuning + feature centring",
    "full-finetune": "federated full fine-tuning",
}
# (better, worse, what the row claims): paired per-seed differences of balanced accuracy
SKEW_CLAIMS = [
    ("sfprompt-tau1.0", "sfprompt-tau0.0", "logit adjustment helps SFPrompt"),
    ("prompt-tuning-tau1.0", "prompt-tuning-tau0.0", "logit adjustment helps prompt tuning"),
    ("sfprompt-centred", "sfprompt-tau0.0", "feature centring helps SFPrompt"),
    ("prompt-tuning-centred", "prompt-tuning-tau0.0", "feature centring helps prompt tuning"),
    ("full-finetune", "sfprompt-tau0.0", "full fine-tuning beats SFPrompt"),
    ("full-finetune", "sfprompt-tau1.0", "full fine-tuning beats SFPrompt + adjustment"),
    ("full-finetune", "sfprompt-centred", "full fine-tuning beats SFPrompt + centring"),
]
COLLAPSED = 0.95  # a round whose global model gives one class this share of its predictions
# The paper's figures (Cao et al. 2024, abstract and Sec. 5): client compute as a share of
# federated full fine-tuning's, and the communication saving against it.
PAPER_FLOPS_SHARE = 0.0046
PAPER_TRAFFIC_SAVING = 0.53
COMPARABLE = 1.0  # points: "comparable accuracy" = at most this much below full fine-tuning
LR_FAMILIES = {  # lr.toml's variants: the ablations use SFPrompt's chosen rate
    "sfprompt": "SFPrompt (and its ablations)",
    "prompt-tuning": "federated prompt tuning",
    "full-finetune": "federated full fine-tuning",
    "splitfed": "SplitFed-V1",
}
MAIN_VARIANTS = {
    "sfprompt": "SFPrompt",
    "splitfed": "SplitFed-V1",
    "full-finetune": "federated full fine-tuning",
    "prompt-tuning": "federated prompt tuning",
    "no-prune": "SFPrompt without pruning",
    "no-local-loss": "SFPrompt without local-loss update",
    "global-prune": "SFPrompt, global EL2N (paper's rule)",
}
PARTITIONINGS = {"iid": "IID", "dir0.5": "Dir(0.5)", "dir0.1": "Dir(0.1)"}


# ------------------------------------------------------------------ costs per split


def traffic(run: RunResult) -> dict[str, float]:
    """Bytes one sampled client moves per round: model (trainable arrays down + up) and split
    (activations + gradients), averaged over the run's (round, client) pairs."""
    totals: dict[str, float] = defaultdict(float)
    pairs = set()
    with open(run.run_dir / "comm.csv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            pairs.add((row["round"], row["partition_id"]))
            kind = "split" if row["stage"].startswith("train.split") else "model"
            totals[kind] += int(row["bytes"])
    n = max(len(pairs), 1)
    return {kind: totals[kind] / n for kind in ("model", "split")}


def train_value(run: RunResult, key: str) -> float:
    values = [r[key] for r in run.rows if r["scope"] == "train" and key in r]
    return statistics.fmean(values) if values else float("nan")


def megabytes(n: float) -> str:
    return f"{n / 1e6:,.2f}"


def share(ratio: float) -> str:
    """A percentage with 2 significant digits below 1% (the paper's split is far below)."""
    value = 100 * ratio
    return f"{value:.1f}%" if value >= 1 else f"{value:.2g}%"


def costs_block(results: Path) -> list[str]:
    runs = {name: done[0] for name, done in by_cell(scan(results / "costs", LAYOUT)).items()}
    lines = [
        "### What the client computes and moves, per split",
        "",
        "One round of `splits.toml` per split point (seed 0; per-round costs do not depend "
        "on the round), per sampled client and round. FLOPs are counted by "
        "`torch.utils.flop_counter` on what the client runs (matmuls; an embedding lookup "
        "costs none) against one epoch of federated full fine-tuning over the same client's "
        "samples. Traffic is `comm.csv`: the model (the client's trainable arrays, down + up) "
        "and the split (activations up, gradients down, 128-byte headers included); full "
        "fine-tuning moves every weight down and up (4 bytes each).",
        "",
        "| split (client head / tail blocks) | method | client GFLOPs | vs full FT "
        "| client trainable | server trainable | model MB | split MB | traffic vs full FT |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for split, title in SPLITS.items():
        for method, label in COST_METHODS.items():
            run = runs.get(f"{method}-{split}")
            if run is None:
                lines.append(f"| {title} | {label} | not run yet | | | | | | |")
                continue
            moved = traffic(run)
            full = full_traffic(run)
            lines.append(
                f"| {title} | {label} | {train_value(run, 'client-flops') / 1e9:,.4g} "
                f"| {share(train_value(run, 'flops-ratio'))} "
                f"| {train_value(run, 'trainable-params'):,.0f} "
                f"| {train_value(run, 'server-trainable-params'):,.0f} "
                f"| {megabytes(moved['model'])} | {megabytes(moved['split'])} "
                f"| {share((moved['model'] + moved['split']) / full)} |"
            )
    lines += ["", *cost_verdicts(runs.get("sfprompt-0-0"))]
    return lines


def full_traffic(run: RunResult) -> float:
    """Bytes federated full fine-tuning moves per client and round: every weight, both ways."""
    return 2 * BYTES_PER_WEIGHT * train_value(run, "full-ft-params")


def cost_verdicts(run: RunResult | None) -> list[str]:
    """The compute and communication claims at the paper's split. Both are counts, not
    samples: one seed's round measures them (a rerun gives the same values)."""
    lines = [
        "Verdict rows at the paper's split (counts; *holds* when ours is at least as good as "
        "the paper's figure):",
        "",
        "| claim | paper | ours (0 / 0, seed 0) | verdict |",
        "|---|---|---|---|",
    ]
    if run is None:
        return [*lines, "| client compute vs full FT | ~0.46% | not run yet | pending |"]
    flops = train_value(run, "flops-ratio")
    moved = traffic(run)
    saving = 1 - (moved["model"] + moved["split"]) / full_traffic(run)
    compute_word = "holds" if flops <= PAPER_FLOPS_SHARE else "does not hold"
    traffic_word = "holds" if saving >= PAPER_TRAFFIC_SAVING else "does not hold"
    return [
        *lines,
        f"| client compute vs full FT | ~{PAPER_FLOPS_SHARE:.2%} | {share(flops)} "
        f"| {compute_word} |",
        f"| communication saved vs full FT | ~{PAPER_TRAFFIC_SAVING:.0%} | {saving:.1%} "
        f"| {traffic_word} |",
    ]


# ------------------------------------------------------------------ learning rates


def lr_grid() -> dict[str, list[float]]:
    """Each variant family's learning rates, as ``lr.toml`` lists them."""
    import tomllib

    sweep = tomllib.loads((HERE / "lr.toml").read_text(encoding="utf-8"))
    return {
        Path(experiment).stem: sorted(group["grid"]["client.lr"])
        for group in sweep["group"]
        for experiment in group["experiments"]
    }


def file_lr(family: str) -> float:
    """The learning rate the variant's own file (and so ``sweep.toml``) trains with."""
    import tomllib

    path = HERE / f"{family}.toml"
    while True:  # the nearest file along the `extends` chain that sets it
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        if "lr" in raw.get("client", {}):
            return raw["client"]["lr"]
        path = path.parent / raw["extends"]


def chosen_lrs(results: Path) -> dict[str, float | None]:
    """Each family's best rate on the validation rows, once every rate of its grid ran
    (ties: the smaller rate); None while some are missing."""
    cells = by_cell(scan(results / "lr", LAYOUT))
    chosen: dict[str, float | None] = {}
    for family, rates in lr_grid().items():
        scores = lr_scores(cells, family)
        complete = all(rate in scores for rate in rates)
        chosen[family] = max(scores, key=lambda r: (scores[r], -r)) if complete else None
    return chosen


def lr_scores(cells: dict, family: str) -> dict[float, float]:
    scores = {}
    for name, done in cells.items():
        if name.startswith(f"{family}-lr") and done:
            rate = float(name.removeprefix(f"{family}-lr"))
            scores[rate] = score(done[0])
    return scores


def lr_block(results: Path) -> list[str]:
    cells = by_cell(scan(results / "lr", LAYOUT))
    grid, chosen = lr_grid(), chosen_lrs(results)
    lines = [
        "### Learning rates",
        "",
        "`lr.toml`: each variant family over its grid of rates, the same rounds, IID, seed 0, "
        "in bf16 as the grid runs (`base.toml`: `sfprompt.precision`), "
        "scored on the 1,025 validation rows held out of the training split (accuracy %, the "
        f"mean of the last {SCORE_ROUNDS} rounds' evaluations: SFPrompt's curve alternates from "
        "one round to the next, so a single round's value is a coin toss on the phase; the "
        "test split is never looked at). The best rate is chosen once every rate of the "
        "grid has run (ties: the smaller rate); *in the files* is the rate the variant's file, "
        "and so `sweep.toml`, trains with.",
        "",
        "| variant | rate: validation accuracy (%) | chosen | in the files |",
        "|---|---|---|---|",
    ]
    for family, title in LR_FAMILIES.items():
        scores = lr_scores(cells, family)
        best = chosen[family]
        text = ", ".join(
            f"**{rate:g}: {scores[rate]:.1f}**" if rate == best
            else f"{rate:g}: {scores[rate]:.1f}" if rate in scores
            else f"{rate:g}: not run yet"
            for rate in grid[family]
        )  # fmt: skip
        done = sum(rate in scores for rate in grid[family])
        pick = f"{best:g}" if best is not None else f"pending ({done} of {len(grid[family])} run)"
        in_files = f"{file_lr(family):g}"
        if best is not None and file_lr(family) != best:
            in_files += " (not the chosen rate)"
        lines.append(f"| {title} | {text} | {pick} | {in_files} |")
    return lines + ["", *lr_curve_lines(results)]


def lr_run(cells: dict, family: str, rate: float) -> RunResult:
    """The completed run of ``family`` at ``rate`` (cell names spell rates as the sweep does)."""
    for name, done in cells.items():
        if done and name.startswith(f"{family}-lr") and float(name[len(family) + 3 :]) == rate:
            return done[0]
    raise KeyError(f"{family} at lr {rate:g}: no completed run")


def best_so_far(cells: dict, family: str) -> float | None:
    """The family's best rate among those that ran (the chosen one once all have)."""
    scores = lr_scores(cells, family)
    return max(scores, key=lambda r: (scores[r], -r)) if scores else None


def curve_cells(run: RunResult) -> tuple[list[str], str, str]:
    """Accuracy % after CURVE_ROUNDS, the last 10 rounds' mean and where it plateaus."""
    rounds = [row["round"] for row in evals(run)]
    accuracy = [100 * row["accuracy"] for row in evals(run)]
    at = dict(zip(rounds, accuracy, strict=True))
    shown = [f"{at[r]:.1f}" if r in at else "–" for r in CURVE_ROUNDS]
    level = f"{statistics.fmean(accuracy[-plateau.TAIL :]):.1f}"
    start = plateau.plateau_from(rounds, accuracy)
    return shown, level, f"round {start}" if start else "not yet"


def lr_curve_lines(results: Path) -> list[str]:
    """Does each variant's curve flatten within the grid's rounds? (the issue: rounds until
    full fine-tuning's curve plateaus, shown)"""
    cells = by_cell(scan(results / "lr", LAYOUT))
    lines = [
        "The same runs' curves at each variant's best rate so far (validation accuracy % after "
        f"the given round; *plateau from*: {plateau.rule()}; `plots/{LR_PLOT.name}` shows "
        "every rate):",
        "",
        "| variant | rate | "
        + " | ".join(f"round {r}" for r in CURVE_ROUNDS)
        + f" | last {plateau.TAIL} rounds | plateau from |",
        "|---|---:|" + "---:|" * (len(CURVE_ROUNDS) + 2),
    ]
    for family, title in LR_FAMILIES.items():
        rate = best_so_far(cells, family)
        if rate is None:
            lines.append(f"| {title} | not run yet |" + " |" * (len(CURVE_ROUNDS) + 2))
            continue
        shown, level, start = curve_cells(lr_run(cells, family, rate))
        lines.append(f"| {title} | {rate:g} | " + " | ".join([*shown, level, start]) + " |")
    return [*lines, "", f"![validation accuracy per round at every rate](plots/{LR_PLOT.name})"]


# ------------------------------------------------------------------ fp32 and bf16


def precision_block(results: Path) -> list[str]:
    """The learning-rate grid in fp32 (``lr-fp32.toml``, run first) against the same runs
    in bf16 (``lr.toml``): what the move to bf16 changed, rate by rate."""
    fp32 = by_cell(scan(results / "lr-fp32", LAYOUT))
    bf16 = by_cell(scan(results / "lr", LAYOUT))
    lines = [
        "### fp32 and bf16",
        "",
        "The learning-rate grid was first run in fp32 (`lr-fp32.toml`); the experiment then "
        'moved to `sfprompt.precision = "bf16"` and `client.fused = true` (the encoder '
        "blocks under bfloat16 autocast, AdamW's fused kernel; weights, losses, traffic and "
        "FLOP counts stay float32; CPU time per round: `bench/sfprompt_precision.py`, "
        "docs/sfprompt.md). The same runs in "
        "both, scored as above (validation accuracy %, mean of the last "
        f"{SCORE_ROUNDS} evaluations); *bf16 - fp32* in points; wall time of the whole run "
        "(one thread, two runs sharing the machine's 2 cores).",
        "",
        "| variant | rate | fp32 | bf16 | bf16 - fp32 | wall time fp32 / bf16 (min) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for family, title in LR_FAMILIES.items():
        before, after = lr_scores(fp32, family), lr_scores(bf16, family)
        for rate in lr_grid()[family]:
            if rate not in before and rate not in after:
                continue
            a = f"{before[rate]:.1f}" if rate in before else "not run"
            b = f"{after[rate]:.1f}" if rate in after else "not run yet"
            both = rate in before and rate in after
            # + 0.0: a difference that rounds to zero reads +0.0, never -0.0
            diff = f"{round(after[rate] - before[rate], 1) + 0.0:+.1f}" if both else "–"
            minutes = [
                f"{lr_run(cells, family, rate).summary['wall_time_s'] / 60:.0f}"
                if rate in scores else "–"
                for cells, scores in ((fp32, before), (bf16, after))
            ]  # fmt: skip
            lines.append(f"| {title} | {rate:g} | {a} | {b} | {diff} | {' / '.join(minutes)} |")
    return lines


# ------------------------------------------------------------------ round-to-round alternation

OSCILLATION_VARIANTS = {  # oscillation.toml's cells
    "sfprompt": "SFPrompt",
    "no-local-loss": "SFPrompt without local-loss update",
    "sfprompt-centred": "SFPrompt + feature centring",
}


def sign_changes(values: list[float]) -> int:
    """How often the round-to-round change flips sign: len(values) - 2 for a series that
    goes up, down, up, ... every round; 0 for a monotone one."""
    steps = [b - a for a, b in zip(values, values[1:])]
    return sum((a > 0) != (b > 0) for a, b in zip(steps, steps[1:]) if a and b)


def oscillation_block(results: Path) -> list[str]:
    cells = by_cell(scan(results / "oscillation", LAYOUT))
    lines = [
        "### Round-to-round alternation",
        "",
        "`oscillation.toml`: SFPrompt at 3e-3 (the rate of `lr-fp32.toml` whose curve alternates "
        "most) for 10 rounds, IID, seed 0, "
        "scored on the validation rows after every round, and the same run with one part "
        "changed. *Flips*: how often the round-to-round change of accuracy changes sign "
        "(8 of 8: up, down, up, ... every round; 0: monotone); *mean change*: the mean size "
        "of the round-to-round change from round 3 on (points). *Class-1 share*: the range "
        "of the share of validation rows predicted as class 1 (fresh) from round 3 on; "
        "55.4% of the rows are class 1.",
        "",
        "| variant | validation accuracy (%) after rounds 1-10 | flips | mean change | "
        "class-1 share |",
        "|---|---|---:|---:|---:|",
    ]
    for name, title in OSCILLATION_VARIANTS.items():
        done = cells.get(name, [])
        if not done:
            lines.append(f"| {title} | not run yet | – | – | – |")
            continue
        rows = evals(done[0])
        accuracy = [100 * row["accuracy"] for row in rows]
        shares = [row["pred-share.1"] for row in rows[2:]]
        curve = " ".join(f"{a:.1f}" for a in accuracy)
        flips = f"{sign_changes(accuracy)} of {len(accuracy) - 2}"
        later = accuracy[2:]
        change = statistics.fmean(abs(b - a) for a, b in zip(later, later[1:]))
        share_range = f"{min(shares):.2f}-{max(shares):.2f}"
        lines.append(f"| {title} | {curve} | {flips} | {change:.1f} | {share_range} |")
    return lines


# ------------------------------------------------------------------ the converged grid


def main_block(results: Path) -> list[str]:
    cells = {
        name: {run.seed: run for run in done}
        for name, done in by_cell(scan(results / "main", LAYOUT)).items()
    }
    lines = [
        "### At the converged scale",
        "",
        f"`sweep.toml`: test accuracy (%) on 1,000 test snippets, the mean of the last "
        f"{SCORE_ROUNDS} rounds' evaluations (as in *Learning rates*), mean ± sample std over "
        "seeds 0, 1, 2; balanced accuracy in brackets.",
        "",
        *variant_table(cells, scores_cell, "not run yet"),
        "",
        f"Where each curve flattens (*plateau from*: {plateau.rule()}, on the mean test "
        "accuracy over the seeds; *not yet*: no round meets it, the curve still moves by more "
        "at its end):",
        "",
        *variant_table(cells, plateau_cell, "–"),
    ]
    lines += [
        "",
        f"Accuracy verdict rows: paired per-seed differences SFPrompt - full fine-tuning "
        f"(points, of the scores above). The paper's claim is *comparable* accuracy: *holds* "
        f"when the mean difference is above -{COMPARABLE:g} point or every seed is; *does not "
        f"hold* when every seed is more than {COMPARABLE:g} point below and the mean's gap "
        "exceeds the std; *inconclusive* otherwise; *pending* below three seeds.",
        "",
        "| partitioning | ours: mean ± std | per seed | verdict |",
        "|---|---|---|---|",
    ]
    for key, title in PARTITIONINGS.items():
        a, b = cells.get(f"sfprompt-{key}", {}), cells.get(f"full-finetune-{key}", {})
        seeds = sorted(set(a) & set(b))
        diffs = [score(a[s]) - score(b[s]) for s in seeds]
        ours = fmt_mean_std(diffs, 1, empty="–", sep=" ± ")
        each = ", ".join(f"s{s}: {d:+.1f}" for s, d in zip(seeds, diffs, strict=True)) or "–"
        lines.append(f"| {title} | {ours} (n={len(diffs)}) | {each} | {comparable(diffs)} |")
    return lines


def variant_table(
    cells: dict[str, dict[int, RunResult]], text: Callable[[list[RunResult]], str], empty: str
) -> list[str]:
    """A variant x partitioning table of the converged grid: ``text`` of each cell's runs."""
    lines = [
        "| variant | " + " | ".join(PARTITIONINGS.values()) + " |",
        "|---|" + "---:|" * len(PARTITIONINGS),
    ]
    for stem, title in MAIN_VARIANTS.items():
        runs = [list(cells.get(f"{stem}-{key}", {}).values()) for key in PARTITIONINGS]
        row = [text(done) if done else empty for done in runs]
        lines.append(f"| {title} | " + " | ".join(row) + " |")
    return lines


def scores_cell(runs: list[RunResult]) -> str:
    acc = fmt_mean_std([score(r) for r in runs], 1)
    bal = fmt_mean_std([score(r, "balanced-accuracy") for r in runs], 1)
    n = f" (n={len(runs)})" if len(runs) < len(SEEDS) else ""
    return f"{acc} [{bal}]{n}"


def plateau_cell(runs: list[RunResult]) -> str:
    """Where the mean test-accuracy curve over the seeds flattens."""
    rounds, mean, _ = mean_curve(runs, "server-eval", "accuracy")
    start = plateau.plateau_from(rounds, [100 * m for m in mean])
    return f"round {start}" if start else "not yet"


def comparable(diffs: list[float]) -> str:
    if len(diffs) < len(SEEDS):
        return f"pending (n={len(diffs)})"
    mean = statistics.fmean(diffs)
    if mean > -COMPARABLE or all(d > -COMPARABLE for d in diffs):
        return "holds"
    # worse by more than the margin in every seed, by more than the seeds' spread
    if all(d < -COMPARABLE for d in diffs) and -COMPARABLE - mean > statistics.stdev(diffs):
        return "does not hold"
    return "inconclusive"


# ------------------------------------------------------------------ label skew


def probe_rows(results: Path) -> dict[str, dict[int, list[dict]]]:
    """probe.csv as {row: {seed: [round rows in order]}}."""
    rows: dict[str, dict[int, list[dict]]] = {}
    for row in skew_table(results, "probe.csv"):
        rows.setdefault(row["row"], {}).setdefault(int(row["seed"]), []).append(row)
    return rows


def skew_table(results: Path, name: str) -> list[dict]:
    """Rows of one of ``label_skew.py``'s tables (none when it has not run)."""
    path = results / "label-skew" / name
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def partitions_line(results: Path) -> str:
    rows = skew_table(results, "partitions.csv")
    if not rows:
        return ""
    skewed = [max(float(r["share_1"]), 1 - float(r["share_1"])) >= 0.8 for r in rows]
    sizes = [int(r["samples"]) for r in rows]
    return (
        f"The partitions ({len(rows)} clients over {len(SEEDS)} seeds, `partitions.csv`): "
        f"{sum(skewed)} of {len(rows)} clients hold at least 80% of one class; sizes "
        f"{min(sizes)} to {max(sizes)} snippets."
    )


def features_line(results: Path) -> str:
    rows = skew_table(results, "features.csv")
    if not rows:
        return ""
    norms = [float(r["mean_norm"]) for r in rows]
    spreads = [float(r["mean_distance_to_mean"]) for r in rows]
    return (
        "The frozen encoder's pooled features (`features.csv`): the norm of their mean is "
        f"{fmt_mean_std(norms, 2)}, their mean distance from it {fmt_mean_std(spreads, 2)} "
        f"(over the {len(rows)} seeds' training slices)."
    )


def probe_block(results: Path) -> list[str]:
    table = probe_rows(results)
    if not table:
        return ["`label_skew.py` has not been run yet."]
    lines = [
        features_line(results),
        "",
        "| FedAvg of a linear classifier on frozen features | final accuracy (%) "
        "| final balanced accuracy (%) | collapsed rounds |",
        "|---|---:|---:|---:|",
    ]
    for name, seeds in table.items():
        finals = [rows[-1] for rows in seeds.values()]
        acc = fmt_mean_std([100 * float(r["accuracy"]) for r in finals], 1)
        bal = fmt_mean_std([100 * float(r["balanced_accuracy"]) for r in finals], 1)
        every = [r for rows in seeds.values() for r in rows]
        collapsed = sum(float(r["top_share"]) >= COLLAPSED for r in every)
        lines.append(f"| {name} | {acc} | {bal} | {collapsed} of {len(every)} |")
    return lines


def skew_cells(results: Path) -> dict[str, dict[int, RunResult]]:
    cells = by_cell(scan(results / "label-skew", LAYOUT))
    return {name: {run.seed: run for run in done} for name, done in cells.items()}


def evals(run: RunResult) -> list[dict]:
    return [r for r in run.rows if r["scope"] == "server-eval" and r["round"] > 0]


def score(run: RunResult, key: str = "accuracy") -> float:
    """A run's accuracy (%) as the lr choice and the converged grid score it: the mean of its
    last SCORE_ROUNDS evaluations."""
    return 100 * statistics.fmean(row[key] for row in evals(run)[-SCORE_ROUNDS:])


def top_share(row: dict) -> float:
    return max(v for k, v in row.items() if k.startswith("pred-share."))


def bias_gap(runs: list[RunResult]) -> float:
    """The largest |bias_1 - bias_0| of the global classifier after any round of ``runs``:
    how much of a collapse the bias alone could explain."""
    gaps = [
        abs(row["classifier-bias.1"] - row["classifier-bias.0"])
        for run in runs
        for row in run.rows
        if row["scope"] == "train" and "classifier-bias.1" in row
    ]
    return max(gaps, default=float("nan"))


def skew_block(results: Path) -> list[str]:
    cells = skew_cells(results)
    lines = [
        "| Dirichlet(0.5), 8 rounds | final accuracy (%) | final balanced accuracy (%) "
        "| collapsed rounds | label share of class 1: data / kept | largest bias gap |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, title in SKEW_VARIANTS.items():
        runs = list(cells.get(name, {}).values())
        if not runs:
            lines.append(f"| {title} | not run yet | | | | |")
            continue
        acc = fmt_mean_std([100 * evals(r)[-1]["accuracy"] for r in runs], 1)
        bal = fmt_mean_std([100 * evals(r)[-1]["balanced-accuracy"] for r in runs], 1)
        rounds = [row for r in runs for row in evals(r)]
        collapsed = sum(top_share(row) >= COLLAPSED for row in rounds)
        data = statistics.fmean(train_value(r, "label-share.1") for r in runs)
        kept = statistics.fmean(train_value(r, "kept-label-share.1") for r in runs)
        n = f" (n={len(runs)})" if len(runs) < len(SEEDS) else ""
        lines.append(
            f"| {title}{n} | {acc} | {bal} | {collapsed} of {len(rounds)} "
            f"| {data:.3f} / {kept:.3f} | {bias_gap(runs):.3f} |"
        )
    lines += [
        "",
        "Verdict rows: paired per-seed differences of final balanced accuracy (percentage "
        "points; the same seed's partitions, slice and initial model on both sides). " + RULE,
        "",
        "| claim | ours: mean ± std | per seed | verdict |",
        "|---|---|---|---|",
    ]
    for better, worse, claim in SKEW_CLAIMS:
        a, b = cells.get(better, {}), cells.get(worse, {})
        seeds = sorted(set(a) & set(b))
        diffs = [
            100 * (evals(a[s])[-1]["balanced-accuracy"] - evals(b[s])[-1]["balanced-accuracy"])
            for s in seeds
        ]
        ours = fmt_mean_std(diffs, 1, empty="–", sep=" ± ")
        each = ", ".join(f"s{s}: {d:+.1f}" for s, d in zip(seeds, diffs, strict=True)) or "–"
        word = paired_verdict(diffs, 1.0, len(SEEDS))
        lines.append(f"| {claim} | {ours} (n={len(diffs)}) | {each} | {word} |")
    return lines


# ------------------------------------------------------------------ the block


def block(results: Path) -> str:
    """The README's results block, from ``results`` (the committed runs by default)."""
    lines = [
        f"Generated by `experiments/sfprompt/report.py {shown_path(results, ROOT)}` from the "
        "committed runs.",
        "",
        *costs_block(results),
        "",
        *lr_block(results),
        "",
        *precision_block(results),
        "",
        *oscillation_block(results),
        "",
        *main_block(results),
        "",
        "### Label skew",
        "",
        "Balanced accuracy is the mean recall of the two classes: a model that predicts one "
        "class scores 50% whatever the test split's class mix. A round is *collapsed* when "
        "one class takes at least "
        f"{COLLAPSED:.0%} of the global model's test predictions.",
        "",
        partitions_line(results),
        "",
        *probe_block(results),
        "",
        *skew_block(results),
        "",
        f"![balanced accuracy per round under label skew](plots/{PLOT.name})",
    ]
    return "\n".join(lines)


def plot(results: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = skew_cells(results)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, title in SKEW_VARIANTS.items():
        runs = list(cells.get(name, {}).values())
        if not runs:
            continue
        curves = [[100 * row["balanced-accuracy"] for row in evals(r)] for r in runs]
        length = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
        ax.plot(range(1, length + 1), mean, marker="o", label=f"{title} (n={len(runs)})")
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("round")
    ax.set_ylabel("balanced test accuracy % (mean over seeds)")
    ax.set_title("Dirichlet(0.5), 20 clients, 5 per round")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, metadata={"Software": None})
    plt.close(fig)


def plot_lr_curves(results: Path, out: Path) -> None:
    """One panel per variant family: validation accuracy per round at each rate that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = by_cell(scan(results / "lr", LAYOUT))
    fp32 = by_cell(scan(results / "lr-fp32", LAYOUT))
    grid = lr_grid()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharey=True)
    for ax, (family, title) in zip(axes.flat, LR_FAMILIES.items(), strict=True):
        scores, before = lr_scores(cells, family), lr_scores(fp32, family)
        for i, rate in enumerate(grid[family]):
            for runs, ran, style, label in (
                (cells, scores, "-", f"lr {rate:g}"),
                (fp32, before, ":", f"lr {rate:g}, fp32"),
            ):
                if rate not in ran:
                    continue
                rows = evals(lr_run(runs, family, rate))
                ax.plot(
                    [row["round"] for row in rows],
                    [100 * row["accuracy"] for row in rows],
                    ls=style,
                    marker="." if style == "-" else None,
                    color=f"C{i}",
                    label=label,
                )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        if scores or before:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy %")
    fig.suptitle(
        "lr.toml (bf16; dotted: lr-fp32.toml): IID, seed 0, 1,025 validation rows", fontsize=10
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, metadata={"Software": None})
    plt.close(fig)


def check_lr(results: Path) -> str:
    """Why the converged grid cannot start yet, or '' when every variant's file trains at
    the rate lr.toml chose for it."""
    chosen, grid = chosen_lrs(results), lr_grid()
    for family in LR_FAMILIES:
        if chosen[family] is None:
            done = len(lr_scores(by_cell(scan(results / "lr", LAYOUT)), family))
            return (
                f"{family}: {done} of the {len(grid[family])} rates of lr.toml have a "
                "committed run (STEPS=lr experiments/sfprompt/reproduce)"
            )
        if file_lr(family) != chosen[family]:
            used, best = file_lr(family), chosen[family]
            return f"{family}.toml trains at lr {used:g}, lr.toml chose {best:g}"
    return ""


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check-lr"]:
        problem = check_lr(RESULTS)
        print(f"learning rates: {problem or 'every variant file uses its chosen rate'}")
        return 1 if problem else 0
    results = Path(argv[1]) if len(argv) > 1 else RESULTS
    text = block(results)
    replace_marked_block(HERE / "README.md", START, END, text)
    plot(results, PLOT)
    plot_lr_curves(results, LR_PLOT)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
