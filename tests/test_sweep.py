"""``fedsim sweep``: plan expansion, bad files, status of run directories, and tiny real
sweeps: completed runs kept, a killed run resumed, --jobs 2 byte-identical to --jobs 1, a
failed run reported and turned into a non-zero exit."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from rich.console import Console
from typer.testing import CliRunner

from fedsim.checkpoint import checkpoint_files
from fedsim.cli import app, run_cli
from fedsim.config.load import parse_overrides
from fedsim.results.cells import RunResult, cell_stats, fmt_mean_std, scan, summary_table
from fedsim.results.status import has_checkpoint, run_status
from fedsim.sweep import SweepError, load_sweep

SMALL = {
    "run.rounds": 2,
    "clients.num": 4,
    "clients.per_round": 2,
    "data.max_train_samples": 1000,
    "eval.batch_size": 2000,
}
OK, BAD = "tiny-timeout0.0", "tiny-timeout1e-06"  # 1 µs per client call: every client fails


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _sweep_file(folder: Path, body: str) -> Path:
    return _write(folder / "sweep.toml", body)


# -- plan ---------------------------------------------------------------------------------


def test_plan_is_grid_times_seeds_with_stable_names(tiny_toml):
    _write(tiny_toml.parent / "sub" / "child.toml", 'extends = "../tiny.toml"\n')
    path = _sweep_file(
        tiny_toml.parent,
        'experiments = ["tiny.toml", "sub/*.toml"]\nseeds = [0, 4]\nout = "runs/x"\n'
        '[set]\n"run.rounds" = 2\n'
        '[grid]\n"client.lr" = [0.01, 0.1]\nclient.local_epochs = [1, 2]\n',
    )
    sweep = load_sweep(path)
    assert sweep.out == tiny_toml.parent / "runs" / "x"  # relative to the sweep file
    assert len(sweep.runs) == 2 * 4 * 2  # files x grid points x seeds
    assert [r.seed for r in sweep.runs] == [0] * 8 + [4] * 8  # seed by seed
    assert sweep.cells() == [
        f"{stem}-lr{lr}-local_epochs{e}"
        for stem in ("tiny", "child")
        for lr in (0.01, 0.1)
        for e in (1, 2)
    ]
    run = sweep.runs[9]
    assert run.cell == "tiny-lr0.01-local_epochs2" and run.seed == 4
    assert run.run_dir == sweep.out / run.cell / "seed4"
    assert run.overrides == {
        "run.rounds": 2,
        "client.lr": 0.01,
        "client.local_epochs": 2,
        "run.seed": 4,
        "run.name": run.cell,
    }
    # what the child process parses back from its --set arguments
    assert parse_overrides(run.set_args()[1::2]) == run.overrides


def test_plan_groups_names_layout_and_command_line(tiny_toml):
    path = _sweep_file(
        tiny_toml.parent,
        'seeds = [0, 1, 2]\nout = "runs"\nlayout = "{cell}-seed{seed}"\n'
        '[set]\n"run.rounds" = 2\n'
        '[[group]]\nexperiments = ["tiny.toml"]\nname = "base"\n'
        '[[group]]\nexperiments = ["tiny.toml"]\nname = "only{train_clients}"\n'
        '[group.set]\n"run.rounds" = 1\n'
        '[group.grid]\n"fedit.train_clients" = [[0], [1, 2]]\n',
    )
    sweep = load_sweep(
        path, out=Path("elsewhere"), seeds=[7], overrides=["eval.every=2"], only=["only*"]
    )
    assert [r.label for r in sweep.runs] == ["only0-seed7", "only1-2-seed7"]
    assert sweep.runs[1].run_dir == Path("elsewhere") / "only1-2-seed7"
    assert sweep.runs[1].overrides == {
        "run.rounds": 1,  # the group's set wins over the file's
        "fedit.train_clients": [1, 2],
        "eval.every": 2,
        "run.seed": 7,
        "run.name": "only1-2",
    }
    assert "fedit.train_clients=[1,2]" in sweep.runs[1].set_args()
    assert len(load_sweep(path).runs) == 3 * 3


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('experiments = ["tiny.toml"]\n', "out: Field required"),
        ('out = "r"\n', "experiments: name at least one"),
        ('experiments = ["tiny.toml"]\nout = "r"\nbogus = 1\n', "bogus: unknown key"),
        ('experiments = ["nope*.toml"]\nout = "r"\n', "experiments: 'nope*.toml' matches no"),
        ('experiments = ["tiny.toml"]\nout = "r"\nseeds = [1, 1]\n', "seeds: a seed is listed"),
        ('experiments = ["tiny.toml"]\nout = "r"\nseeds = "0"\n', "seeds: Input should be"),
        ('experiments = ["tiny.toml"]\nout = "r"\n[grid]\n"client.lr" = 0.1\n', "grid.client.lr"),
        ('experiments = ["tiny.toml"]\nout = "r"\n[grid]\n"client.lr" = []\n', "grid.client.lr"),
        ('experiments = ["tiny.toml"]\nout = "r"\n[grid]\n"run.seed" = [1]\n', "grid.run.seed"),
        ('experiments = ["tiny.toml"]\nout = "r"\nlayout = "{cell}"\n', "layout: must contain"),
        ('experiments = ["tiny.toml"]\nout = "r"\nname = "{lr}"\n', "name: {lr} is neither"),
        ('experiments = ["tiny.toml", "other.toml"]\nout = "r"\nname = "a"\n', "share the cell"),
        ('experiments = ["tiny.toml"\n', "not valid TOML"),
    ],
)
def test_bad_sweep_files_give_one_line_errors(tiny_toml, body, words):
    _write(tiny_toml.parent / "other.toml", tiny_toml.read_text())
    path = _sweep_file(tiny_toml.parent, body)
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message
    assert "\n" not in message


def test_cli_names_the_file_of_a_bad_sweep_or_experiment(tiny_toml, capsys):
    path = _sweep_file(tiny_toml.parent, 'experiments = ["tiny.toml"]\nout = "r"\nsede = 1\n')
    assert run_cli(["sweep", str(path)]) == 2
    assert f"error: {path}: sede: unknown key" in capsys.readouterr().err
    # a bad experiment config stops the sweep before any run starts
    path = _sweep_file(tiny_toml.parent, 'experiments = ["tiny.toml"]\nout = "r"\n')
    assert run_cli(["sweep", str(path), "--set", "data.alpha=0"]) == 2
    assert f"error: {tiny_toml}: data.alpha" in capsys.readouterr().err
    assert not (tiny_toml.parent / "r").exists()


# -- run status and summaries, on hand-written run directories ----------------------------


def _fake_run(run_dir: Path, status: str | None, accuracies: list[float]) -> Path:
    rows = [{"round": i, "scope": "server-eval", "accuracy": a} for i, a in enumerate(accuracies)]
    _write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    if status is not None:
        _write(run_dir / "summary.json", json.dumps({"status": status, "wall_time_s": 2.0}))
    return run_dir


def test_run_status_of_run_directories(tmp_path):
    assert run_status(tmp_path / "nothing") == "missing"
    assert run_status(_fake_run(tmp_path / "done", "completed", [0.1])) == "completed"
    assert run_status(_fake_run(tmp_path / "bad", "failed", [0.1])) == "failed"
    killed = _fake_run(tmp_path / "killed", None, [0.1])
    assert run_status(killed) == "incomplete" and not has_checkpoint(killed)
    _write(killed / "checkpoints" / "round-1.ckpt", "x")
    assert has_checkpoint(killed)
    _write(tmp_path / "cut" / "summary.json", '{"stat')  # cut by a kill while written
    assert run_status(tmp_path / "cut") == "incomplete"


def test_mean_std_table_fits_80_columns(tmp_path):
    for seed, acc in enumerate([0.5, 0.7]):
        _fake_run(tmp_path / "text-dir0.2-curriculum" / f"seed{seed}", "completed", [0.1, acc])
    _fake_run(tmp_path / "text-dir0.2-curriculum" / "seed2", "failed", [0.1])
    _fake_run(tmp_path / "iid" / "seed0", None, [0.1])
    results = scan(tmp_path)
    assert [(r.cell, r.seed, r.status) for r in results] == [
        ("iid", 0, "incomplete"),
        ("text-dir0.2-curriculum", 0, "completed"),
        ("text-dir0.2-curriculum", 1, "completed"),
        ("text-dir0.2-curriculum", 2, "failed"),
    ]
    stats = {s.cell: s for s in cell_stats(results)}
    cur = stats["text-dir0.2-curriculum"]
    assert (cur.planned, cur.completed, cur.statuses) == (3, 2, {"failed": 1})
    assert cur.metrics[("server-eval", "accuracy", "final")] == [0.5, 0.7]
    assert fmt_mean_std([0.5, 0.7]) == "0.600 ± 0.141"  # sample std
    assert fmt_mean_std([0.5]) == "0.500" and fmt_mean_std([], empty="-") == "-"
    # a seed that diverged (loss NaN or inf) is shown, not a crash of the whole summary
    assert fmt_mean_std([0.1, float("nan")]) == "nan ± nan"
    assert fmt_mean_std([0.1, float("inf")]) == "inf ± nan"
    console = Console(width=80, record=True)
    console.print(summary_table(list(stats.values()), title="sweep.toml"))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "0.600±0.141" in text and "1 failed" in text and "1 incomplete" in text
    # RunResult reads the curve in round order
    assert RunResult("c", 0, tmp_path / "iid" / "seed0", "x").curve("server-eval", "accuracy") == (
        [0],
        [0.1],
    )


# -- real tiny sweeps ----------------------------------------------------------------------


def _invoke(*args: str):
    result = CliRunner().invoke(app, ["sweep", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep, jobs 1: a cell that completes and one whose clients all fail."""
    folder = tmp_path_factory.mktemp("sweep")
    from conftest import TINY

    _write(folder / "tiny.toml", TINY)
    sets = "".join(f'"{k}" = {v}\n' for k, v in SMALL.items())
    path = _sweep_file(
        folder,
        f'experiments = ["tiny.toml"]\nseeds = [0]\nout = "runs"\n[set]\n{sets}'
        '[grid]\n"client.timeout" = [0.0, 1e-6]\n',
    )
    code, output = _invoke(str(path), "--jobs", "1")
    return path, folder / "runs", code, output


