"""Regenerate the FedIT results (table, verdict rows, plots) in README.md from runs.

Usage: python experiments/fedit/report.py [RUNS_DIR [BLOCK]]   (what `reproduce` calls last)
Reads RUNS_DIR/{fedit,fedit-exact,central,local<k>}-seed<s>/ (as `fedsim sweep
experiments/fedit/sweep.toml` or `sweep-tasks.toml` writes them; default: the committed
compact runs in experiments/fedit/results/) and rewrites the block between the results
markers of README.md (BLOCK "chatterbot", the default, or "tasks" for the langtest_tasks
runs); plots go to experiments/fedit/plots/ (prefixed "tasks_" for BLOCK "tasks").

What the table needs beyond the run files (the base model's size, each local client's
categories) is looked up once, with the assets, and kept beside the runs in ``model.csv``
and ``clients.csv``, so ``block()`` reads files only: ``tests/test_reports.py`` regenerates the
committed block from them byte for byte. Nothing is typed by hand: a missing run is shown as
missing, an unfinished one as unfinished.
"""

from __future__ import annotations

import csv
import re
import statistics
import sys
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.config.load import load_run_config  # noqa: E402
from fedsim.results.cells import RunResult, by_cell, fmt_mean_std, scan  # noqa: E402
from fedsim.results.readme import replace_marked_block, shown_path  # noqa: E402
from fedsim.results.verdict import RULE, paired_verdict  # noqa: E402
from fedsim.results.writer import read_metrics  # noqa: E402

LAYOUT = "{cell}-seed{seed}"  # the sweep files' layout
RESULTS = HERE / "results"  # the committed compact runs of sweep.toml (chatterbot)
SEEDS = (0, 1, 2)
MODEL_TABLE, CLIENT_TABLE = "model.csv", "clients.csv"

MARKERS = {
    "chatterbot": ("<!-- results:start -->", "<!-- results:end -->", ""),
    "tasks": ("<!-- results-tasks:start -->", "<!-- results-tasks:end -->", "tasks_"),
}
METRICS = [
    ("loss", "held-out loss ↓"),
    ("category_loss", "mean over categories ↓"),
    ("perplexity", "perplexity ↓"),
    ("rouge_l", "ROUGE-L ↑"),
    ("exact_match", "exact match ↑"),
]
START, END = MARKERS["chatterbot"][:2]
# (better, worse, metric, lower is better): the rows of the paired verdict table
CLAIMS = [
    ("fedit", "local", "loss", True),
    ("fedit", "local", "category_loss", True),
    ("fedit", "local", "rouge_l", False),
    ("central", "fedit", "loss", True),
    ("fedit-exact", "fedit", "loss", True),
]
NAMES = {
    "fedit": "FedIT",
    "fedit-exact": "FedIT exact",
    "central": "centralised LoRA",
    "local": "local-only mean",
}


@cache
def cells(runs: Path) -> dict[str, list[RunResult]]:
    """Every run directory under ``runs`` by configuration (``fedit``, ``local3``, ...)."""
    return by_cell(scan(runs, LAYOUT), status=None)


def evals(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["scope"] == "server-eval"]


def at_round(run_dir: Path, which: str) -> dict:
    """Server-eval metrics of round 0 or of the last round (merged over its rows)."""
    rows = evals(run_dir)
    target = 0 if which == "first" else max(r["round"] for r in rows)
    out: dict = {}
    for r in rows:
        if r["round"] == target:
            out.update(r)
    per_category = [v for k, v in out.items() if k.startswith("loss/")]
    if per_category:  # every category counts once, however long its answers are
        out["category_loss"] = statistics.fmean(per_category)
    return out


def failed_rounds(run_dir: Path) -> int:
    """Rounds in which a client failed (and was left out): such a run is not the configuration
    it claims to be, so the tables leave it out and say so."""
    rows = [r for r in read_metrics(run_dir) if r["scope"] == "train"]
    return sum(1 for r in rows if r.get("failures", 0))


