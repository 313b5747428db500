"""Regenerate the results section of README.md and plots/*.png from the run directories.

    python experiments/curriculum/report.py runs/curriculum-reproduction [LONG_RUNS]

Reads ``RUNS/<config>/seed<k>/`` as ``fedsim sweep experiments/curriculum/sweep.toml``
writes them (and the optional 100-round supplement of ``sweep-long.toml`` in ``LONG_RUNS``);
only completed runs count. ``text-*`` configurations (Rotten Tomatoes) get their own block.
Every number in the generated tables comes from those files; the paper's numbers are the
constants below (METHODS.md section 3, from the authors' figure notebooks).
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from fedsim.results.cells import by_cell, fmt_mean_std, mean_std, scan  # noqa: E402

README = HERE / "README.md"
BEGIN, END = "<!-- BEGIN GENERATED RESULTS -->", "<!-- END GENERATED RESULTS -->"

HETEROGENEITY = {"dir0.05": "Dir(0.05)", "dir0.2": "Dir(0.2)", "dir0.9": "Dir(0.9)", "iid": "IID"}
ORDERINGS = ("curriculum", "anti", "random", "vanilla")
ABLATION = {
    "vanilla": "vanilla (no curriculum)",
    "curriculum": "data curriculum only",
    "client": "client curriculum only",
    "both": "data + client curriculum",
}
# FedAvg, CIFAR-10, global accuracy %, paper (Vahidian et al. 2023; METHODS.md section 3).
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
PAPER_SPREAD = {  # +- from the authors' ablation notebook (Ablation_CC_DC.ipynb)
    ("dir0.2", "both"): 0.40,
    ("dir0.2", "curriculum"): 0.73,
    ("dir0.2", "client"): 1.26,
    ("dir0.2", "vanilla"): 0.19,
}


@dataclass
class Config:
    """A configuration's completed seeds, in % of test accuracy."""

    name: str
    seeds: list[int] = field(default_factory=list)
    final: list[float] = field(default_factory=list)  # % per seed
    curves: list[list[float]] = field(default_factory=list)  # % per round (round 0 first)
    wall: list[float] = field(default_factory=list)
    resolved: dict = field(default_factory=dict)

    def mean(self) -> float:
        return mean_std(self.final)[0]

    def std(self) -> float:
        return mean_std(self.final)[1]


def collect(runs: Path) -> dict[str, Config]:
    configs: dict[str, Config] = {}
    for name, done in by_cell(scan(runs)).items():
        if not done:
            continue
        configs[name] = Config(
            name,
            seeds=[r.seed for r in done],
            final=[100 * r.final("server-eval", "accuracy") for r in done],
            curves=[[100 * a for a in r.curve("server-eval", "accuracy")[1]] for r in done],
            wall=[float(r.wall_time_s) for r in done],
            resolved=tomllib.loads((done[-1].run_dir / "config.toml").read_text()),
        )
    return configs


def cell(cfg: Config | None) -> str:
    return fmt_mean_std(cfg.final if cfg else [], digits=2, empty="not run")


def paper(key: tuple[str, str]) -> str:
    if key not in PAPER:
        return "–"
    spread = PAPER_SPREAD.get(key)
    return f"{PAPER[key]:.2f}" + (f" ± {spread:.2f}" if spread is not None else "")


