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


def test_client_context_state_survives_a_crash_and_resume(tiny_toml, tmp_path, monkeypatch):
    """Per-client Context.state is checkpointed: a stateful client resumes where it was."""
    import pytest
    from flwr.app import MetricRecord

    import clients.supervised as supervised
    from fedsim.runner import RunError

    original = supervised.train

    def counting(msg, context, exp):
        calls = context.state.get("calls", MetricRecord({"n": 0}))
        calls["n"] = int(calls["n"]) + 1
        context.state["calls"] = calls
        reply = original(msg, context, exp)
        reply.content["metrics"]["calls_so_far"] = float(calls["n"])
        return reply

    monkeypatch.setattr(supervised, "train", counting)
    exp = load_experiment(tiny_toml, ["run.rounds=4", "clients.per_round=8"])
    reference, _ = run_experiment(exp, tmp_path / "reference")

    def crash_after_round_2(server_round, latest):
        if server_round == 2:
            raise RuntimeError("power cut")

    crashed = tmp_path / "crashed"
    with pytest.raises(RunError, match="power cut"):
        run_experiment(exp, crashed, on_round=crash_after_round_2)
    run_experiment(exp, resume_dir=crashed)
    assert (crashed / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    counts = [
        r["calls_so_far"]
        for r in map(json.loads, (crashed / "metrics.jsonl").read_text().splitlines())
        if r["scope"] == "train"
    ]
    assert counts[-1] > 1  # some client trained more than once: its count was carried over