def test_failed_run_is_reported_and_exits_non_zero(swept):
    _, out, code, output = swept
    assert code == 1  # after the other run completed
    assert run_status(out / OK / "seed0") == "completed"
    assert run_status(out / BAD / "seed0") == "failed"
    assert "1 failed" in output and "1 of 2 runs did not complete" in output
    csv = (out / "sweep.csv").read_text().splitlines()
    assert csv[1].startswith(f"{OK},1,1,0,") and csv[2].startswith(f"{BAD},1,0,1,")
    assert (out / "plots" / "server-eval_accuracy.png").stat().st_size > 0


def test_rerun_keeps_completed_runs_and_restarts_failed_ones(swept):
    path, out, _, _ = swept
    done = out / OK / "seed0"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.rglob("*") if p.is_file()}
    failed_log = out / "logs" / BAD / "seed0.log"
    assert failed_log.read_text().count("$ ") == 1
    code, output = _invoke(str(path))
    assert code == 1 and "kept 1 completed run" in output
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.rglob("*") if p.is_file()}
    assert after == before  # not touched
    assert (out / "logs" / OK / "seed0.log").read_text().count("$ ") == 1
    assert failed_log.read_text().count("-m fedsim run ") == 2  # failed: from scratch
    # the same folder with another config: the completed run is left alone, not replaced
    code, output = _invoke(str(path), "--set", "run.rounds=1", "--only", OK)
    assert code == 1 and "conflict" in output and "run.rounds = 2 there, 1 planned" in output
    assert after == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in after}


