"""A run killed with SIGKILL resumes from its checkpoint and ends as if never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedsim.checkpoint import load_checkpoint
from fedsim.config import load_experiment
from fedsim.runner import run_experiment

ROUNDS = 6


def _fedsim(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "FEDSIM_RUNS": str(cwd / "runs")}
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rounds_done(run_dir: Path) -> int:
    ckpt = run_dir / "checkpoints" / "latest.pkl"
    if not ckpt.exists():
        return 0
    try:
        return load_checkpoint(run_dir).server_round
    except Exception:  # caught mid-rename: try again
        return 0


def test_kill_9_then_resume_equals_uninterrupted(tiny_toml, tmp_path):
    overrides = [f"run.rounds={ROUNDS}", "method='fedadam'"]  # FedAdam: server state matters
    reference, _ = run_experiment(load_experiment(tiny_toml, overrides), tmp_path / "reference")

    killed = tmp_path / "killed"
    sets = [arg for o in overrides for arg in ("--set", o)]
    proc = _fedsim("run", str(tiny_toml), *sets, "--out", str(killed), cwd=tmp_path)
    deadline = time.monotonic() + 300
    while _rounds_done(killed) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = _rounds_done(killed)
    assert 2 <= done_at_kill < ROUNDS, "the run must be killed before it finished"
    assert not (killed / "summary.json").exists()

    resumed = _fedsim("resume", str(killed), cwd=tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert (killed / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert (killed / "comm.csv").read_bytes() == (reference / "comm.csv").read_bytes()
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed"


def test_resume_of_a_finished_run_changes_nothing(tiny_toml, tmp_path):
    run_dir, _ = run_experiment(load_experiment(tiny_toml, ["run.rounds=2"]), tmp_path / "r")
    before = (run_dir / "metrics.jsonl").read_bytes()
    proc = _fedsim("resume", str(run_dir), cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def test_resume_of_a_non_run_dir_is_a_clear_error(tmp_path):
    proc = _fedsim("resume", str(tmp_path), cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "not a run directory" in err and "Traceback" not in err