def ordering_table(configs: dict[str, Config]) -> list[str]:
    head = "| clients | " + " | ".join(f"{o} (ours) | {o} (paper)" for o in ORDERINGS) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(ORDERINGS)]
    for het, label in HETEROGENEITY.items():
        cells = []
        for o in ORDERINGS:
            cells += [cell(configs.get(f"{het}-{o}")), paper((het, o))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def ablation_table(configs: dict[str, Config]) -> list[str]:
    lines = ["| Dir(0.2) | ours | paper |", "|---|---:|---:|"]
    for key, label in ABLATION.items():
        ours = cell(configs.get(f"dir0.2-{key}"))
        lines.append(f"| {label} | {ours} | {paper(('dir0.2', key))} |")
    return lines


DISPARITY = {
    "vanilla": "vanilla (no curriculum)",
    "curriculum": "data curriculum (easy->hard)",
    "anti": "data anti-curriculum (hard->easy)",
    "client": "client curriculum only",
    "both": "data + client curriculum",
}


def disparity_table(configs: dict[str, Config]) -> list[str]:
    """The paper's real-world disparity setting: clients of graded difficulty."""
    if not any(f"disparity-{k}" in configs for k in DISPARITY):
        return []
    vanilla = configs.get("disparity-vanilla")
    lines = ["| disparity partitions | ours | − vanilla (per seed) |", "|---|---:|---:|"]
    for key, label in DISPARITY.items():
        cfg = configs.get(f"disparity-{key}")
        delta = "–" if key == "vanilla" else diff(cfg, vanilla)
        lines.append(f"| {label} | {cell(cfg)} | {delta} |")
    return lines


def diff(a: Config | None, b: Config | None) -> str:
    """Mean difference of final accuracy, with the spread of the per-seed differences."""
    if a is None or b is None or not a.final or not b.final:
        return "–"
    da = dict(zip(a.seeds, a.final))
    db = dict(zip(b.seeds, b.final))
    common = sorted(set(da) & set(db))
    mean, spread = mean_std(da[s] - db[s] for s in common)
    return f"{mean:+.2f} ± {spread:.2f}"


def claim_table(
    configs: dict[str, Config],
    hets: list[str] | None = None,
    groups: dict[str, str] = HETEROGENEITY,
) -> list[str]:
    lines = [
        "| clients | curriculum − vanilla | vanilla − anti | curriculum > vanilla > anti (means) |",
        "|---|---:|---:|---|",
    ]
    for het, label in groups.items():
        if hets is not None and het not in hets:
            continue
        c, v, a = (configs.get(f"{het}-{o}") for o in ("curriculum", "vanilla", "anti"))
        holds = "–"
        if all(x is not None and x.final for x in (c, v, a)):
            holds = "yes" if c.mean() > v.mean() > a.mean() else "no"
        lines.append(f"| {label} | {diff(c, v)} | {diff(v, a)} | {holds} |")
    return lines


def _band(ax, cfg: Config, label: str, color=None) -> None:
    length = min(len(c) for c in cfg.curves)
    curves = np.array([c[:length] for c in cfg.curves])
    x = np.arange(length)
    (line,) = ax.plot(x, curves.mean(0), label=label, color=color)
    ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.15, color=line.get_color())