def seeds_of(runs: Path, cell: str) -> list[Path]:
    """Completed runs of a configuration in which no client failed."""
    found = cells(runs).get(cell, [])
    return [r.run_dir for r in found if r.status == "completed" and not failed_rounds(r.run_dir)]


def excluded_runs(runs: Path) -> list[str]:
    out = []
    for path in (r.run_dir for r in scan(runs, LAYOUT)):
        if evals(path) and failed_rounds(path):
            out.append(f"`{path.name}` ({failed_rounds(path)} rounds with a failed client)")
    return out


def unfinished_of(runs: Path, cell: str) -> list[Path]:
    """Runs stopped before their last round that still scored some rounds."""
    found = [r.run_dir for r in cells(runs).get(cell, []) if r.status != "completed"]
    return [p for p in found if evals(p) and not failed_rounds(p)]


def planned_rounds(run_dir: Path) -> int:
    return load_run_config(run_dir).run.rounds


def fmt(values: list[float], digits: int = 3) -> str:
    return fmt_mean_std(values, digits, empty="missing")


def traffic(run_dir: Path) -> tuple[float, float]:
    """Mean array bytes per client and training round: (up, down)."""
    up, down = [], []
    with open(run_dir / "comm.csv") as fh:
        for row in csv.DictReader(fh):
            if row["stage"] == "train":
                (up if row["direction"] == "up" else down).append(int(row["bytes"]))
    return statistics.fmean(up), statistics.fmean(down)


