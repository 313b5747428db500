"""``[faults]``: injected crashes, dropouts, stragglers and corrupted updates are left out and
recorded with their reasons in metrics.jsonl, the same on every run and after a resume;
adversarial updates pass the checks; min_clients retries or stops; bad values never start."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TINY
from helpers import CrashAfter, kill_9_then_resume

from fedsim.cli import run_cli
from fedsim.config import load_experiment
from fedsim.config.load import ConfigError
from fedsim.config.schema import FaultsConfig
from fedsim.faults import byzantine_clients, dropout_start, fault_for
from fedsim.runner import RunError, resume_run, run_experiment

ROUNDS = 3
CLIENTS = 10
# Every client trains every round (per_round = num), so which client fails how follows from
# the fault draws alone; seed 3 draws every kind below, dropouts over two rounds included.
FAULTS = dict(
    crash_prob=0.15, nan_prob=0.1, inf_prob=0.1, misshape_prob=0.1, oversize_prob=0.1,
    dropout_prob=0.1, dropout_rounds=2,
)  # fmt: skip
SMALL = ["data.max_train_samples=2000", f"run.rounds={ROUNDS}", "run.seed=3"]
# What the server says when it leaves each kind of faulty client out.
REASONS = {
    "crash": "fault injected: crash (faults.crash_prob)",
    "dropout": "fault injected: dropped out for rounds",
    "nan": "holds NaN or Inf",
    "inf": "holds NaN or Inf",
    "misshape": "has shape",
    "oversize": "has shape",
}


def _toml(path: Path, faults: dict, method: str = "fedavg") -> Path:
    lines = [f"{key} = {json.dumps(value)}" for key, value in faults.items()]
    text = TINY.replace('method = "fedavg"', f'method = "{method}"')
    path.write_text(text + "\n[faults]\n" + "\n".join(lines) + "\n")
    return path


def _rows(run_dir: Path, scope: str) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["scope"] == scope]


def _overrides(per_round: int = CLIENTS) -> list[str]:
    return [*SMALL, f"clients.num={CLIENTS}", f"clients.per_round={per_round}"]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> tuple[Path, Path]:
    """(experiment file, completed run) of FAULTS on every client, shared by the tests that
    compare against it."""
    root = tmp_path_factory.mktemp("faults")
    toml = _toml(root / "faulty.toml", FAULTS)
    run_dir, summary = run_experiment(load_experiment(toml, _overrides()), root / "run")
    assert summary["status"] == "completed"
    return toml, run_dir


def test_faulty_clients_are_left_out_and_recorded_with_reasons(faulty):
    _, run_dir = faulty
    cfg = FaultsConfig(**FAULTS)
    expected = {
        (r, pid): fault.kind
        for r in range(1, ROUNDS + 1)
        for pid in range(CLIENTS)
        if (fault := fault_for(cfg, 3, r, pid)) is not None
    }
    assert set(expected.values()) == set(REASONS)  # every kind is exercised
    recorded = {
        (row["round"], c["partition_id"]): c
        for row in _rows(run_dir, "failures")
        for c in row["clients"]
    }
    assert set(recorded) == set(expected)  # exactly the faulty clients, no healthy one
    for key, kind in expected.items():
        entry = recorded[key]
        assert REASONS[kind] in entry["reason"], (key, kind, entry)
        assert (entry["stage"], entry["attempt"]) == ("train", 0)
    for row in _rows(run_dir, "train"):
        failed = sum(1 for r, _ in expected if r == row["round"])
        assert (row["clients"], row["failures"]) == (CLIENTS - failed, failed)
    dropped = sorted(k for k, kind in expected.items() if kind == "dropout")
    assert any((r + 1, pid) in dropped for r, pid in dropped)  # a dropout spans two rounds
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["client_failures"] == len(expected)
    accuracy = [r["accuracy"] for r in _rows(run_dir, "server-eval")]
    assert max(accuracy[1:]) > 2 * accuracy[0]  # the healthy clients still learn


def test_the_same_config_gives_the_same_bytes(faulty, tmp_path):
    toml, reference = faulty
    again, _ = run_experiment(load_experiment(toml, _overrides()), tmp_path / "again")
    for name in ("metrics.jsonl", "comm.csv"):
        assert (again / name).read_bytes() == (reference / name).read_bytes(), name


def test_a_crashed_faulty_run_resumes_to_the_same_bytes(faulty, tmp_path):
    toml, reference = faulty
    crashed = tmp_path / "crashed"
    with pytest.raises(RunError, match="simulated crash"):
        run_experiment(load_experiment(toml, _overrides()), crashed, callbacks=[CrashAfter(2)])
    assert len(_rows(crashed, "train")) == 2
    resume_run(crashed)
    for name in ("metrics.jsonl", "comm.csv"):
        assert (crashed / name).read_bytes() == (reference / name).read_bytes(), name


def test_dropouts_last_their_span_and_are_stateless():
    cfg = FaultsConfig(dropout_prob=0.05, dropout_rounds=3)
    starts = [(pid, s) for pid in range(50) for s in range(1, 30) if _drops_at(cfg, pid, s)]
    assert starts, "no dropout drawn"
    pid, start = starts[0]
    covered = [r for r in range(1, 40) if dropout_start(cfg, 0, r, pid) == start]
    assert covered == [start, start + 1, start + 2]
    assert fault_for(cfg, 0, start + 1, pid).detail == f"rounds {start}-{start + 2}"


def _drops_at(cfg: FaultsConfig, pid: int, start: int) -> bool:
    return dropout_start(cfg, 0, start, pid) == start


@pytest.mark.parametrize("kind", ["scale", "sign_flip"])
def test_adversarial_updates_pass_the_checks(tiny_toml, tmp_path, kind):
    """Scaled (x0: no update at all) and sign-flipped updates reach the aggregate."""
    faults = (
        {"scale_prob": 1.0, "scale_factor": 0.0} if kind == "scale" else {"sign_flip_prob": 1.0}
    )
    toml = _toml(tmp_path / "adv.toml", faults)
    run_dir, _ = run_experiment(
        load_experiment(toml, [*SMALL, "run.rounds=2"]), tmp_path / "run"
    )  # fmt: skip
    assert not _rows(run_dir, "failures")
    assert all(r["failures"] == 0 for r in _rows(run_dir, "train"))
    losses = [r["loss"] for r in _rows(run_dir, "server-eval")]
    if kind == "scale":  # global + 0 x update: the global model stays where it was
        assert losses == pytest.approx([losses[0]] * 3, rel=1e-5)
    else:  # every client pushes the model uphill
        assert losses[2] > losses[1] > losses[0]


def test_byzantine_clients_are_a_fixed_seeded_set():
    cfg = FaultsConfig(byzantine_fraction=0.3, byzantine_attack="scale", crash_prob=0.2)
    chosen = byzantine_clients(cfg, 0, 20)
    assert len(chosen) == 6 and chosen <= set(range(20))
    assert byzantine_clients(cfg, 0, 20) == chosen  # a pure function of (seed, clients.num)
    assert len({byzantine_clients(cfg, seed, 20) for seed in range(5)}) > 1  # seed-dependent
    assert len(byzantine_clients(FaultsConfig(byzantine_fraction=0.25), 0, 10)) == 3  # half up
    assert byzantine_clients(FaultsConfig(), 0, 20) == frozenset()
    for r in range(1, 6):  # the same clients attack in every round and attempt ...
        for attempt in (0, 1):
            faults = {p: fault_for(cfg, 0, r, p, attempt, chosen) for p in range(20)}
            kinds = {p: f.kind for p, f in faults.items() if f is not None}
            assert {p for p, kind in kinds.items() if kind == "scale"} <= chosen
            # ... unless a per-round draw (here a crash) hits them first
            assert {p for p in chosen if kinds.get(p) != "scale"} == {
                p for p in chosen if fault_for(cfg, 0, r, p, attempt) is not None
            }


def _attacked(run_dir: Path) -> dict[int, set[int]]:
    """{round: clients} from the ClientApp's log lines of byzantine attacks."""
    found: dict[int, set[int]] = {}
    pattern = r"round (\d+), client (\d+): fault injected: scale \(faults.byzantine_fraction\)"
    for r, pid in re.findall(pattern, (run_dir / "log.txt").read_text()):
        found.setdefault(int(r), set()).add(int(pid))
    return found


def test_byzantine_clients_hurt_the_mean_but_not_the_median(tmp_path):
    """3 of 10 clients send their update x -4 every round: the mean moves the model uphill
    (0.7 - 0.3 x 4 < 0), the coordinate-wise median keeps learning."""
    faults = {"byzantine_fraction": 0.3, "byzantine_attack": "scale", "scale_factor": -4.0}
    toml = _toml(tmp_path / "byz.toml", faults)
    overrides = [
        *_overrides(),
        "run.rounds=2",
        "data.partitioner='iid'",
        "run.checkpoint_every=0",
        "data.max_train_samples=6000",
    ]
    chosen = byzantine_clients(FaultsConfig(**faults), 3, CLIENTS)
    accuracy = {}
    for rule in ("mean", "median"):
        exp = load_experiment(toml, [*overrides, f"strategy.aggregator={rule}"])
        run_dir, summary = run_experiment(exp, tmp_path / rule)
        assert summary["status"] == "completed" and not _rows(run_dir, "failures")
        assert _attacked(run_dir) == {1: chosen, 2: chosen}
        accuracy[rule] = [r["accuracy"] for r in _rows(run_dir, "server-eval")]
    assert accuracy["median"][-1] > 0.5
    assert accuracy["mean"][-1] < 0.3 and accuracy["median"][-1] > accuracy["mean"][-1] + 0.3


def test_stragglers_miss_the_deadline_and_are_recorded(tmp_path):
    """A straggler's call lasts just past client.timeout: rejected on the client's own clock."""
    toml = _toml(tmp_path / "slow.toml", {"straggler_prob": 0.15})
    # 5 s: the healthy clients' calls stay far inside it even on a loaded 2-core machine
    exp = load_experiment(toml, [*_overrides(), "run.rounds=1", "run.seed=1", "client.timeout=5"])
    slow = [p for p in range(CLIENTS) if fault_for(exp.faults, 1, 1, p) is not None]
    assert len(slow) == 1  # seed 1: one straggler, so the test waits about 5 s
    run_dir, _ = run_experiment(exp, tmp_path / "run")
    ((train,), (failures,)) = _rows(run_dir, "train"), _rows(run_dir, "failures")
    assert (train["clients"], train["failures"]) == (CLIENTS - 1, 1)
    (entry,) = failures["clients"]
    assert entry["partition_id"] == slow[0]
    assert re.match(
        r"timed out: [\d.]+s > client\.timeout=5\.0s \(fault injected: straggler", entry["reason"]
    )


def test_a_round_short_of_min_clients_stops_the_run_naming_the_key(tmp_path):
    toml = _toml(tmp_path / "min.toml", {"crash_prob": 0.5, "min_clients": 4})
    with pytest.raises(RunError, match=r"fewer than faults.min_clients = 4, after 0 retries"):
        run_experiment(load_experiment(toml, [*SMALL, "run.rounds=1"]), tmp_path / "run")
    assert "fault injected: crash" in (tmp_path / "run" / "log.txt").read_text()


def test_a_round_short_of_min_clients_is_sampled_again(tmp_path):
    faults = {"crash_prob": 0.3, "min_clients": 4, "max_retries": 10}
    toml = _toml(tmp_path / "retry.toml", faults, method="fedadam")  # server state rolled back
    run_dir, summary = run_experiment(
        load_experiment(toml, [*SMALL, "run.rounds=2"]), tmp_path / "run"
    )  # fmt: skip
    assert summary["status"] == "completed"
    train = _rows(run_dir, "train")
    assert all(r["clients"] == 4 and r["failures"] == 0 for r in train)
    retried = {r["round"]: r["retries"] for r in train if "retries" in r}
    assert retried, "no round was short: pick another seed"
    for row in _rows(run_dir, "failures"):
        attempts = {c["attempt"] for c in row["clients"]}
        assert attempts and max(attempts) < retried[row["round"]]  # the kept attempt is clean
        assert all("fault injected: crash" in c["reason"] for c in row["clients"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("faults.crash_prob=1.5", "faults.crash_prob: Input should be less than or equal to 1"),
        ("faults.nan_prob=-0.1", "faults.nan_prob: Input should be greater than or equal to 0"),
        ("faults.dropout_rounds=-2", "faults.dropout_rounds: Input should be greater than 0"),
        ("faults.max_retries=-1", "faults.max_retries: Input should be greater than or equal"),
        ("faults.oversize_factor=1", "faults.oversize_factor: Input should be greater than or"),
        ("faults.crash_prob=0.6 faults.scale_prob=0.6", "faults: crash_prob + straggler_prob"),
        ("faults.min_clients=5", "faults.min_clients: must be <= clients.per_round"),
        ("faults.straggler_prob=0.1", "faults.straggler_prob: a straggler is left out by a"),
        ("faults.byzantine_fraction=0.01", "faults.byzantine_fraction: 0.01 of clients.num = 10"),
        ("faults.byzantine_fraction=1.5", "faults.byzantine_fraction: Input should be less than"),
        (
            "faults.byzantine_attack=noise",
            "faults.byzantine_attack: Input should be 'sign_flip' or",
        ),
        ("faults.crash=0.1", "faults.crash: unknown key"),
    ],
)
def test_bad_fault_settings_are_refused_naming_the_key(tiny_toml, override, message):
    with pytest.raises(ConfigError) as err:
        load_experiment(tiny_toml, [override, "clients.per_round=4"])
    assert str(err.value).startswith(f"{tiny_toml}: {message}")


def test_the_cli_refuses_bad_faults_before_the_run_starts(tiny_toml, tmp_path, capsys):
    out = tmp_path / "never"
    code = run_cli(["run", str(tiny_toml), "--set", "faults.crash_prob=2", "--out", str(out)])
    assert code == 2
    assert "faults.crash_prob: Input should be less than or equal to 1" in capsys.readouterr().err
    assert not out.exists()


# -- a real kill -9 ---------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_of_a_faulty_run_then_resume_gives_the_same_bytes(tmp_path):
    faults = {**FAULTS, "min_clients": 2, "max_retries": 5}
    toml = _toml(tmp_path / "kill.toml", faults, method="fedadam")
    overrides = [*SMALL[:1], "run.rounds=4", "run.seed=3", "clients.per_round=4"]
    reference, _ = run_experiment(load_experiment(toml, overrides), tmp_path / "reference")

    killed = tmp_path / "killed"
    kill_9_then_resume(toml, overrides, killed, after=2, rounds=4)
    for name in ("metrics.jsonl", "comm.csv"):
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
    assert _rows(killed, "failures")  # the faults did happen
