"""Deployment on loopback: a real SuperLink, real SuperNodes, `flwr run . CONNECTION`.

Every command of the README's "Deploy on real machines" runbook runs here, on 127.0.0.1 with
free ports chosen at run time (another test runs a local SuperLink on Flower's default ports),
each test with its own FLWR_HOME. Every process a test starts is killed, with its whole
process tree, in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from helpers import free_ports

from fedsim.cli import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deploy")]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXPERIMENT = ROOT / "experiments" / "quickstart.toml"
SMALL = "run.rounds=2 data.max_train_samples=1000 eval.max_samples=500"
# flwr's ExitCode.SUPERNODE_CONNECTION_ERROR: logged as "Exit Code: 305"; the process exits 1
NODE_REFUSED = 305


def kill_tree(proc: psutil.Process | subprocess.Popen) -> None:
    """Kill a process and every descendant (collected before anything is killed)."""
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.1)


def _alive(proc: psutil.Process) -> bool:
    """Not gone and not a zombie (a killed orphan may stay a zombie until init reaps it)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Federation:
    """The processes of one test: a SuperLink, SuperNodes, `flwr`; all on 127.0.0.1."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.home = tmp_path / "flwr-home"
        self.home.mkdir()
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "OMP_NUM_THREADS": "1",
        }
        self.port, *self.node_ports = free_ports(6)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def superlink(self, *tls: str) -> None:
        self.start(
            "superlink", "flower-superlink", *(tls or ("--insecure",)),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(self.tmp / "state.db"),
            "--disable-runtime-dependency-installation",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert self.procs["superlink"].poll() is None, self.log("superlink")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert time.monotonic() < deadline, "SuperLink did not listen\n" + self.log("superlink")
            time.sleep(0.2)

    def supernode(self, k: int, n: int, *tls: str, extra: str = "") -> subprocess.Popen:
        return self.start(
            f"supernode-{k}", "flower-supernode", *(tls or ("--insecure",)),
            "--superlink", f"127.0.0.1:{self.port}",
            "--node-config", f"partition-id={k} num-partitions={n}{extra}",
            "--port", str(self.node_ports[k]),
        )  # fmt: skip

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run_args(self, connection: str, overrides: str, out: Path) -> list[str]:
        # the experiment path as the runbook gives it: relative to the app (this repo)
        run_config = f'experiment="experiments/quickstart.toml" overrides="{overrides}" out="{out}"'
        return [str(BIN / "flwr"), "run", ".", connection, "--stream", "--run-config", run_config]

    def stop(self) -> None:
        for proc in self.procs.values():
            kill_tree(proc)
        for proc in psutil.process_iter():  # anything re-parented away from its tree
            try:
                if proc.environ().get("FLWR_HOME") == str(self.home):
                    kill_tree(proc)
            except (psutil.Error, OSError):
                continue


@pytest.fixture
def federation(tmp_path, monkeypatch):
    fed = Federation(tmp_path)
    monkeypatch.setenv("FLWR_HOME", str(fed.home))  # for `fedsim deploy connection`
    try:
        yield fed
    finally:
        fed.stop()


def cli(capsys, *args) -> str:
    code = run_cli([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _rows_so_far(run_dir: Path) -> list[dict]:
    """The complete rows of a metrics.jsonl being written (none before it exists)."""
    try:
        text = (run_dir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def completed(proc: subprocess.CompletedProcess, out: Path) -> dict:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "summary.json").exists(), proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["backend"] == "flwr-run", summary
    return summary


def same_as_inprocess(out: Path, overrides: str, tmp_path: Path) -> None:
    from fedsim.config import load_experiment
    from fedsim.runner import run_experiment

    local, _ = run_experiment(load_experiment(EXPERIMENT, overrides.split()), tmp_path / "local")
    assert (local / "metrics.jsonl").read_bytes() == (out / "metrics.jsonl").read_bytes()
    assert (local / "comm.csv").read_bytes() == (out / "comm.csv").read_bytes()


def make_credentials(capsys, tmp_path: Path, nodes: int) -> tuple[Path, Path]:
    certs, keys = tmp_path / "certs", tmp_path / "keys"
    said = cli(capsys, "deploy", "certs", certs, "--host", "127.0.0.1")
    assert "127.0.0.1" in said and "localhost" in said
    cli(capsys, "deploy", "node-keys", keys, "--count", nodes)
    return certs, keys


def tls_superlink(fed: Federation, certs: Path) -> None:
    fed.superlink(
        "--ssl-ca-certfile", str(certs / "ca.crt"),
        "--ssl-certfile", str(certs / "server.pem"),
        "--ssl-keyfile", str(certs / "server.key"),
        "--enable-supernode-auth",
    )  # fmt: skip


def tls_node(certs: Path, keys: Path, k: int) -> list[str]:
    return [
        "--root-certificates", str(certs / "ca.crt"),
        "--auth-supernode-private-key", str(keys / f"supernode-{k}"),
    ]  # fmt: skip


# -- the helpers alone (fast) ----------------------------------------------------------------
def test_certs_and_keys_are_what_flower_loads(tmp_path, capsys):
    from fedsim.deploy.credentials import alt_names_of

    certs, keys = tmp_path / "certs", tmp_path / "keys"
    cli(capsys, "deploy", "certs", certs, "--host", "link.example.org", "--host", "10.1.2.3")
    assert set(alt_names_of(certs / "server.pem")) == {
        "link.example.org", "localhost", "10.1.2.3", "127.0.0.1"
    }  # fmt: skip
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((certs / key).stat().st_mode) == 0o600
    cli(capsys, "deploy", "node-keys", keys, "--count", 2)
    for k in (0, 1):
        private = load_ssh_private_key((keys / f"supernode-{k}").read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        assert stat.S_IMODE((keys / f"supernode-{k}").stat().st_mode) == 0o600
        assert (keys / f"supernode-{k}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    # Flower's own reader of `flwr supernode register KEY.pub` accepts the public key
    from flwr.cli.supernode.register import try_load_public_key

    assert try_load_public_key(keys / "supernode-0.pub")

    # nothing is overwritten without --force, and a refusal writes nothing
    before = (certs / "ca.crt").read_bytes()
    assert run_cli(["deploy", "certs", str(certs)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (certs / "ca.crt").read_bytes() == before
    assert run_cli(["deploy", "node-keys", str(keys), "--count", "3"]) == 2
    assert "supernode-0" in capsys.readouterr().err and not (keys / "supernode-2").exists()
    cli(capsys, "deploy", "node-keys", keys, "--count", 1, "--first", 2)  # a node added later
    assert (keys / "supernode-2.pub").exists() and not (keys / "supernode-3").exists()
    cli(capsys, "deploy", "certs", certs, "--force")
    assert (certs / "ca.crt").read_bytes() != before
    assert run_cli(["deploy", "certs", str(tmp_path / "x"), "--host", "https://a:1"]) == 2
    assert "not a DNS name" in capsys.readouterr().err and not (tmp_path / "x").exists()


# -- a real SuperLink and SuperNodes -----------------------------------------------------------
def test_insecure_deployment_gives_the_inprocess_bytes(federation, tmp_path, capsys):
    fed, out = federation, tmp_path / "run"
    overrides = f"{SMALL} clients.num=2 clients.per_round=2"
    cli(capsys, "deploy", "connection", "loopback", "--address", f"127.0.0.1:{fed.port}",
        "--insecure")  # fmt: skip
    fed.superlink()
    for k in range(2):
        fed.supernode(k, 2)
    proc = subprocess.run(
        fed.run_args("loopback", overrides, out),
        cwd=ROOT, env=fed.env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    completed(proc, out)
    same_as_inprocess(out, overrides, tmp_path)


def test_tls_and_node_auth_give_the_inprocess_bytes(federation, tmp_path, capsys):
    fed, out = federation, tmp_path / "run"
    overrides = f"{SMALL} clients.num=2 clients.per_round=2"
    certs, keys = make_credentials(capsys, tmp_path, 2)
    cli(capsys, "deploy", "connection", "secure", "--address", f"127.0.0.1:{fed.port}",
        "--root-certificates", certs / "ca.crt")  # fmt: skip
    tls_superlink(fed, certs)
    for k in range(2):
        done = fed.flwr("supernode", "register", str(keys / f"supernode-{k}.pub"), "secure")
        assert done.returncode == 0 and "registered successfully" in done.stdout, done
        fed.supernode(k, 2, *tls_node(certs, keys, k))
    proc = subprocess.run(
        fed.run_args("secure", overrides, out),
        cwd=ROOT, env=fed.env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    completed(proc, out)
    same_as_inprocess(out, overrides, tmp_path)
    said = cli(capsys, "report", out)  # the runbook's last step, on the ServerApp's host
    final = json.loads((out / "summary.json").read_text())["final"]["server-eval"]["accuracy"]
    assert f"{final:.4f}" in said


def test_unregistered_supernode_is_refused(federation, tmp_path, capsys):
    fed = federation
    certs, keys = make_credentials(capsys, tmp_path, 1)
    tls_superlink(fed, certs)
    node = fed.supernode(0, 1, *tls_node(certs, keys, 0))
    try:
        code = node.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("an unregistered SuperNode kept running\n" + fed.log("supernode-0"))
    said = fed.log("supernode-0")
    assert code == 1, said
    assert f"Exit Code: {NODE_REFUSED}" in said and "Failed to activate SuperNode" in said, said


def test_supernode_killed_mid_run_is_a_failed_client(federation, tmp_path, capsys):
    fed, out = federation, tmp_path / "run"
    # exchange_timeout: long enough for a healthy round trip on a loaded 2-core machine, so
    # only the killed node misses it; after it the server stops waiting for that node. 45 s
    # was not: under CI's slow suite (3 xdist workers on 2 cores) a live node missed it once.
    overrides = f"{SMALL} clients.num=3 clients.per_round=3 run.exchange_timeout=120"
    cli(capsys, "deploy", "connection", "loopback", "--address", f"127.0.0.1:{fed.port}",
        "--insecure")  # fmt: skip
    fed.superlink()
    for k in range(3):
        fed.supernode(k, 3)
    run = subprocess.Popen(
        fed.run_args("loopback", overrides, out),
        cwd=ROOT, env=fed.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    fed.procs["flwr-run"] = run
    deadline = time.monotonic() + 300
    while not any(r["round"] == 1 and r["scope"] == "train" for r in _rows_so_far(out)):
        assert run.poll() is None, run.stdout.read()
        assert time.monotonic() < deadline, "round 1 did not finish"
        time.sleep(0.5)
    kill_tree(fed.procs["supernode-2"])
    stdout, _ = run.communicate(timeout=300)
    summary = completed(subprocess.CompletedProcess(run.args, run.returncode, stdout, ""), out)
    assert summary["rounds_done"] == 2
    by_round = {(r["round"], r["scope"]): r for r in rows(out)}
    assert by_round[(1, "train")]["clients"] == 3 and by_round[(1, "train")]["failures"] == 0
    assert by_round[(2, "train")]["failures"] >= 1
    assert by_round[(2, "train")]["clients"] == 2  # the two live nodes trained and were averaged
    failed = by_round[(2, "failures")]["clients"]
    assert [(f["partition_id"], f["stage"]) for f in failed] == [(2, "train")], failed
    # which comes first depends on timing: the round's deadline, or the SuperLink noticing
    # the dead node's missing heartbeats and answering for it with an error reply
    reason = failed[0]["reason"]
    assert reason == "no reply before the deadline" or "Node Unavailable" in reason, reason


def test_hosts_ports_certificates_and_connections_are_checked(tmp_path, capsys, monkeypatch):
    """Each refused with exit 2 and one line naming the value, before anything is written."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    for host, words in [
        ("999.1.1.1", "not an IP address"),
        ("ex*ample.org", "not a DNS name"),
        ("-a.example.org", "not a DNS name"),
        ("ünï.example", "its ASCII form is 'xn--n-nga1b.example'"),
    ]:
        assert run_cli(["deploy", "certs", str(tmp_path / "c"), "--host", host]) == 2, host
        err = capsys.readouterr().err
        assert words in err and host in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
    cli(capsys, "deploy", "certs", tmp_path / "certs", "--host", "*.example.org")  # a wildcard
    junk = tmp_path / "junk.crt"
    junk.write_bytes(bytes(range(256)))
    cases = [
        (["--address", "127.0.0.1:99999", "--insecure"], "port 99999 is not 1-65535"),
        (["--address", "127.0.0.1:9093", "--root-certificates", str(junk)], "not a PEM cert"),
    ]
    for args, words in cases:
        assert run_cli(["deploy", "connection", "link", *args]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "flwr").exists()
    ca = tmp_path / "certs" / "ca.crt"
    cli(capsys, "deploy", "connection", "link", "--address", "10.0.0.1:9093",
        "--root-certificates", ca)  # fmt: skip
    config = (tmp_path / "flwr" / "config.toml").read_text()
    other = ["--address", "10.0.0.2:9093", "--insecure"]
    assert run_cli(["deploy", "connection", "link", *other]) == 2
    assert "[superlink.link] exists (address '10.0.0.1:9093'); pass --force" in (
        capsys.readouterr().err
    )
    assert (tmp_path / "flwr" / "config.toml").read_text() == config
    cli(capsys, "deploy", "connection", "link", "--address", "10.0.0.2:9093", "--insecure",
        "--force")  # fmt: skip
    assert "10.0.0.2:9093" in (tmp_path / "flwr" / "config.toml").read_text()


def test_fedbuff_on_the_real_clock_takes_updates_as_they_arrive(federation, tmp_path, capsys):
    """FedBuff with clock = "real" on a SuperLink: node 1 waits 20 s before each reply, so
    node 0's updates fill most steps and node 1's arrive stale (docs/async.md)."""
    fed, out = federation, tmp_path / "run"
    overrides = (
        f"{SMALL} run.rounds=4 clients.num=2 clients.per_round=2 method=fedbuff "
        "fedbuff.clock=real fedbuff.buffer_size=1 fedbuff.concurrency=2 fedbuff.poll_s=0.5"
    )
    cli(capsys, "deploy", "connection", "loopback", "--address", f"127.0.0.1:{fed.port}",
        "--insecure")  # fmt: skip
    fed.superlink()
    fed.supernode(0, 2)
    fed.supernode(1, 2, extra=" slowdown-s=20")
    proc = subprocess.run(
        fed.run_args("loopback", overrides, out),
        cwd=ROOT, env=fed.env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    completed(proc, out)
    train = [r for r in rows(out) if r["scope"] == "train"]
    assert [r["aggregated"] for r in train] == [1, 1, 1, 1]
    ups = [line.split(",") for line in (out / "comm.csv").read_text().splitlines()[1:]]
    arrivals = [int(u[2]) for u in ups if u[3] == "up"]
    assert arrivals.count(0) > arrivals.count(1)  # the fast node is back more often
    if 1 in arrivals:  # the slow node's update, when it came, was older than the model
        assert max(r["staleness-max"] for r in train) >= 1
