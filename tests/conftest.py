"""Shared fixtures: a small, fast experiment on real MNIST data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# `make test` runs one xdist worker per core plus one; torch's default of one intra-op
# thread per core in every worker would oversubscribe the cores (OpenMP threads spin-wait on
# each other). fedsim pins threads inside each client and server call (fedsim.threads); this
# pins what the tests compute directly, and what their subprocesses start with.
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]

TINY = """
method = "fedavg"
[run]
name = "tiny"
seed = 0
rounds = 3
checkpoint_every = 1
[data]
dataset = "mnist"
partitioner = "dirichlet"
alpha = 0.5
min_partition_size = 10
max_train_samples = 6000
[model]
name = "cnn"
[client]
local_epochs = 1
batch_size = 32
lr = 0.05
momentum = 0.9
[clients]
num = 10
per_round = 4
[eval]
batch_size = 1000
max_samples = 2000  # of MNIST's 10,000 test images: server evaluation 5x cheaper
"""


@pytest.fixture
def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="session")
def fedavg_run(tmp_path_factory) -> Path:
    """One plain FedAvg run of TINY (3 rounds), shared by the tests that only read it."""
    from fedsim.config import load_experiment
    from fedsim.runner import run_experiment

    root = tmp_path_factory.mktemp("fedavg")
    (root / "tiny.toml").write_text(TINY)
    run_dir, summary = run_experiment(load_experiment(root / "tiny.toml"), root / "run")
    assert summary["status"] == "completed"
    return run_dir


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """``pip install`` the test plugin package (tests/plugin) into a folder of its own; the
    venv stays untouched, and a process sees the plugin with this folder on its path."""
    import shutil
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("plugin")
    shutil.copytree(ROOT / "tests" / "plugin", work / "src")
    site = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(work / "src")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return site


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSIM_RUNS", str(tmp_path / "runs"))