def model_bytes(run_dir: Path) -> int:
    """fp32 bytes of the whole base model (what full fine-tuning would send); needs the
    model asset (``write_side_tables`` keeps the number in ``model.csv``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fedsim_methods.fedit.config import fedit_of
    from fedsim_methods.fedit.model import model_source

    source = model_source(fedit_of(load_run_config(run_dir)))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    return 4 * sum(p.numel() for p in model.parameters())


def local_groups(runs: Path) -> dict[int, list[Path]]:
    """Local-only runs by client: {k: [run dir per seed]}."""
    groups: dict[int, list[Path]] = {}
    for cell in cells(runs):
        if m := re.fullmatch(r"local(\d+)", cell):
            groups[int(m.group(1))] = seeds_of(runs, cell)
    return {k: v for k, v in sorted(groups.items()) if v}


def client_categories(run_dir: Path) -> list[str]:
    """The categories of a local-only run's client; needs the data asset
    (``write_side_tables`` keeps them in ``clients.csv``)."""
    from fedsim_methods.fedit.cache import data_of
    from fedsim_methods.fedit.config import fedit_of

    exp = load_run_config(run_dir)
    return data_of(exp).client_categories(fedit_of(exp).train_clients[0])


def category_mean(metrics: dict, cats: list[str], key: str = "loss") -> float:
    values = [metrics[f"{key}/{c}"] for c in cats if f"{key}/{c}" in metrics]
    return statistics.fmean(values) if values else float("nan")


def steps_of(run_dir: Path) -> int:
    """Optimiser steps of the whole run, all clients together (from metrics.jsonl)."""
    rows = [r for r in read_metrics(run_dir) if r["scope"] == "train"]
    return int(round(sum(r.get("train_steps", 0) * r.get("clients", 0) for r in rows)))


def write_side_tables(runs: Path) -> None:
    """``model.csv`` (the base model's fp32 bytes) and ``clients.csv`` (each local-only run's
    categories) beside the runs, from the assets; kept when already there."""
    every = [r.run_dir for done in cells(runs).values() for r in done]
    if every and not (runs / MODEL_TABLE).exists():
        with open(runs / MODEL_TABLE, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([["model_fp32_bytes"], [model_bytes(every[0])]])
    local = sorted(d for v in local_groups(runs).values() for d in v)
    known = {row["run"] for row in side_table(runs, CLIENT_TABLE)}
    if local and {d.name for d in local} - known:
        with open(runs / CLIENT_TABLE, "w", newline="", encoding="utf-8") as fh:
            table = csv.writer(fh)
            table.writerow(["run", "categories"])
            for d in local:
                table.writerow([d.name, ";".join(client_categories(d))])


def side_table(runs: Path, name: str) -> list[dict]:
    path = runs / name
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def categories_of(runs: Path, run_dir: Path) -> list[str]:
    rows = {row["run"]: row["categories"] for row in side_table(runs, CLIENT_TABLE)}
    return rows[run_dir.name].split(";") if run_dir.name in rows else []


def main(argv: list[str]) -> int:
    runs = Path(argv[1]) if len(argv) > 1 else RESULTS
    which = argv[2] if len(argv) > 2 else "chatterbot"
    if which not in MARKERS:
        raise SystemExit(__doc__)
    write_side_tables(runs)
    text = block(runs, which)
    write_readme(text, which)
    fed, exact, central = (seeds_of(runs, p) for p in ("fedit", "fedit-exact", "central"))
    (HERE / "plots").mkdir(exist_ok=True)
    plot(fed, exact, central, local_groups(runs), MARKERS[which][2])
    print(text)
    return 0


def block(runs: Path, block: str = "chatterbot") -> str:
    """The README block of ``runs`` (files only: the runs and their side tables)."""
    fed, exact, central = (seeds_of(runs, p) for p in ("fedit", "fedit-exact", "central"))
    notes: list[str] = []
    excluded = excluded_runs(runs)
    if excluded:
        notes.append("Left out (a client failed in some rounds): " + ", ".join(excluded) + ".")
    if not central and unfinished_of(runs, "central"):
        central = unfinished_of(runs, "central")
        last = max(r["round"] for r in evals(central[0]))
        notes.append(
            f"Centralised LoRA did not finish: it stopped after round {last} of "
            f"{planned_rounds(central[0])} (its row shows that round; see the text below)."
        )
    locals_ = local_groups(runs)
    any_run = next(iter(fed + exact + central + [p for v in locals_.values() for p in v]), None)
    if any_run is None:
        return f"No completed FedIT runs in `{shown_path(runs, ROOT)}` yet."
    full = int(side_table(runs, MODEL_TABLE)[0]["model_fp32_bytes"])

    rows: list[tuple[str, dict[str, list[float]], str, str]] = []

    def add(label: str, dirs: list[Path], which: str = "last") -> None:
        if 0 < len(dirs) < len(SEEDS):
            label += f" (n={len(dirs)})"
        values = {k: [at_round(d, which).get(k) for d in dirs] for k, _ in METRICS}
        values = {k: [v for v in vs if v is not None] for k, vs in values.items()}
        if which == "first" or not dirs:
            rows.append((label, values, "0" if dirs else "-", "-"))
            return
        up, down = zip(*(traffic(d) for d in dirs))
        wire = (
            f"{statistics.fmean(up) / 1e6:.2f} MB up / {statistics.fmean(down) / 1e6:.2f} MB "
            f"down ({100 * statistics.fmean(up) / full:.2f}% / "
            f"{100 * statistics.fmean(down) / full:.2f}%)"
        )
        rows.append((label, values, str(steps_of(dirs[0])), wire))

    add("base model (no tuning)", fed or central, "first")
    per_seed_local: dict[str, list[float]] = {k: [] for k, _ in METRICS}
    seeds = sorted({d.name.split("-seed")[1] for v in locals_.values() for d in v})
    for seed in seeds:
        finals = [at_round(d, "last") for v in locals_.values() for d in v if d.name.endswith(seed)]
        if len(finals) < len(locals_):  # a seed counts once every client's run is in
            continue
        for k, _ in METRICS:
            vals = [f[k] for f in finals if k in f]
            if vals:
                per_seed_local[k].append(statistics.fmean(vals))
    local_dirs = [d for v in locals_.values() for d in v]
    local_steps = str(steps_of(local_dirs[0])) + " each" if local_dirs else "-"
    n_local = len(per_seed_local["loss"])
    local_label = f"local-only LoRA, mean of {len(locals_)} clients" + (
        f" (n={n_local})" if 0 < n_local < len(SEEDS) else ""
    )
    rows.append((local_label, per_seed_local, local_steps, "none"))
    add("centralised LoRA (union of clients)", central)
    add("FedIT, fedavg of A and B (paper)", fed)
    add("FedIT, exact mean of B@A", exact)

    all_dirs = fed + exact + central + local_dirs
    seed_list = ", ".join(sorted({d.name.split("seed")[-1] for d in all_dirs}))
    lines = [
        f"Generated by `experiments/fedit/report.py {shown_path(runs, ROOT)}` (seeds: "
        f"{seed_list}). Held-out set: the same fixed records for every row; metrics after the "
        "last round.",
        "",
        "| configuration | " + " | ".join(h for _, h in METRICS) + " | optimiser steps | "
        "bytes per client and round (share of the fp32 model) |",
        "|---|" + "---:|" * len(METRICS) + "---:|---|",
    ]
    for label, values, steps, wire in rows:
        cells = [fmt(values[k], 4 if k == "exact_match" else 3) for k, _ in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {steps} | {wire} |")
    lines += ["", f"Full model: {full / 1e6:.1f} MB in fp32."] + [f"\n{n}" for n in notes]

    # per-client view: own categories vs the rest, local-only vs FedIT on the same records
    if locals_ and fed:
        fed_final = at_round(fed[0], "last")
        lines += [
            "",
            "Local-only clients, seed " + fed[0].name.split("seed")[-1] + ": mean held-out "
            "loss over the client's own categories and over all other categories "
            "(unweighted mean of per-category losses), beside FedIT's global adapter on "
            "the same categories.",
            "",
            "| client | its categories | local: own | local: others | local: ROUGE-L | "
            "FedIT: own | FedIT: others |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for k in sorted(locals_):
            run = next(
                (d for d in locals_[k] if d.name == f"local{k}-{fed[0].name.split('-', 1)[1]}"),
                None,
            )
            if run is None:
                continue
            final = at_round(run, "last")
            own = categories_of(runs, run)
            all_cats = sorted(c.split("/", 1)[1] for c in final if c.startswith("loss/"))
            others = [c for c in all_cats if c not in own]
            scored_own = [c for c in own if f"loss/{c}" in final]
            lines.append(
                f"| {k} | {', '.join(own)} | {category_mean(final, scored_own):.3f} | "
                f"{category_mean(final, others):.3f} | {final.get('rouge_l', float('nan')):.3f} | "
                f"{category_mean(fed_final, scored_own):.3f} | "
                f"{category_mean(fed_final, others):.3f} |"
            )

    error = averaging_error(fed)
    if error:
        lines += ["", error]
    prefix = MARKERS[block][2]
    lines += [
        "",
        *verdict_rows(runs, locals_),
        "",
        f"![held-out loss](plots/{prefix}heldout_loss.png)",
        f"![per category](plots/{prefix}per_category_loss.png)",
    ]
    return "\n".join(lines)


def per_seed(runs: Path, name: str, locals_: dict[int, list[Path]], key: str) -> dict[int, float]:
    """A configuration's final ``key`` per seed; ``local``: the mean over the local-only
    clients of that seed."""
    if name != "local":
        return {int(d.name.rsplit("seed", 1)[1]): at_round(d, "last")[key]
                for d in seeds_of(runs, name)}  # fmt: skip
    by_seed: dict[int, list[float]] = {}
    for dirs in locals_.values():
        for d in dirs:
            by_seed.setdefault(int(d.name.rsplit("seed", 1)[1]), []).append(
                at_round(d, "last")[key]
            )
    everyone = len(locals_)
    return {s: statistics.fmean(v) for s, v in by_seed.items() if len(v) == everyone}


def verdict_rows(runs: Path, locals_: dict[int, list[Path]]) -> list[str]:
    lines = [
        "Verdict rows: paired per-seed differences (the same seed's partition, held-out set and "
        "initial adapter on both sides; the local-only side of a seed is the mean over its "
        "clients). " + RULE,
        "",
        "| claim | ours: mean ± std | per seed | verdict |",
        "|---|---|---|---|",
    ]
    labels = dict(METRICS)
    for better, worse, key, lower in CLAIMS:
        a, b = per_seed(runs, better, locals_, key), per_seed(runs, worse, locals_, key)
        seeds = sorted(set(a) & set(b))
        diffs = [a[s] - b[s] for s in seeds]
        ours = fmt_mean_std(diffs, 3, empty="–", sep=" ± ")
        each = ", ".join(f"s{s}: {d:+.3f}" for s, d in zip(seeds, diffs, strict=True)) or "–"
        word = paired_verdict(diffs, -1.0 if lower else 1.0, len(SEEDS))
        claim = f"{NAMES[better]} beats {NAMES[worse]}: {labels[key]}"
        lines.append(f"| {claim} | {ours} (n={len(diffs)}) | {each} | {word} |")
    return lines


def averaging_error(fed: list[Path]) -> str:
    """How much of each round's mean update averaging A and B separately lost, from the
    fedavg runs' per-round ``averaging_error`` metric (strategies/fedit.py)."""
    values = [
        r["averaging_error"]
        for d in fed
        for r in read_metrics(d)
        if r["scope"] == "train" and "averaging_error" in r
    ]
    if not values:
        return ""
    return (
        "Averaging error (generated, `averaging_error` in metrics.jsonl): averaging A and B "
        "separately missed ||mean(B A) - mean(B) mean(A)|| = "
        f"{100 * statistics.fmean(values):.1f}% on average (max {100 * max(values):.1f}%) of "
        "the norm of a round's mean update mean(B A) - B0 A0, per adapted layer; the exact "
        "mode adds exactly this difference back."
    )


