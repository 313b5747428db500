"""fedsim's Ray backend (a pool of worker actors) where it differs from in-process: workers
that die or stall, client state across a kill -9, Ray's own start-up. That it gives the
in-process bytes is tests/test_backends.py; a plugin method on it, tests/test_plugin.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import RepliesSeen, fedsim_with

from fedsim.checkpoint import checkpoint_files
from fedsim.config import load_experiment
from fedsim.runner import run_experiment

# Ray clusters and local SuperLinks (fixed ports) run one at a time under pytest-xdist.
pytestmark = pytest.mark.xdist_group("ray")

FAULTS = """
method = "toy_faults"
[run]
rounds = 1
backend = "ray"
exchange_timeout = 45.0   # generous: healthy workers answer within it on a loaded 2-core CI
[data]
dataset = "mnist"
partitioner = "dirichlet"
max_train_samples = 3000
[clients]
num = 6
per_round = 6
[eval]
max_samples = 2000
[toy_faults]
crash = [1]   # raises: an error reply
die = [2]     # os._exit in the worker: the worker is lost and replaced
slow = [3]    # sleeps past run.exchange_timeout: its worker is stopped and replaced
slow_s = 120.0
"""


def _rows(run_dir: Path, scope: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["scope"] == scope]


@pytest.mark.slow
def test_workers_that_crash_die_or_stall_are_failed_clients(plugin_site, tmp_path):
    toml = tmp_path / "faults.toml"
    toml.write_text(FAULTS)
    done = fedsim_with(plugin_site, "run", str(toml), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "run"
    (train,) = _rows(run_dir, "train")
    assert (train["clients"], train["failures"]) == (3, 3)
    log = (run_dir / "log.txt").read_text()
    assert "client 1 left out of train: RuntimeError: toy fault: client 1 crashed" in log
    assert "client 2 left out of train: worker lost" in log
    assert "client 3 left out of train: no reply before the deadline" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["client_failures"] == 3
    assert [r["round"] for r in _rows(run_dir, "server-eval")] == [0, 1]


@pytest.mark.slow
def test_killed_ray_run_resumes_with_client_state_to_the_inprocess_bytes(tiny_toml, tmp_path):
    """SCAFFOLD keeps control variates in Context.state: on this backend fedsim holds the
    contexts, so they are checkpointed and a kill -9 loses nothing."""
    overrides = ["method='scaffold'", "client.momentum=0", "client.lr=0.1", "run.rounds=4",
                 "clients.per_round=3", "data.max_train_samples=2000"]  # fmt: skip
    reference, _ = run_experiment(load_experiment(tiny_toml, overrides), tmp_path / "inprocess")

    killed = tmp_path / "ray"
    sets = [a for o in [*overrides, "run.backend='ray'"] for a in ("--set", o)]
    cmd = [sys.executable, "-m", "fedsim", "run", str(tiny_toml), *sets, "--out", str(killed)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=tmp_path)  # fmt: skip
    deadline = time.monotonic() + 300
    while len(checkpoint_files(killed)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    shutil.rmtree(Path(tempfile.gettempdir()) / f"fedsim-ray-{proc.pid}", ignore_errors=True)
    assert not (killed / "summary.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "fedsim", "resume", str(killed)],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    for name in ("metrics.jsonl", "comm.csv"):
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["backend"] == "ray" and summary["status"] == "completed"
    evals = _rows(killed, "server-eval")
    assert evals[-1]["loss"] < evals[0]["loss"]  # and it learned


def test_worker_count_follows_cpus_and_round_size(tiny_toml):
    from fedsim.backends.ray_workers import RayBackendError, worker_count

    exp = load_experiment(tiny_toml, ["clients.per_round=4"])
    assert worker_count(exp, 2.0) == 2  # one per CPU
    assert worker_count(exp, 16.0) == 4  # never more than a round's clients
    assert worker_count(load_experiment(tiny_toml, ["clients.num_cpus=2"]), 3.0) == 1
    assert worker_count(load_experiment(tiny_toml, ["run.ray_workers=3"]), 4.0) == 3
    # GPUs: fractional shares pack workers on a device, and the scarcer resource decides
    quarter = load_experiment(tiny_toml, ["clients.per_round=10", "clients.num_gpus=0.25"])
    assert worker_count(quarter, 16.0, 1.0) == 4 and worker_count(quarter, 2.0, 1.0) == 2
    assert worker_count(quarter, 16.0, 2.0) == 8
    third = load_experiment(tiny_toml, ["clients.per_round=10", "clients.num_gpus=0.33"])
    assert worker_count(third, 16.0, 1.0) == 3
    # what cannot be placed is an error naming the key, not workers waiting forever
    for overrides, cpus, gpus, message in [
        (["run.ray_workers=3"], 2.0, 0.0, "run.ray_workers = 3: the Ray cluster (2.0 CPUs, 0.0 "
         "GPUs) holds 2 at once"),
        (["clients.num_gpus=0.5"], 8.0, 0.0, "clients.num_gpus = 0.5: the Ray cluster has 0.0 GPUs"
         " (set clients.num_gpus = 0 to train on CPUs)"),
        (["clients.num_cpus=4"], 2.0, 0.0, "clients.num_cpus = 4.0: the Ray cluster has 2.0 CPUs"),
    ]:  # fmt: skip
        with pytest.raises(RayBackendError) as caught:
            worker_count(load_experiment(tiny_toml, overrides), cpus, gpus)
        assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.slow
def test_local_ray_runs_only_what_fedsim_uses_and_refuses_an_unplaceable_pool(tiny_toml):
    """The local head skips the autoscaler monitor, the log monitor and the dashboard's API
    server (``fedsim.backends.ray_lean``); Ray starts in the background, so an error in its
    start reaches the driver at the first exchange, and the grid still shuts down."""
    import psutil

    from fedsim.backends.ray_workers import RayBackendError, RayGrid, wait_for_ray_stop
    from fedsim.client_app import client_app

    grid = RayGrid(client_app, load_experiment(tiny_toml, ["run.backend='ray'"]))
    try:
        grid.wait_ready()
        commands = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    finally:
        grid.shutdown()
        wait_for_ray_stop()
    assert any("gcs_server" in c for c in commands) and any("raylet" in c for c in commands)
    for daemon in ("autoscaler/_private/monitor.py", "log_monitor.py", "dashboard/dashboard.py"):
        assert not any(daemon in c for c in commands), (daemon, commands)

    too_many = load_experiment(tiny_toml, ["run.backend='ray'", "run.ray_workers=64"])
    grid = RayGrid(client_app, too_many)
    try:
        with pytest.raises(RayBackendError, match="run.ray_workers = 64"):
            grid.wait_ready()
    finally:
        grid.shutdown()
        wait_for_ray_stop()


@pytest.mark.slow
def test_an_early_start_is_taken_by_the_run_or_stopped(tiny_toml):
    """``fedsim run`` begins Ray's start before the experiment loads; the run's grid takes
    it over, and a start that no run takes (the experiment was invalid) is stopped."""
    import ray

    from fedsim.backends import ray_start
    from fedsim.config.load import backend_hint

    backend, address = backend_hint(tiny_toml, {"run.backend": "ray"})
    assert (backend, address) == ("ray", None)
    ray_start.start_early(address)
    early = ray_start._EARLY
    taken = ray_start.take_start(load_experiment(tiny_toml, ["run.backend='ray'"]).run.ray_address)
    assert taken is early and ray_start._EARLY is None
    cpus, _ = early.wait()
    assert cpus == ray_start.usable_cpus() and ray.is_initialized()
    early.stop()
    ray_start.wait_for_ray_stop()
    assert not ray.is_initialized() and not Path(early.temp_dir).exists()

    ray_start.start_early(None)
    ray_start.cancel_early()
    ray_start.wait_for_ray_stop()
    assert not ray.is_initialized() and ray_start._EARLY is None


def test_an_invalid_experiment_on_ray_is_refused_before_a_run(tiny_toml, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", str(tiny_toml), "--backend", "ray",
         "--set", "run.roundz=3", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "run.roundz" in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_runs_join_a_running_cluster_and_leave_it_running(tiny_toml, tmp_path):
    """``run.ray_address``: a cluster someone else started (``ray start --head``) is joined,
    by its GCS address and through Ray Client (``ray://``); the results are the in-process
    bytes, and afterwards the driver is disconnected, the cluster still runs and every
    worker's CPU is free again. The cluster declares one GPU (Ray schedules by declared
    resources): ``clients.num_gpus = 0.25`` packs four workers on it, which train on the
    CPU here (no CUDA) and give the same bytes."""
    import ray

    from fedsim.backends.ray_start import wait_for_ray_stop

    gcs, client = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="fsray")  # short: Ray's socket paths have a length limit
    log = tmp_path / "head.log"
    ray_cli = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", f"--port={gcs}",
         f"--ray-client-server-port={client}", "--num-cpus=2", "--num-gpus=1",
         "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        reference, _ = run_experiment(load_experiment(tiny_toml), tmp_path / "inprocess")
        expected = (reference / "metrics.jsonl").read_bytes()
        packed = ["clients.num_gpus=0.25", "clients.num_cpus=0.5"]  # 4 workers, 1 thread each
        for name, address, more, workers in [
            ("gcs", f"127.0.0.1:{gcs}", [], 2),
            ("client", f"ray://127.0.0.1:{client}", [], 2),
            ("packed", f"127.0.0.1:{gcs}", packed, 4),
        ]:
            exp = load_experiment(
                tiny_toml, [f"run.ray_address='{address}'", "run.backend='ray'", *more]
            )
            replies = RepliesSeen()  # reported as they arrive, on Ray too
            run_dir, summary = run_experiment(exp, tmp_path / name, callbacks=[replies])
            wait_for_ray_stop()
            assert [r[2:] for r in replies.seen if r[0] == 1] == [(n, 4) for n in range(1, 5)]
            assert summary["status"] == "completed", summary
            assert (run_dir / "metrics.jsonl").read_bytes() == expected, name
            assert not ray.is_initialized() and head.poll() is None, name
            assert f"ray backend: {workers} workers starting" in (run_dir / "log.txt").read_text()
        ray.init(address=f"127.0.0.1:{gcs}", logging_level="ERROR", log_to_driver=False)
        try:
            deadline = time.monotonic() + 30  # the killed workers' CPUs come back
            free = ray.available_resources
            while free().get("CPU", 0.0) < 2.0 or free().get("GPU", 0.0) < 1.0:
                assert time.monotonic() < deadline, ray.available_resources()
                time.sleep(0.5)
        finally:
            ray.shutdown()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _a_process_mentions(temp):
            assert time.monotonic() < deadline, "the test's Ray cluster did not stop"
            time.sleep(0.5)
        shutil.rmtree(temp, ignore_errors=True)


def _a_process_mentions(text: str) -> bool:
    """Whether a running process has ``text`` in its command line."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if text in " ".join(proc.cmdline()):
                return True
        except psutil.Error:
            pass
    return False


