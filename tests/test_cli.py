"""The command line as a user meets it: run, report, partition, list, datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def fedsim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "FEDSIM_RUNS": str(cwd / "runs")}
    return subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_run_then_report_and_plot(tiny_toml, tmp_path):
    out = tmp_path / "myrun"
    proc = fedsim("run", str(tiny_toml), "--set", "run.rounds=2", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "metrics.jsonl").exists()  # --out is exactly the run directory
    assert "test acc" in proc.stdout
    other = tmp_path / "other"
    proc = fedsim(
        "run",
        str(tiny_toml),
        "--set",
        "run.rounds=1",
        "run.seed=2",
        "--out",
        str(other),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    proc = fedsim("report", str(out), str(other), "--plot", str(tmp_path / "cmp.png"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "myrun" in proc.stdout and "other" in proc.stdout
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    final = json.loads((out / "summary.json").read_text())["final"]["server-eval"]["accuracy"]
    assert f"{final:.4f}" in proc.stdout


def test_default_run_dir_lives_under_runs(tiny_toml, tmp_path):
    proc = fedsim("run", str(tiny_toml), "--set", "run.rounds=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "runs" / "tiny").glob("*/metrics.jsonl"))


def test_partition_table_and_plot(tiny_toml, tmp_path):
    proc = fedsim("partition", str(tiny_toml), "--plot", str(tmp_path / "p.png"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dirichlet over 10 clients" in proc.stdout
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_list_and_datasets_list(tmp_path):
    proc = fedsim("list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for word in ("fedavg", "fedprox", "fedadam", "fedyogi", "mnist", "cifar10", "smollm2"):
        assert word in proc.stdout
    proc = fedsim("datasets", "list", cwd=tmp_path)
    assert proc.returncode == 0 and "rotten_tomatoes" in proc.stdout


def test_unknown_asset_is_a_clear_error(tmp_path):
    proc = fedsim("datasets", "fetch", "imagenet", cwd=tmp_path)
    assert proc.returncode != 0
    assert "imagenet" in proc.stderr and "Traceback" not in proc.stderr


def test_report_rejects_non_run_dir(tmp_path):
    proc = fedsim("report", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr
