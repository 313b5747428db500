"""One process per run directory (``fedsim.results.lock``): a second ``fedsim run --out`` or a
``fedsim resume`` of a directory a live run holds fails at once, naming the directory and the
holder's PID, and the first run ends exactly as an undisturbed one; a crashed holder (kill -9)
leaves nothing locked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsim.cli import run_cli
from fedsim.results.lock import LOCK_FILE, busy, claim, release
from fedsim.sweep import execute

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", FLWR_TELEMETRY_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _wait_for_holder(lock: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``proc`` has taken the lock (its PID is in the lock file)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if lock.read_text().strip() == str(proc.pid):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{lock}: never taken by PID {proc.pid}")


def _one_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_a_second_run_or_resume_on_a_busy_out_fails_and_the_first_is_untouched(
    fedavg_run: Path, tiny_toml: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "fedsim", "run", str(tiny_toml), "--out", str(out)],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_holder(out / LOCK_FILE, first)
        os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run: no race with its end
        try:
            for args in (["run", tiny_toml, "--out", out], ["resume", out]):
                code = run_cli([str(a) for a in args])
                err = capsys.readouterr().err
                assert code == 2, err
                _one_line(err, str(out), "in use by another fedsim process", f"PID {first.pid}")
        finally:
            os.kill(first.pid, signal.SIGCONT)
        _, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    # Byte for byte what an undisturbed run of the same config writes.
    for name in ("metrics.jsonl", "comm.csv"):
        assert (out / name).read_bytes() == (fedavg_run / name).read_bytes(), name
    assert not (out / LOCK_FILE).exists()  # released, and the file removed, at the end
    assert busy(out) is None


def test_a_killed_holder_leaves_nothing_locked(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"round": 0, "scope": "train"}\n')  # unfinished
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fedsim.results.lock import claim; "
         "claim(sys.argv[1]); time.sleep(600)", str(run_dir)],
        cwd=ROOT, env=_env(),
    )  # fmt: skip
    try:
        _wait_for_holder(run_dir / LOCK_FILE, holder)
        error = busy(run_dir)
        assert error is not None and f"PID {holder.pid}" in str(error)
        with pytest.raises(type(error), match=f"PID {holder.pid}"):
            claim(run_dir)
        execute._clear(run_dir)  # a sweep never deletes a run another process is running
        assert (run_dir / "metrics.jsonl").is_file()
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs; the OS drops the lock
        holder.wait()
    assert (run_dir / LOCK_FILE).read_text().strip() == str(holder.pid)  # stale file stays
    assert busy(run_dir) is None
    claim(run_dir)  # taken over at once
    try:
        assert (run_dir / LOCK_FILE).read_text().strip() == str(os.getpid())
    finally:
        release(run_dir)
    assert not (run_dir / LOCK_FILE).exists()