def plots(configs: dict[str, Config], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True, sharey=True)
    for ax, (het, label) in zip(axes.flat, HETEROGENEITY.items()):
        for o in ORDERINGS:
            if (cfg := configs.get(f"{het}-{o}")) is not None and cfg.curves:
                _band(ax, cfg, o)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("round")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    handles, labels = next(
        (ax.get_legend_handles_labels() for ax in axes.flat if ax.get_lines()), ([], [])
    )
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles))
    fig.suptitle("Data orderings: mean over seeds, band = min..max")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out / "orderings.png", dpi=90)
    plt.close(fig)
    written.append("orderings.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.2
    for i, o in enumerate(ORDERINGS):
        xs, means, stds, papers = [], [], [], []
        for j, het in enumerate(HETEROGENEITY):
            cfg = configs.get(f"{het}-{o}")
            if cfg is None or not cfg.final:
                continue
            xs.append(j + (i - 1.5) * width)
            means.append(cfg.mean())
            stds.append(cfg.std())
            papers.append(PAPER.get((het, o), np.nan))
        bars = ax.bar(xs, means, width, yerr=stds, capsize=3, label=f"{o} (ours)")
        ax.scatter(xs, papers, marker="x", color=bars.patches[0].get_facecolor() if xs else None)
    ax.scatter([], [], marker="x", color="k", label="paper (100 rounds, 50k images)")
    ax.set_xticks(range(len(HETEROGENEITY)), list(HETEROGENEITY.values()))
    ax.set_ylabel("final test accuracy (%)")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "final.png", dpi=90)
    plt.close(fig)
    written.append("final.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in ABLATION.items():
        if (cfg := configs.get(f"dir0.2-{key}")) is not None and cfg.curves:
            _band(ax, cfg, label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Dir(0.2): data vs client curriculum")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=90)
    plt.close(fig)
    written.append("ablation.png")
    return written


def curve_panels(
    configs: dict[str, Config],
    groups: list[str],
    orderings,
    titles: dict[str, str],
    path: Path,
    reference: tuple[str, float] | None = None,
) -> None:
    """One panel per group (``<group>-<ordering>`` configs): accuracy bands over rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for o in orderings:
            if (cfg := configs.get(f"{group}-{o}")) is not None and cfg.curves:
                _band(ax, cfg, o)
        if reference is not None:
            ax.axhline(reference[1], color="k", lw=0.8, ls="--", label=reference[0])
        ax.set_title(titles[group])
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


LONG_ORDERINGS = ("curriculum", "anti", "vanilla")
LAST = 10  # rounds averaged in the supplement's steadier number


def long_section(long: dict[str, Config], long_runs: Path, out: Path) -> list[str]:
    """The single-seed longer-horizon supplement (``LONG=1 reproduce``), if it was run."""
    if not long:
        return []
    r = next(iter(long.values())).resolved
    seeds = sorted({s for c in long.values() for s in c.seeds})
    head = "| clients | " + " | ".join(f"{o} (ours) | {o} (paper)" for o in LONG_ORDERINGS) + " |"
    lines = [
        f"**Longer horizon** (supplement, `LONG=1`): {r['run']['rounds']} rounds, otherwise "
        f"the same settings; seeds {', '.join(map(str, seeds))}; from `{long_runs}`. "
        "Final test accuracy (%), mean ± sample std over seeds, and in brackets the mean "
        f"over seeds of the last {LAST} rounds' accuracy (the curves oscillate from round "
        "to round; the bracket is the steadier number).",
        "",
        head,
        "|---|" + "---:|---:|" * len(LONG_ORDERINGS),
    ]
    groups = {**HETEROGENEITY, "disparity": "Disparity"}
    hets = [h for h in groups if any(f"{h}-{o}" in long for o in LONG_ORDERINGS)]
    for het in hets:
        cells = []
        for o in LONG_ORDERINGS:
            cfg = long.get(f"{het}-{o}")
            ours = cell(cfg)
            if cfg is not None and cfg.curves:
                tail = np.mean([np.mean(c[-LAST:]) for c in cfg.curves])
                ours += f" ({tail:.1f})"
            cells += [ours, paper((het, o))]
        lines.append(f"| {groups[het]} | " + " | ".join(cells) + " |")
    lines += ["", "Per-seed differences of final accuracy at this horizon:", ""]
    lines += claim_table(long, hets, groups)
    lines.append("")

    curve_panels(
        long,
        hets,
        LONG_ORDERINGS,
        {h: f"{groups[h]}, {r['run']['rounds']} rounds" for h in hets},
        out / "long.png",
    )
    lines += ["![long.png](plots/long.png)", ""]
    return lines


def generated_section(
    configs: dict[str, Config], runs: Path, long: dict[str, Config], long_runs: Path
) -> str:
    if not configs:
        return f"No completed runs under `{runs}` yet."
    any_cfg = next(iter(configs.values()))
    r = any_cfg.resolved
    seeds = sorted({s for c in configs.values() for s in c.seeds})
    n_runs = sum(len(c.final) for c in configs.values())
    wall = sum(sum(c.wall) for c in configs.values())
    counts = sorted({len(c.final) for c in configs.values()})
    lines = [
        f"Generated by `experiments/curriculum/report.py {runs} {long_runs}` "
        f"(the last step of `experiments/curriculum/reproduce`) from {n_runs} completed run "
        f"directories ({len(configs)} configurations, seeds {', '.join(map(str, seeds))}; "
        f"seeds per configuration: {', '.join(map(str, counts))}). Final test accuracy (%) "
        f"after round {r['run']['rounds']} on the 2,000 held-out images, mean ± sample std "
        f"over seeds. Sum of run wall times: {wall / 60:.1f} min "
        f"({wall / max(n_runs, 1):.0f} s per run).",
        "",
        "**Data orderings** (FedAvg + data curriculum, G scoring, linear pacing a=0.8, b=0.2):",
        "",
        *ordering_table(configs),
        "",
        "Paper: 100 rounds, E=10, 50,000 training images; “–”: not reported in METHODS.md. "
        "The paper's Dir(0.2) curriculum and vanilla values are from its ablation.",
        "",
        "**Does the ordering claim hold?** Differences of final accuracy, mean ± std of the "
        "per-seed differences (same seed = same partition and initial model):",
        "",
        *claim_table(configs),
        "",
        "**Client-curriculum ablation** at Dir(0.2):",
        "",
        *ablation_table(configs),
        "",
    ]
    disparity = disparity_table(configs)
    if disparity:
        lines += [
            "**Disparity partitions** (the paper's real-world disparity setting, `disparity` "
            "partitioner: each sample scored by a cross-fitted CNN's loss, sorted easy to "
            "hard and cut into 100 client shards; no paper numbers in METHODS.md):",
            "",
            *disparity,
            "",
        ]
    for name in plots(configs, HERE / "plots"):
        lines.append(f"![{name}](plots/{name})")
        lines.append("")
    lines += long_section(long, long_runs, HERE / "plots")
    return "\n".join(lines).rstrip() + "\n"


TEXT_PREFIX = "text-"
TEXT_BEGIN = "<!-- BEGIN GENERATED TEXT RESULTS -->"
TEXT_END = "<!-- END GENERATED TEXT RESULTS -->"
TEXT_GROUPS = {"text-iid": "IID", "text-dir0.2": "Dir(0.2)"}


def _tails(configs: dict[str, Config]) -> dict[str, Config]:
    """The same configurations with each seed's last-``LAST``-round mean as its number."""
    return {
        k: Config(k, seeds=c.seeds, final=[float(np.mean(x[-LAST:])) for x in c.curves])
        for k, c in configs.items()
    }


def majority_share(resolved: dict) -> float:
    """Accuracy (%) of always predicting the test set's most frequent label."""
    from fedsim.data.sources import load_text_classification

    y = load_text_classification(resolved["data"]["dataset"]).y_test
    return 100 * float(np.bincount(y).max()) / len(y)


def text_section(texts: dict[str, Config], runs: Path, out: Path) -> str:
    """Rotten Tomatoes, bag of embeddings: data orderings under IID and Dir(0.2) clients."""
    if not texts:
        return f"No completed `text-*` runs under `{runs}` yet.\n"
    r = next(iter(texts.values())).resolved
    seeds = sorted({s for c in texts.values() for s in c.seeds})
    n_runs = sum(len(c.final) for c in texts.values())
    wall = sum(sum(c.wall) for c in texts.values())
    hets = [h for h in TEXT_GROUPS if any(f"{h}-{o}" in texts for o in ORDERINGS)]
    tails = _tails(texts)
    lines = [
        f"Generated by `experiments/curriculum/report.py {runs}` from {n_runs} completed "
        f"`text-*` run directories (seeds {', '.join(map(str, seeds))}). "
        f"{r['run']['rounds']} rounds; final test accuracy (%) on the "
        f"{r['data']['dataset']} test split, mean ± sample std over seeds, and in brackets "
        f"the mean over seeds of the last {LAST} rounds' accuracy. Always predicting the "
        f"majority label scores {majority_share(r):.2f}. Sum of run wall times: "
        f"{wall / 60:.1f} min ({wall / max(n_runs, 1):.0f} s per run).",
        "",
        "| clients | " + " | ".join(ORDERINGS) + " |",
        "|---|" + "---:|" * len(ORDERINGS),
    ]
    for het in hets:
        cells = []
        for o in ORDERINGS:
            cfg = texts.get(f"{het}-{o}")
            cells.append(cell(cfg) + (f" ({tails[cfg.name].mean():.1f})" if cfg else ""))
        lines.append(f"| {TEXT_GROUPS[het]} | " + " | ".join(cells) + " |")
    groups = {h: TEXT_GROUPS[h] for h in hets}
    lines += ["", "Per-seed differences of final accuracy:", ""]
    lines += claim_table(texts, hets, groups)
    lines += ["", f"The same on each seed's last-{LAST}-round mean:", ""]
    lines += claim_table(tails, hets, groups)
    lines.append("")

    curve_panels(
        texts,
        hets,
        ORDERINGS,
        {h: f"Rotten Tomatoes, {TEXT_GROUPS[h]} clients" for h in hets},
        out / "text.png",
        reference=("majority label", majority_share(r)),
    )
    lines += ["![text.png](plots/text.png)", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    runs = Path(argv[1]) if len(argv) > 1 else Path("runs/curriculum-reproduction")
    long_runs = Path(argv[2]) if len(argv) > 2 else Path("runs/curriculum-reproduction-long")
    everything = collect(runs)
    configs = {k: v for k, v in everything.items() if not k.startswith(TEXT_PREFIX)}
    texts = {k: v for k, v in everything.items() if k.startswith(TEXT_PREFIX)}
    long = collect(long_runs) if long_runs.exists() else {}
    section = generated_section(configs, runs, long, long_runs)
    text = README.read_text()
    for begin, end, body in (
        (BEGIN, END, section),
        (TEXT_BEGIN, TEXT_END, text_section(texts, runs, HERE / "plots")),
    ):
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise SystemExit(f"{README}: no {begin} ... {end} block to replace")
        text = pattern.sub(lambda _, b=begin, e=end, x=body: f"{b}\n{x}{e}", text)
        print(body)
    README.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