def test_jobs_2_writes_the_same_bytes_as_jobs_1(swept):
    path, out, _, _ = swept
    parallel = path.parent / "parallel"
    code, _ = _invoke(str(path), "--jobs", "2", "--out", str(parallel))
    assert code == 1
    assert run_status(parallel / BAD / "seed0") == "failed"
    for name in ("metrics.jsonl", "comm.csv"):
        ours, theirs = parallel / OK / "seed0" / name, out / OK / "seed0" / name
        assert ours.read_bytes() == theirs.read_bytes(), name


def test_a_run_another_sweep_completed_meanwhile_is_kept(swept):
    """Two sweeps over one folder (a second one started on other cells to use another
    core): a run planned as 'start' that the other sweep completed before this one reached
    it is kept, byte for byte, and the sweep goes on with the rest."""
    from fedsim.sweep.execute import plan_steps, run_sweep
    from fedsim.sweep.plan import expand

    path, out, _, _ = swept
    shared = path.parent / "shared"
    sweep = expand(path, out=shared)
    steps = plan_steps(sweep)
    assert {s.action for s in steps} == {"start"}
    done = shared / OK / "seed0"  # the other sweep finishes this run now
    shutil.copytree(out / OK / "seed0", done)
    before = {p: p.read_bytes() for p in done.rglob("*") if p.is_file()}
    console = Console(width=200, record=True)
    results = run_sweep(sweep, steps, 1, console)
    assert {r.run_dir.parent.name: r.status for r in results} == {OK: "completed", BAD: "failed"}
    assert {p: p.read_bytes() for p in done.rglob("*") if p.is_file()} == before
    assert "kept" in console.export_text()


