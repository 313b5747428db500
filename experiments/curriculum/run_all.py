"""Run every configuration of the curriculum reproduction for every seed (see README.md).

Each ``*.toml`` here except the bases overrides a few keys of ``base.toml`` (or of
``<prefix>-base.toml`` when one exists: ``text-*.toml`` use ``text-base.toml``); this script
merges the two, validates the result with fedsim's schema, and runs it in this process
into ``RUNS/<config>/seed<k>/``. Finished runs are kept (the script can be re-run after an
interruption); an unfinished run directory is removed and run again. Runs go seed by seed,
so a partial sweep still covers every configuration.

    python experiments/curriculum/run_all.py --runs runs/curriculum-reproduction --seeds 0 1 2
    python experiments/curriculum/run_all.py --only 'dir0.2-*' --set run.rounds=2   # a smoke run
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.config.load import apply_overrides, parse_overrides, validate  # noqa: E402
from fedsim.runner import RunError, run_experiment  # noqa: E402

BASE = "base.toml"


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of two TOML tables; values of ``over`` win."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def base_of(path: Path) -> Path:
    """``text-iid-anti.toml`` merges ``text-base.toml`` if that exists, else ``base.toml``."""
    own = HERE / f"{path.stem.split('-')[0]}-{BASE}"
    return own if own.exists() else HERE / BASE


def config_files(only: list[str] | None = None) -> list[Path]:
    files = sorted(p for p in HERE.glob("*.toml") if not p.name.endswith(BASE))
    return [p for p in files if not only or any(fnmatch.fnmatch(p.stem, o) for o in only)]


def load_config(path: Path, seed: int, overrides: list[str] = ()):
    """base (``base_of``) + ``path`` + seed + ``--set`` overrides -> a validated Experiment."""
    raw = merge(tomllib.loads(base_of(path).read_text()), tomllib.loads(path.read_text()))
    raw["run"]["name"] = f"curriculum-{path.stem}"
    raw["run"]["seed"] = seed
    raw = apply_overrides(raw, parse_overrides(overrides), str(path))
    return validate(raw, str(path))


def finished(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("status") == "completed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "curriculum-reproduction")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", help="globs over config names, e.g. 'dir0.2-*'")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="KEY=VALUE")
    args = parser.parse_args(argv)

    files = config_files(args.only)
    plan = [(seed, path) for seed in args.seeds for path in files]
    failed = []
    t0 = time.perf_counter()
    for i, (seed, path) in enumerate(plan, start=1):
        run_dir = args.runs / path.stem / f"seed{seed}"
        if finished(run_dir):
            print(f"[{i}/{len(plan)}] kept {run_dir}", flush=True)
            continue
        if run_dir.exists():
            for child in sorted(run_dir.rglob("*"), reverse=True):
                child.rmdir() if child.is_dir() else child.unlink()
            run_dir.rmdir()
        exp = load_config(path, seed, args.overrides)
        start = time.perf_counter()
        try:
            _, summary = run_experiment(exp, run_dir)
            acc = summary.get("final", {}).get("server-eval", {}).get("accuracy")
            print(
                f"[{i}/{len(plan)}] {path.stem} seed {seed}: accuracy {acc} "
                f"({time.perf_counter() - start:.0f}s, total {time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
        except RunError as exc:
            failed.append(f"{path.stem} seed {seed}: {exc}")
            print(f"[{i}/{len(plan)}] FAILED {path.stem} seed {seed}: {exc}", flush=True)
    print(f"done in {time.perf_counter() - t0:.0f}s; {len(failed)} failed", flush=True)
    for line in failed:
        print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
