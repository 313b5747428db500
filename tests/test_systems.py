"""The virtual clock of ``[systems]``: its arithmetic on a scripted population, the traces it
reads, the draws it makes, and whole runs that feel it (byte-identical, resumable)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from conftest import TINY
from helpers import CrashAfter

from fedsim.config import load_experiment
from fedsim.config.load import ConfigError
from fedsim.config.systems import SystemsConfig
from fedsim.runner import RunError, resume_run, run_experiment
from fedsim.systems.clock import SystemsError, VirtualClock
from fedsim.systems.population import HOUR, Population, build_population
from fedsim.systems.traces import Device, TraceError, Windows, read_devices, read_windows

ALWAYS = None  # Population.windows for clients that never go offline


def _clock(devices, windows=ALWAYS, *, per_round=2, need=None, epochs=1, **cfg) -> VirtualClock:
    population = Population(tuple(devices), windows)
    return VirtualClock(
        SystemsConfig(**cfg), population, per_round=per_round, need=need or per_round,
        local_epochs=epochs,
    )  # fmt: skip


# -- arithmetic ---------------------------------------------------------------------------


def test_a_clients_time_is_its_compute_plus_its_traffic():
    clock = _clock([Device(100.0, 8000.0, 800.0)], per_round=1, backward_factor=3.0)
    # 3 x 10 samples x 0.1 s + 8e6 bits / 8e6 bit/s + 8e5 bits / 8e5 bit/s
    assert clock.duration(0, 1_000_000, 100_000, samples=10) == pytest.approx(3.0 + 1.0 + 1.0)
    traffic = 2.0  # 1 s down + 1 s up
    assert clock.charge(0, {"num-examples": 7}, 1_000_000, 100_000) == pytest.approx(2.1 + traffic)
    clock.local_epochs = 3
    assert clock.charge(0, {"num-examples": 7}, 1_000_000, 100_000) == pytest.approx(6.3 + traffic)
    work = {"num-examples": 7, "work-samples": 5}
    assert clock.charge(0, work, 1_000_000, 100_000) == pytest.approx(1.5 + traffic)
    assert clock.charge(0, {}, 1_000_000, 100_000) == pytest.approx(traffic)  # no work reported


def test_a_reply_that_counts_its_flops_is_charged_by_them():
    # the median client (100 ms per sample) does compute_gflops = 10; this one is 4x slower
    clock = _clock([Device(400.0, 8000.0, 8000.0)], per_round=1, compute_gflops=10.0)
    metrics = {"num-examples": 1000, "work-flops": 5e9}  # FLOPs win over samples
    assert clock.charge(0, metrics, 0, 0) == pytest.approx(5e9 / 2.5e9)


def test_the_deadline_and_over_commitment_leave_the_slow_out():
    clock = _clock([Device(1.0, 1.0, 1.0)] * 4, per_round=2, need=3, deadline_s=10.0)
    clock.begin_round()
    dropped = clock.settle({0: 4.0, 1: 12.0, 2: 6.0, 3: 5.0})
    assert dropped[1].startswith("deadline: took 12.0 virtual s")
    assert dropped[2].startswith("over-commitment: finished at 6.0 virtual s")
    assert set(dropped) == {1, 2}  # 0 and 3 are the first two on time
    row = clock.end_round()
    assert row["round-s"] == 5.0  # the server stops at its second usable reply
    assert (row["stragglers"], row["over-committed"], row["virtual-time-s"]) == (1, 1, 5.0)


def test_a_round_short_of_replies_waits_until_the_deadline():
    clock = _clock([Device(1.0, 1.0, 1.0)] * 3, per_round=3, deadline_s=10.0)
    clock.begin_round()
    assert set(clock.settle({0: 4.0, 1: 12.0, 2: 6.0})) == {1}
    assert clock.end_round()["round-s"] == 10.0
    clock.begin_round()  # the next round starts at the first one's end
    clock.settle({0: 1.0, 1: 2.0, 2: 3.0})
    assert clock.end_round() == {
        "virtual-time-s": 13.0, "round-s": 3.0, "waited-s": 0.0, "online": 3,
        "stragglers": 0, "over-committed": 0,
    }  # fmt: skip


def test_exchanges_of_one_round_add_up():
    clock = _clock([Device(1.0, 1.0, 1.0)] * 2, per_round=2, deadline_s=10.0)
    clock.begin_round()
    assert clock.settle({0: 6.0, 1: 3.0}) == {}
    dropped = clock.settle({0: 6.0, 1: 3.0})  # a second exchange: client 0 is at 12 s
    assert set(dropped) == {0}
    assert clock.end_round()["round-s"] == 10.0


def test_rounds_start_when_enough_clients_are_online():
    # client 0 online [0, 10), client 1 online [20, 30), client 2 always, in 100 s cycles
    windows = (Windows(100.0, ((0.0, 10.0),)), Windows(100.0, ((20.0, 30.0),)),
               Windows(100.0, ((0.0, 100.0),)))  # fmt: skip
    clock = _clock([Device(1.0, 1.0, 1.0)] * 3, windows, per_round=2)
    assert clock.begin_round() == [0, 2]
    clock.settle({0: 15.0, 2: 1.0})
    assert clock.end_round()["virtual-time-s"] == 15.0
    assert clock.begin_round() == [1, 2]  # at 20 s: 0 went offline at 10 s, 1 came at 20 s
    clock.settle({1: 85.0, 2: 1.0})
    row = clock.end_round()
    assert (row["waited-s"], row["virtual-time-s"]) == (5.0, 105.0)
    assert clock.begin_round() == [0, 2]  # at 105 s = 5 s into the next cycle


def test_a_retried_attempt_starts_when_the_failed_one_ended():
    clock = _clock([Device(1.0, 1.0, 1.0)] * 2, per_round=2)
    clock.begin_round()
    clock.settle({0: 7.0})
    clock.begin_round()
    clock.settle({0: 1.0, 1: 2.0})
    assert clock.end_round()["virtual-time-s"] == 9.0


def test_a_population_never_online_enough_is_refused_naming_the_keys():
    windows = (Windows(100.0, ((0.0, 10.0),)), Windows(100.0, ((50.0, 60.0),)))
    with pytest.raises(SystemsError, match="fewer than 2 clients are ever online.*online_hours"):
        _clock([Device(1.0, 1.0, 1.0)] * 2, windows, per_round=2)


# -- populations and traces ---------------------------------------------------------------


def test_drawn_profiles_are_per_client_seeded_and_centred_on_the_medians():
    cfg = SystemsConfig(availability="daily")
    small, large = build_population(cfg, 5, seed=1), build_population(cfg, 2000, seed=1)
    assert small.devices == large.devices[:5]  # client p's draw does not depend on num
    assert small.windows == large.windows[:5]
    assert build_population(cfg, 5, seed=2).devices != small.devices
    ms = sorted(d.compute_ms_per_sample for d in large.devices)
    up = sorted(d.upload_kbps for d in large.devices)
    assert ms[1000] == pytest.approx(cfg.compute_ms_per_sample, rel=0.1)
    assert up[1000] == pytest.approx(cfg.upload_kbps, rel=0.15)
    # 8 of every 24 hours online: about a third of the clients at any time
    assert len(large.online(5 * HOUR)) == pytest.approx(2000 / 3, rel=0.1)


def _write_csv(path: Path, rows: list[str]) -> str:
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_csv_and_fedscale_traces_give_the_same_population(tmp_path):
    devices_csv = _write_csv(tmp_path / "dev.csv", [
        "client,compute_ms_per_sample,download_kbps,upload_kbps",
        "2,50,4000,4000", "1,100,1000,1000",
    ])  # fmt: skip
    behaviour_csv = _write_csv(tmp_path / "beh.csv", [
        "client,cycle_s,online_from_s,online_to_s",
        "1,1000,0,100", "1,1000,500,600", "2,2000,100,2000",
    ])  # fmt: skip
    devices_pkl, behaviour_pkl = tmp_path / "dev.pkl", tmp_path / "beh.pkl"
    devices_pkl.write_bytes(pickle.dumps({
        2: {"computation": 50.0, "communication": 4000.0},
        1: {"computation": 100.0, "communication": 1000.0},
    }))  # fmt: skip
    behaviour_pkl.write_bytes(pickle.dumps({
        1: {"active": [0, 500], "inactive": [100, 600], "finish_time": 1000, "duration": 1},
        2: {"active": [100], "inactive": [], "finish_time": 2000, "duration": 1},
    }))  # fmt: skip
    assert read_devices(devices_csv) == read_devices(str(devices_pkl))
    assert read_windows(behaviour_csv) == read_windows(str(behaviour_pkl))
    cfg = SystemsConfig(
        device_trace=devices_csv, availability="trace", behaviour_trace=behaviour_csv
    )
    pop = build_population(cfg, 3, seed=0)
    assert [d.compute_ms_per_sample for d in pop.devices] == [100.0, 50.0, 100.0]  # p mod 2
    assert pop.online(50.0) == [0, 2]
    assert pop.online(150.0) == [1]
    assert pop.online(1550.0) == [0, 1, 2]  # 550 s into client 0's cycle, 1550 into 1's


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("client,compute_ms_per_sample,download_kbps\n1,1,1\n", "lacks column.*upload_kbps"),
        ("client,compute_ms_per_sample,download_kbps,upload_kbps\n", "has no rows"),
        ("client,compute_ms_per_sample,download_kbps,upload_kbps\n1,0,1,1\n", "positive"),
        ("client,compute_ms_per_sample,download_kbps,upload_kbps\n1,x,1,1\n", "not a number"),
    ],
)
def test_a_bad_device_trace_is_refused_naming_the_key_and_file(tmp_path, text, message):
    path = tmp_path / "dev.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=rf"systems.device_trace: .*dev.csv.*{message}"):
        read_devices(str(path))


def test_missing_and_foreign_trace_files_are_refused(tmp_path):
    with pytest.raises(TraceError, match="systems.device_trace: no such file"):
        read_devices(str(tmp_path / "absent.csv"))
    (tmp_path / "x.pkl").write_bytes(b"not a pickle")
    with pytest.raises(TraceError, match="systems.behaviour_trace: .*not a readable pickle"):
        read_windows(str(tmp_path / "x.pkl"))
    (tmp_path / "never.csv").write_text("client,cycle_s,online_from_s,online_to_s\n1,10,5,5\n")
    with pytest.raises(TraceError, match="client 1 is never online"):
        read_windows(str(tmp_path / "never.csv"))


# -- configs ------------------------------------------------------------------------------


def test_a_missing_trace_file_is_refused_before_the_run(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY + '\n[systems]\ndevice_trace = "absent.csv"\n')
    with pytest.raises(ConfigError, match="systems.device_trace: no such file: absent.csv"):
        load_experiment(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("clients.per_round=10", "systems.overcommit: 1.5 x clients.per_round = 10 samples no"),
        ("clients.chunk_size=2", "set clients.chunk_size = 0"),
        ("systems.online_hours=30", "systems.online_hours: 30 is longer than"),
        ("systems.availability=trace", "systems.behaviour_trace: availability = 'trace' needs"),
        ("systems.deadline_s=-1", "systems.deadline_s"),
    ],
)
def test_bad_systems_settings_are_refused_naming_the_key(tmp_path, override, message):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY + '\n[systems]\navailability = "daily"\novercommit = 1.5\n')
    with pytest.raises(ConfigError, match=message):
        load_experiment(path, [override])


# -- whole runs ---------------------------------------------------------------------------

SYSTEMS = """
[systems]
availability = "daily"
online_hours = 12
deadline_s = 60
overcommit = 1.5
"""
OVERRIDES = ["data.max_train_samples=2000", "run.rounds=4", "clients.num=12"]


def _rows(run_dir: Path, scope: str) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["scope"] == scope]


@pytest.fixture(scope="module")
def timed(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("systems")
    toml = root / "timed.toml"
    toml.write_text(TINY + SYSTEMS)
    run_dir, summary = run_experiment(load_experiment(toml, OVERRIDES), root / "run")
    assert summary["status"] == "completed"
    return toml, run_dir


def test_a_timed_run_samples_online_clients_and_leaves_the_slow_out(timed):
    toml, run_dir = timed
    exp = load_experiment(toml, OVERRIDES)
    population = build_population(exp.systems, exp.clients.num, exp.run.seed)
    systems = _rows(run_dir, "systems")
    assert [r["round"] for r in systems] == [1, 2, 3, 4]
    ends = [r["virtual-time-s"] for r in systems]
    assert ends == sorted(ends) and ends[0] > 0
    sent: dict[int, set[int]] = {}
    for line in (run_dir / "comm.csv").read_text().splitlines()[1:]:
        fields = line.split(",")
        sent.setdefault(int(fields[0]), set()).add(int(fields[2]))
    reasons = {c["reason"].split(":")[0] for r in _rows(run_dir, "failures") for c in r["clients"]}
    assert reasons <= {"deadline", "over-commitment"} and reasons  # the clock left some out
    for row, train in zip(systems, _rows(run_dir, "train")):
        start = row["virtual-time-s"] - row["round-s"]
        assert sent[row["round"]] <= set(population.online(start))  # only online clients
        assert len(sent[row["round"]]) == 6  # ceil(4 x 1.5) sampled
        assert train["clients"] <= 4  # the first per_round at most are kept
        assert train["clients"] + train["failures"] == 6
        assert row["round-s"] <= 60.0  # the deadline bounds every round


def test_a_timed_run_repeats_and_resumes_to_the_same_bytes(timed, tmp_path):
    toml, reference = timed
    crashed = tmp_path / "crashed"
    with pytest.raises(RunError, match="simulated crash"):
        run_experiment(load_experiment(toml, OVERRIDES), crashed, callbacks=[CrashAfter(2)])
    resume_run(crashed)
    for name in ("metrics.jsonl", "comm.csv"):
        assert (crashed / name).read_bytes() == (reference / name).read_bytes(), name


def test_report_shows_virtual_hours_and_plots_against_them(timed, tmp_path, capsys):
    from fedsim.cli import run_cli
    from fedsim.results.plots import _series
    from fedsim.results.writer import read_metrics

    _, run_dir = timed
    code = run_cli(["report", str(run_dir), "--x", "virtual-time", "--plot", str(tmp_path / "t")])
    out = capsys.readouterr().out
    assert code == 0
    last = _rows(run_dir, "systems")[-1]["virtual-time-s"]
    assert "virtual h" in out and f"{last / 3600:.2f}" in out
    assert (tmp_path / "t.png").stat().st_size > 1000
    x, _ = _series(read_metrics(run_dir), "server-eval", "accuracy", "virtual-time")
    assert x[0] == 0.0 and x[-1] == pytest.approx(last / 3600) and x == sorted(x)
    code = run_cli(["report", str(run_dir), "--x", "wall"])
    assert code == 2 and "--x wall: one of round, virtual-time" in capsys.readouterr().err


def test_the_sweep_finds_the_first_moment_a_brute_force_scan_finds():
    population = build_population(SystemsConfig(availability="daily", online_hours=3), 40, 1)
    moments = sorted({0.0, 7000.0} | {float(s) for s in population._starts_after(7000.0)})
    for need in range(1, 16):
        brute = next((m for m in moments if m >= 7000.0 and len(population.online(m)) >= need),
                     None)  # fmt: skip
        assert population.first_time_with(7000.0, need) == brute, need


def _method_toml(method: str) -> str:
    """A small experiment of ``method`` from the tests that exercise it."""
    if method == "sfprompt":
        from test_sfprompt import TOML

        return TOML.replace("num = 2\nper_round = 2", "num = 4\nper_round = 2")
    if method == "distillation":
        from test_distillation import DISTIL

        return DISTIL.replace("rounds = 3", "rounds = 2").replace("per_round = 3", "per_round = 2")
    text = TINY.replace('method = "fedavg"', f'method = "{method}"')
    if method == "scaffold":
        text = text.replace("momentum = 0.9", "momentum = 0.0")
    return text.replace("max_train_samples = 6000", "max_train_samples = 2000")


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", ["fedprox", "fedadam", "scaffold", "curriculum", "sfprompt", "distillation"]
)
def test_every_method_runs_on_the_virtual_clock(tmp_path, method):
    """[systems] with over-commitment on methods of every kind: Flower's strategies, state
    kept on clients, a scoring exchange before training, split training's several
    exchanges per round, server-side synthesis."""
    path = tmp_path / f"{method}.toml"
    path.write_text(_method_toml(method) + "\n[systems]\novercommit = 1.5\n")
    exp = load_experiment(path, ["run.rounds=2"])
    run_dir, summary = run_experiment(exp, tmp_path / "run")
    assert summary["status"] == "completed", summary
    systems, train = _rows(run_dir, "systems"), _rows(run_dir, "train")
    assert [r["round"] for r in systems] == [1, 2]
    assert all(r["round-s"] > 0 for r in systems)
    assert all(r["clients"] <= exp.clients.per_round for r in train)
    assert sum(r["over-committed"] for r in systems) >= 1


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_a_timed_run_on_ray_gives_the_inprocess_bytes(timed, tmp_path):
    toml, reference = timed
    exp = load_experiment(toml, [*OVERRIDES, "run.backend=ray"])
    run_dir, summary = run_experiment(exp, tmp_path / "ray")
    assert summary["status"] == "completed"
    for name in ("metrics.jsonl", "comm.csv"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
