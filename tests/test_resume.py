"""A run killed (SIGKILL), interrupted (SIGINT) or crashed resumes from its checkpoint and ends
as if never stopped; a damaged newest checkpoint falls back to the previous one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CrashAfter, rounds_done, wait_for_rounds

from fedsim.checkpoint import checkpoint_files, load_checkpoint
from fedsim.cli import run_cli
from fedsim.config import load_experiment
from fedsim.runner import RunError, resume_run, run_experiment

ROUNDS = 4
SMALL = ["data.max_train_samples=2000", "clients.per_round=3"]  # seconds per round, not more


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


def _stop_after_two_checkpoints(tiny_toml, out: Path, overrides: list[str], sig: int):
    sets = [arg for o in overrides for arg in ("--set", o)]
    proc = _fedsim("run", str(tiny_toml), *sets, "--out", str(out), cwd=out.parent)
    wait_for_rounds(proc, out, 2)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert 2 <= rounds_done(out) < ROUNDS, "the run must be stopped before it finished"
    return proc.returncode, err


ON_RAY = pytest.param("ray", marks=[pytest.mark.slow, pytest.mark.xdist_group("ray")])


@pytest.mark.parametrize("backend", ["inprocess", ON_RAY])
@pytest.mark.parametrize("sig", [signal.SIGINT])  # SIGKILL: tests/test_sweep.py kills a run
def test_stop_then_resume_equals_uninterrupted(tiny_toml, tmp_path, sig, backend, capsys):
    """On Ray the signal mostly lands while the driver waits inside Ray's native code."""
    overrides = [f"run.rounds={ROUNDS}", "method='fedadam'", *SMALL]  # FedAdam: server state
    reference, _ = run_experiment(load_experiment(tiny_toml, overrides), tmp_path / "reference")

    stopped = tmp_path / "stopped"
    on_backend = [*overrides, f"run.backend='{backend}'"]
    code, err = _stop_after_two_checkpoints(tiny_toml, stopped, on_backend, sig)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL and not (stopped / "summary.json").exists()
    else:  # SIGINT: the round in progress is abandoned and the run says so
        assert code == 130, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("stopped: interrupted by SIGINT in round ")
        assert last.endswith(f"continue with: fedsim resume {stopped}")
        summary = json.loads((stopped / "summary.json").read_text())
        assert summary["status"] == "interrupted" and 2 <= summary["rounds_done"] < ROUNDS
        assert "interrupted by SIGINT" in (stopped / "log.txt").read_text()
        assert run_cli(["report", str(stopped)]) == 0
        assert "interrupted" in capsys.readouterr().out

    resumed = _fedsim("resume", str(stopped), cwd=tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert (stopped / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert (stopped / "comm.csv").read_bytes() == (reference / "comm.csv").read_bytes()
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_done"] == ROUNDS


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tiny_toml, tmp_path):
    """Also: wall time adds up over sessions (up to the checkpoint resumed from)."""
    overrides = ["run.rounds=3", "method='fedadam'", *SMALL]
    reference, _ = run_experiment(load_experiment(tiny_toml, overrides), tmp_path / "reference")
    crashed = tmp_path / "crashed"
    with pytest.raises(RunError):
        run_experiment(load_experiment(tiny_toml, overrides), crashed, callbacks=[CrashAfter(2)])
    newest = checkpoint_files(crashed)[0]
    assert newest.name == "round-000002.ckpt"
    before = load_checkpoint(crashed).meta["wall_time_s"]
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated
    _, summary = resume_run(crashed)  # from round 1's checkpoint
    assert summary["wall_time_s"] > before * 0.5  # the first session's time is counted
    assert (crashed / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    log = (crashed / "log.txt").read_text()
    assert "skipping a damaged checkpoint" in log and "round-000002.ckpt: truncated" in log


def test_resume_of_a_non_run_dir_is_a_clear_error(tmp_path):
    proc = _fedsim("resume", str(tmp_path), cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "not a run directory" in err and "Traceback" not in err


def test_fingerprint_ignores_keys_left_at_their_defaults(tiny_toml):
    """A release that adds a key (its default = the old behaviour) keeps older runs
    resumable: keys at their defaults are not hashed; a changed value still is."""
    from fedsim.config.load import config_fingerprint as fingerprint

    base = load_experiment(tiny_toml)
    spelled_out = load_experiment(tiny_toml, ["client.weight_decay=0.0", "run.max_reply_mb=0"])
    changed = load_experiment(tiny_toml, ["client.weight_decay=0.1"])
    assert fingerprint(base) == fingerprint(spelled_out) != fingerprint(changed)


def test_a_checkpoint_with_the_older_full_fingerprint_still_resumes(
    tiny_toml, tmp_path, monkeypatch
):
    """Checkpoints of earlier releases hashed every key; resume accepts that form too, and
    still refuses a config that computes something else."""
    import fedsim.federation.callbacks as callbacks
    from fedsim.config.load import config_fingerprint
    from fedsim.resume import ResumeRefused

    def older(exp):
        return config_fingerprint(exp, with_defaults=True)

    monkeypatch.setattr(callbacks, "config_fingerprint", older)
    crashed = tmp_path / "crashed"
    with pytest.raises(RunError):
        run_experiment(load_experiment(tiny_toml), crashed, callbacks=[CrashAfter(1)])
    monkeypatch.undo()
    edited = (crashed / "config.toml").read_text().replace("lr = 0.05", "lr = 0.07")
    original = (crashed / "config.toml").read_text()
    (crashed / "config.toml").write_text(edited)
    with pytest.raises(ResumeRefused, match="differs from the experiment"):
        resume_run(crashed)
    (crashed / "config.toml").write_text(original)
    _, summary = resume_run(crashed)
    assert summary["status"] == "completed"


class InterruptAtEndOf(CrashAfter):
    """A SIGTERM that lands once round ``n``'s rows are written, before round n + 1 starts."""

    def on_round_end(self, run, server_round, metrics):
        if server_round == self.n:
            from fedsim.interrupt import RunInterrupted

            raise RunInterrupted(signal.SIGTERM)


def test_the_stop_message_names_the_round_in_progress(tiny_toml, tmp_path):
    from fedsim.runner import RunStopped

    overrides = ["run.rounds=3", *SMALL]
    with pytest.raises(RunStopped) as stopped:
        exp = load_experiment(tiny_toml, overrides)
        run_experiment(exp, tmp_path / "r", callbacks=[InterruptAtEndOf(2)])
    message = str(stopped.value)
    assert message.startswith("interrupted by SIGTERM in round 2; the last checkpoint is of round")