def test_killed_run_is_resumed_and_ends_as_if_never_killed(swept):
    path, out, _, _ = swept
    killed = path.parent / "killed"
    run_dir = killed / OK / "seed0"
    cmd = [sys.executable, "-m", "fedsim", "sweep", str(path), "--out", str(killed), "--only", OK]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not checkpoint_files(run_dir):  # a whole checkpoint: written to .tmp, then renamed
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    # Freeze at once (round 2 of this tiny run takes a fraction of a second), then kill the
    # sweep and its run process (which has a session of its own, see below).
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for member in family:
        member.send_signal(signal.SIGSTOP)
    for member in family:
        member.kill()
    proc.wait()
    assert run_status(run_dir) == "incomplete", "the run must be killed before it finished"

    code, output = _invoke(str(path), "--out", str(killed), "--only", OK)
    assert code == 0 and "resumed" in output
    assert run_status(run_dir) == "completed"
    reference = out / OK / "seed0"
    for name in ("metrics.jsonl", "comm.csv"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name


# -- nothing lost: what a sweep deletes, bounds, signals ------------------------------------


def test_a_folder_at_a_runs_path_that_is_not_a_run_is_left_alone(swept):
    path, _, _, _ = swept
    out = path.parent / "theirs"
    notes = out / OK / "seed0" / "mydata" / "notes.txt"
    _write(notes, "a user's own file")
    code, output = _invoke(str(path), "--out", str(out), "--only", OK)
    assert code == 1
    assert "conflict" in output and "holds files that are not a fedsim run (mydata)" in output
    assert notes.read_text() == "a user's own file"
    assert run_status(out / OK / "seed0") == "missing"


def test_a_failed_run_of_another_config_is_not_started_again(swept):
    path, out, _, _ = swept
    failed = out / BAD / "seed0"
    before = {p: p.read_bytes() for p in failed.rglob("*") if p.is_file()}
    code, output = _invoke(str(path), "--set", "run.rounds=1", "--only", BAD)
    assert code == 1 and "conflict" in output and "run.rounds = 2 there, 1 planned" in output
    assert {p: p.read_bytes() for p in failed.rglob("*") if p.is_file()} == before


def test_repeated_seeds_and_shared_folders_are_refused_before_anything_runs(tiny_toml, capsys):
    path = _sweep_file(tiny_toml.parent, 'experiments = ["tiny.toml"]\nout = "r"\n')
    assert run_cli(["sweep", str(path), "--seeds", "1 1"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --seeds: seed 1 is given twice (each seed runs once)\n"
    path = _sweep_file(
        tiny_toml.parent,
        'experiments = ["tiny.toml"]\nout = "r"\nseeds = [1, 11]\nlayout = "{cell}{seed}"\n'
        'name = "t{lr}"\n[grid]\n"client.lr" = [1, 11]\n',
    )
    shared = r"layout: cell 't11' seed 1 and cell 't1' seed 11 would share .*t111"
    with pytest.raises(SweepError, match=shared):
        load_sweep(path)
    assert not (tiny_toml.parent / "r").exists()


def test_a_huge_grid_is_refused_at_once_and_the_cap_can_be_raised(tiny_toml, capsys):
    values = ", ".join(str(i) for i in range(10))
    grid = "".join(f'"client.{k}" = [{values}]\n' for k in ("lr", "momentum", "local_epochs"))
    grid += "".join(f'"data.{k}" = [{values}]\n' for k in ("alpha", "min_partition_size"))
    path = _sweep_file(tiny_toml.parent, f'experiments = ["tiny.toml"]\nout = "r"\n[grid]\n{grid}')
    start = time.perf_counter()
    assert run_cli(["sweep", str(path), "--dry-run"]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert "100,000 cells x 1 seeds is more than --max-cells 2,000" in err
    assert "--max-cells 100000" in err
    assert len(load_sweep(path, max_cells=100_000).runs) == 100_000


@pytest.mark.slow
def test_ctrl_c_stops_every_run_once_and_says_how_to_continue(swept):
    """Ctrl-C at the terminal reaches the sweep alone (each run has a session of its own);
    the sweep passes it on once. A second sweep of the same folder meanwhile is refused by
    the runs' locks and says so, instead of printing 'done'."""
    path, _, _, _ = swept
    out = path.parent / "stopped"
    cmd = [sys.executable, "-m", "fedsim", "sweep", str(path), "--out", str(out), "--jobs", "2"]
    cmd += ["--set", "run.rounds=200"]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, text=True)
    runs = [out / OK / "seed0", out / BAD / "seed0"]
    deadline = time.monotonic() + 300
    while not checkpoint_files(runs[0]):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)

    code, output = _invoke(str(path), "--out", str(out), "--set", "run.rounds=200", "--only", OK)
    assert code == 1 and "conflict" in output and "not run here: error:" in output
    assert "in use by another fedsim process" in output and f"done {runs[0]}" not in output

    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the sweep's group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    again = f"fedsim sweep {path} --out {out} --set run.rounds=200 --jobs 2"
    assert f"stopped: SIGINT: the sweep's runs were interrupted; continue with: {again}" in err
    assert run_status(runs[0]) == "interrupted"
    for log in (out / "logs").rglob("*.log"):
        assert "Traceback" not in log.read_text(), log


def test_a_cell_that_cannot_name_a_run_is_blamed_on_the_sweep_file(tiny_toml):
    _write(tiny_toml.parent / "[lora].toml", tiny_toml.read_text())
    path = _sweep_file(tiny_toml.parent, 'experiments = ["[[]lora].toml"]\nout = "r"\n')
    with pytest.raises(SweepError, match=r"cell '\[lora\]' \(of \[lora\].toml\) cannot name"):
        load_sweep(path)
    path.write_text('experiments = ["[[]lora].toml"]\nout = "r"\nname = "lora"\n')
    assert [r.cell for r in load_sweep(path).runs] == ["lora"]