def write_readme(text_block: str, block: str) -> None:
    start, end = MARKERS[block][:2]
    replace_marked_block(HERE / "README.md", start, end, text_block)


def plot(fed, exact, central, locals_, prefix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, dirs, style in (
        ("FedIT fedavg", fed, "o-"),
        ("FedIT exact", exact, "s-"),
        ("centralised", central, "^-"),
    ):
        for i, d in enumerate(dirs):
            rows = [r for r in evals(d) if "loss" in r]
            ax.plot(
                [r["round"] for r in rows],
                [r["loss"] for r in rows],
                style,
                label=label if i == 0 else None,
                markersize=4,
            )
    finals = [at_round(d, "last")["loss"] for v in locals_.values() for d in v]
    if finals:
        last = max(r["round"] for r in evals(next(iter(locals_.values()))[0]))
        ax.scatter(
            [last] * len(finals), finals, color="grey", marker="x", label="local-only clients"
        )
        ax.axhline(statistics.fmean(finals), color="grey", ls="--", lw=1, label="local-only mean")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("held-out response loss")
    any_run = next(iter(fed + exact + central), None)
    if any_run is not None:
        dataset = load_run_config(any_run).data.dataset
        n_cats = sum(1 for k in at_round(any_run, "last") if k.startswith("loss/"))
        ax.set_title(f"{dataset} held-out loss ({n_cats} categories)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "plots" / f"{prefix}heldout_loss.png", dpi=100)
    plt.close(fig)

    series = []
    if fed:
        series.append(("base", at_round(fed[0], "first")))
    if locals_:
        finals = [at_round(d, "last") for v in locals_.values() for d in v[:1]]
        keys = {k for f in finals for k in f if k.startswith("loss/")}
        series.append(
            ("local-only mean", {k: statistics.fmean(f[k] for f in finals) for k in keys})
        )
    for label, dirs in (("centralised", central), ("FedIT fedavg", fed), ("FedIT exact", exact)):
        if dirs:
            series.append((label, at_round(dirs[0], "last")))
    if not series:
        return
    cats = sorted(k.split("/", 1)[1] for k in series[0][1] if k.startswith("loss/"))
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(series)
    for i, (label, metrics) in enumerate(series):
        xs = [j + i * width for j in range(len(cats))]
        ax.bar(xs, [metrics.get(f"loss/{c}", float("nan")) for c in cats], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))])
    ax.set_xticklabels(cats, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("held-out response loss")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "plots" / f"{prefix}per_category_loss.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