def test_a_cluster_address_where_nothing_answers_fails_the_run_at_once(tiny_toml, tmp_path):
    """``ray.init`` would retry such an address for minutes without a word."""
    port = _free_port()  # bound, then released: nothing listens there
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", str(tiny_toml), "--backend", "ray",
         "--set", f"run.ray_address='ray://127.0.0.1:{port}'", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"run.ray_address = 'ray://127.0.0.1:{port}': nothing answers" in done.stderr
    assert time.monotonic() - started < 60
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "nothing answers" in summary["error"]


def test_a_local_ray_has_the_cpus_this_process_may_use(monkeypatch):
    """Not ``os.cpu_count()``: on a SLURM or taskset allocation of a few of a node's cores,
    Ray would otherwise start workers for every core of the node."""
    import ray._private.utils

    from fedsim.backends.ray_start import usable_cpus
    from fedsim.sweep.execute import child_env

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert usable_cpus() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda **kw: 6)  # a 6-CPU quota
    assert usable_cpus() == 6
    # `fedsim sweep --jobs 2`: each run's local Ray takes half, not all of them twice over
    monkeypatch.delenv("FEDSIM_RAY_SHARE", raising=False)
    assert "FEDSIM_RAY_SHARE" not in child_env(1)
    monkeypatch.setenv("FEDSIM_RAY_SHARE", child_env(2)["FEDSIM_RAY_SHARE"])
    assert usable_cpus() == 3


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset")
def test_a_local_ray_under_taskset_gets_one_cpu():
    script = (
        "from fedsim.backends.ray_start import RayStart, wait_for_ray_stop\n"
        "start = RayStart(None)\nprint(start.wait())\nstart.stop()\nwait_for_ray_stop()\n"
    )
    done = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "(1.0, 0.0)"
