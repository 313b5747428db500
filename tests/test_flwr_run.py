"""`flwr run .` (Flower's own runtime, local SuperLink + simulated SuperNodes) runs our app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers import free_ports

# Ray clusters run one at a time under pytest-xdist.
pytestmark = pytest.mark.xdist_group("ray")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _stop_superlinks(flwr_home: Path) -> None:
    """`flwr run` leaves a detached local SuperLink running: stop the one it started for us,
    and wait until it (and everything it spawned) has exited."""
    ours = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.environ().get("FLWR_HOME") == str(flwr_home):
                proc.kill()
                ours.append(proc)
        except (psutil.Error, OSError):
            continue
    psutil.wait_procs(ours, timeout=30)


def flwr_run(experiment: Path, overrides: str, supernodes: int, tmp_path: Path) -> Path:
    """``flwr run .`` of ``experiment`` with ``overrides`` on a local SuperLink with
    ``supernodes`` simulated SuperNodes; returns the run directory it wrote."""
    out, home = tmp_path / "flwr-run", tmp_path / "flwr-home"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    # Flower's local SuperLink listens on fixed ports (39091, 39093) and `flwr run` reuses
    # whatever answers there, so a SuperLink another test left exiting could take this run
    # (CI saw "Connection to the SuperLink is unavailable"). Ports of our own rule that out.
    http_port, control_port = free_ports(2)
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(http_port)
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
    run_config = f'experiment="{experiment}" overrides="{overrides}" out="{out}"'
    federation = f"num-supernodes={supernodes} client-resources-num-cpus=1"
    try:
        proc = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                ".",
                "--stream",
                "--federation-config",
                federation,
                "--run-config",
                run_config,
            ],  # fmt: skip
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        _stop_superlinks(home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["backend"] == "flwr-run"
    return out


@pytest.mark.slow
def test_flwr_run_gives_the_inprocess_bytes(tmp_path):
    from fedsim.config import load_experiment
    from fedsim.runner import run_experiment

    experiment = ROOT / "experiments" / "quickstart.toml"
    overrides = "run.rounds=2 clients.num=6 clients.per_round=3 data.max_train_samples=3000"
    out = flwr_run(experiment, overrides, 6, tmp_path)
    local, _ = run_experiment(load_experiment(experiment, overrides.split()), tmp_path / "local")
    assert (local / "metrics.jsonl").read_bytes() == (out / "metrics.jsonl").read_bytes()
    assert (local / "comm.csv").read_bytes() == (out / "comm.csv").read_bytes()


@pytest.mark.slow
def test_flwr_run_of_fedbuff_gives_the_inprocess_bytes(tmp_path):
    """The asynchronous server's virtual clock under Flower's runtime: same events, same
    bytes (docs/async.md)."""
    from fedsim.config import load_experiment
    from fedsim.runner import run_experiment

    experiment = tmp_path / "fedbuff.toml"
    experiment.write_text(
        f'extends = "{ROOT / "experiments" / "quickstart.toml"}"\nmethod = "fedbuff"\n'
        "[systems]\n[fedbuff]\nbuffer_size = 2\nconcurrency = 4\n"
    )
    overrides = "run.rounds=4 clients.num=6 clients.per_round=3 data.max_train_samples=3000"
    out = flwr_run(experiment, overrides, 6, tmp_path)
    local, _ = run_experiment(load_experiment(experiment, overrides.split()), tmp_path / "local")
    assert (local / "metrics.jsonl").read_bytes() == (out / "metrics.jsonl").read_bytes()
    assert (local / "comm.csv").read_bytes() == (out / "comm.csv").read_bytes()
    assert b'"staleness-max": 1' in (local / "metrics.jsonl").read_bytes()
