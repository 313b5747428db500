"""Bad input, command by command: one plain line on stderr naming the key or file, a non-zero
exit code, no traceback, and no run directory changed. In-process (``fedsim.cli.run_cli``),
so the whole table takes seconds; only the fixture trains (one tiny run)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fedsim.cli import run_cli
from fedsim.config import load_experiment
from fedsim.runner import run_experiment

TINY_RUN = ["run.rounds=2", "clients.num=4", "clients.per_round=2", "data.max_train_samples=1000"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    toml = root / "tiny.toml"
    toml.write_text('method = "fedavg"\n[data]\ndataset = "mnist"\n')
    run_dir, summary = run_experiment(load_experiment(toml, TINY_RUN), root / "run")
    assert summary["status"] == "completed"
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run (tests damage it)."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = run_cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def toml(tmp_path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text('method = "fedavg"\n[run]\nrounds = 1\n')
    return path


# -- experiment files and overrides: nothing runs, nothing is written -----------------------

CONFIG_CASES = {
    "malformed TOML": (b"method = \n", [], ["not valid TOML"]),
    "non-UTF-8 file": (b'method = "fedavg"\n# caf\xe9\n', [], ["not UTF-8"]),
    "empty file": (b"", [], ["sets nothing"]),
    "unknown key": (b"[run]\nround = 3\n", [], ["run.round: unknown key"]),
    "wrong type": (b"[run]\nrounds = 'many'\n", [], ["run.rounds"]),
    "unknown method": (b'method = "fedsgd"\n', [], ["unknown method 'fedsgd'"]),
    "a section set to a value": (b"", ["--set", "run=3"], ["run: is a section"]),
    "a bool where a number goes": (b"", ["--set", "run.rounds=true"], ["run.rounds", "number"]),
    "a run name that is a path": (b"", ["--set", "run.name='../../x'"], ["run.name"]),
    "bad --set syntax": (b"", ["--set", "rounds"], ["--set 'rounds'", "KEY=VALUE"]),
    "a section of another method": (b"", ["--set", "lora.r=4"], ["[lora] section", "fedit"]),
    "an impossible value": (b"", ["--set", "data.alpha=0"], ["data.alpha"]),
    "an infinite float": (
        b"",
        ["--set", "privacy.clipping_norm=inf"],
        ["privacy.clipping_norm", "finite"],
    ),
    "a NaN float": (b"", ["--set", "client.lr=nan"], ["client.lr", "finite"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_experiment_input(case, tmp_path, capsys, monkeypatch):
    content, extra, words = CONFIG_CASES[case]
    path = tmp_path / "exp.toml"
    path.write_bytes(content or b'method = "fedavg"\n')
    if case == "empty file":
        path.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "run", path, *extra, "--out", tmp_path / "out")
    assert code == 2
    named = [] if case == "bad --set syntax" else [str(path)]  # that one names --set
    assert_one_line(err, *named, *words)
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_missing_file_and_markup_in_paths(tmp_path, capsys):
    code, _, err = cli(capsys, "run", tmp_path / "nope.toml")
    assert code == 2
    assert_one_line(err, "nope.toml", "no such experiment file")
    odd = tmp_path / "[red]exp[b].toml"  # rich markup must not eat it
    odd.write_text("[run]\nround = 3\n")
    code, _, err = cli(capsys, "run", odd)
    assert code == 2
    assert_one_line(err, "[red]exp[b].toml", "run.round: unknown key")


def test_override_values_may_hold_spaces(toml):
    from fedsim.config.load import parse_overrides

    pairs = parse_overrides(["run.name=my run", 'lora.target_modules=["q", "v"]'])
    assert pairs == {"run.name": "my run", "lora.target_modules": ["q", "v"]}
    assert parse_overrides(["fedit.template='a b=c'"]) == {"fedit.template": "a b=c"}
    exp = load_experiment(toml, ["run.name=my run clients.num=5"])
    assert (exp.run.name, exp.clients.num) == ("my run", 5)


def test_partition_takes_overrides_like_run(toml, capsys):
    args = ("--set", "clients.num=4", "clients.per_round=2", "data.alpha=0.3")
    code, out, err = cli(capsys, "partition", toml, *args)
    assert code == 0, err
    assert "over 4 clients" in out
    assert all(len(line) <= 80 for line in out.splitlines()), out  # an 80-column table


# -- --out ------------------------------------------------------------------------------------


def test_out_at_an_existing_run_a_file_or_an_unwritable_place(toml, run_copy, tmp_path, capsys):
    before = checksums(run_copy)
    code, _, err = cli(capsys, "run", toml, "--out", run_copy)
    assert code == 2
    assert_one_line(err, str(run_copy), "already holds a run", "fedsim resume")
    assert checksums(run_copy) == before

    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    for out, words in (
        (a_file, ["is a file"]),
        (a_file / "sub", ["cannot write"]),
        (Path("/proc/fedsim-run"), ["/proc/fedsim-run", "cannot write"]),
    ):
        code, _, err = cli(capsys, "run", toml, "--out", out)
        assert code == 2, err
        assert_one_line(err, *words)
    assert a_file.read_text() == "keep me"


# -- resume -----------------------------------------------------------------------------------


def _interrupted(run_dir: Path) -> Path:
    """The finished run as if killed after its last checkpoint (no summary yet)."""
    (run_dir / "summary.json").unlink()
    return run_dir


def _damage(kind: str, run_dir: Path) -> None:
    metrics = run_dir / "metrics.jsonl"
    if kind == "junk lines":
        metrics.write_text(metrics.read_text() + "not json\nnor this\n" + '{"round": 9}\n')
    elif kind == "a JSON list":
        lines = metrics.read_text().splitlines()
        metrics.write_text("\n".join([lines[0], "[1, 2, 3]", *lines[1:]]) + "\n")
    elif kind == "binary junk":
        metrics.write_bytes(metrics.read_bytes() + b"\x00\xff\xfe garbage\n")
    elif kind == "broken config":
        (run_dir / "config.toml").write_text("[run\nrounds = 2\n")
    elif kind == "every checkpoint truncated":
        for ckpt in (run_dir / "checkpoints").iterdir():
            ckpt.write_bytes(ckpt.read_bytes()[:100])
    elif kind == "an edited config":
        path = run_dir / "config.toml"
        path.write_text(path.read_text().replace("num = 4", "num = 5"))
    elif kind == "another method, even with --force":
        path = run_dir / "config.toml"
        path.write_text(path.read_text().replace('method = "fedavg"', 'method = "fedprox"'))
    elif kind == "a damaged comm.csv":  # found by the checks: metrics not cut, no summary
        comm = run_dir / "comm.csv"
        comm.write_text(comm.read_text() + "x,train,0,down,5\n")


RESUME_CASES = {
    "junk lines": ["metrics.jsonl:", "not JSON", "damaged"],
    "a JSON list": ["metrics.jsonl:2", "list"],
    "binary junk": ["metrics.jsonl:", "damaged"],
    "broken config": ["config.toml", "not valid TOML"],
    "every checkpoint truncated": ["no usable checkpoint", "round-000002.ckpt", "truncated"],
    "an edited config": ["config.toml", "differs", "--force"],
    "a damaged comm.csv": ["comm.csv:", "must be integers", "traffic rows are damaged"],
    "another method, even with --force": ["method = 'fedprox'", "saved by method 'fedavg'"],
}


@pytest.mark.parametrize("kind", sorted(RESUME_CASES))
def test_resume_refuses_a_damaged_run_and_changes_nothing(kind, run_copy, capsys):
    _damage(kind, _interrupted(run_copy))
    before = checksums(run_copy)
    force = ["--force"] if "--force" in kind else []
    code, _, err = cli(capsys, "resume", run_copy, *force)
    assert code == 2  # a run's damaged or edited files are bad input
    assert_one_line(err, *RESUME_CASES[kind])
    assert checksums(run_copy) == before


def test_resume_refuses_a_finished_run_even_with_junk(run_copy, capsys):
    _damage("junk lines", run_copy)
    before = checksums(run_copy)
    code, _, err = cli(capsys, "resume", run_copy)
    assert code == 2
    assert_one_line(err, str(run_copy), "completed all 2 rounds", "nothing to resume")
    assert checksums(run_copy) == before


def test_resume_of_what_is_not_a_run(tmp_path, capsys):
    code, _, err = cli(capsys, "resume", tmp_path)
    assert code == 2
    assert_one_line(err, str(tmp_path), "not a run directory")


# -- report -----------------------------------------------------------------------------------


def test_report_shows_failed_and_damaged_runs_beside_good_ones(run_copy, tmp_path, capsys):
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "config.toml").write_text('method = "fedavg"\n')
    summary = {"method": "fedavg", "status": "failed", "error": "AssetError: no data"}
    (failed / "summary.json").write_text(json.dumps(summary))
    junk = Path(shutil.copytree(run_copy, tmp_path / "junk"))
    _damage("a JSON list", junk)
    _damage("binary junk", junk)
    stray = tmp_path / "notes"
    stray.mkdir()
    before = {p: checksums(p) for p in (run_copy, failed, junk)}
    code, out, err = cli(capsys, "report", run_copy, failed, junk, stray)
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "done" in rows["run"] and "failed" in rows["failed"] and "done" in rows["junk"]
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "junk/metrics.jsonl:2: a JSON list" in err and "notes: not a run directory" in err
    assert "junk/metrics.jsonl:7: not JSON" in err  # 5 rows, the list, then the junk
    assert "Traceback" not in err
    assert {p: checksums(p) for p in before} == before


def test_report_plot_paths(run_copy, tmp_path, capsys):
    code, out, _ = cli(capsys, "report", run_copy, "--plot", tmp_path / "curves")
    assert code == 0 and f"plot: {tmp_path / 'curves.png'}" in out
    assert (tmp_path / "curves.png").stat().st_size > 1000
    code, _, err = cli(capsys, "report", run_copy, "--plot", "/proc/fedsim.png")
    assert code == 2
    assert_one_line(err, "/proc/fedsim.png", "cannot write the plot")
    code, out, err = cli(capsys, "report", run_copy, "--plot", tmp_path / "x.weird")
    assert code == 2 and out == ""  # refused before the table is printed
    assert_one_line(err, "--plot", "x.weird", "cannot write .weird files", "png")


def test_report_of_nothing_usable(tmp_path, capsys):
    code, _, err = cli(capsys, "report", tmp_path / "a", tmp_path / "b")
    assert code == 2
    assert_one_line(err, "none of the 2 arguments is a run directory", "config.toml")


def test_report_names_a_few_non_runs_and_counts_the_rest(run_copy, tmp_path, capsys):
    folders = [tmp_path / f"not-a-run-{i}" for i in range(500)]
    for folder in folders:
        folder.mkdir()
    code, out, err = cli(capsys, "report", run_copy, *folders)
    assert code == 0 and run_copy.name in out
    lines = err.strip().splitlines()
    assert len(lines) == 6 and lines[-1] == (
        "warning: ... and 495 more arguments that are not run directories"
    )


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(toml, capsys, monkeypatch):
    import fedsim.config.load as load

    def broken(*args, **kwargs):
        raise KeyError("a fedsim bug")

    monkeypatch.setattr(load, "load_experiment", broken)
    code, _, err = cli(capsys, "run", toml)
    assert code == 1
    assert_one_line(err, "unexpected", "KeyError", "--debug")
    code, _, err = cli(capsys, "run", toml, "--debug")
    assert code == 1 and "Traceback" in err


def test_a_damaged_cached_asset_is_one_line_naming_file_and_repair(toml, tmp_path):
    """A separate process: this one holds MNIST in memory already."""
    import os
    import subprocess
    import sys

    from fedsim.assets.cache import cache_root

    cache = tmp_path / "cache"
    shutil.copytree(cache_root() / "mnist", cache / "mnist")
    images = cache / "mnist" / "images.npz"
    images.write_bytes(images.read_bytes()[:100])
    env = {**os.environ, "FEDSIM_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "partition", str(toml)], env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert_one_line(proc.stderr, str(images), "damaged", "fedsim datasets fetch --force mnist")


# -- bounds and exit codes (issue 20): each refused at once, exit 2, one line, nothing written --


def _manifests_with(tmp_path: Path, name: str, edit) -> Path:  # noqa: ANN001 - str -> str
    """A copy of the repo's manifests with ``name``'s text edited."""
    from fedsim.assets.manifest import load_manifest

    folder = tmp_path / "manifests"
    shutil.copytree(Path(load_manifest(name).path).parent, folder)
    path = folder / f"{name}.toml"
    path.write_text(edit(path.read_text()))
    return folder


def test_bad_input_table_of_counts_paths_and_pins(tmp_path, toml, capsys, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'experiments = ["{toml.name}"]\nout = "r"\n')
    cases = [
        (["datasets", "fetch", "nonexistent"], ["unknown asset 'nonexistent'", "known:"]),
        (["deploy", "node-keys", str(tmp_path / "k"), "--count", "99999999999999999999"],
         ["--count 99999999999999999999", "at most 10,000"]),
        (["deploy", "node-keys", str(a_file), "--count", "2"], [str(a_file), "is a file"]),
        (["sweep", str(sweep), "--out", str(a_file / "sub")], ["--out", "is a file"]),
        (["sweep", str(sweep), "--seeds", "1 1"], ["--seeds", "seed 1 is given twice"]),
        (["datasets", "export", str(toml), "--all", str(a_file)], [str(a_file), "is a file"]),
    ]  # fmt: skip
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, words in cases:
        code, _, err = cli(capsys, *args)
        assert code == 2, (args, err)
        assert_one_line(err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert a_file.read_text() == "not a folder"


def test_a_users_manifest_whose_pin_does_not_hold_is_bad_input(tmp_path, capsys, monkeypatch):
    """The manifest is named, the exit code is 2, and no cached download is deleted."""
    folder = _manifests_with(
        tmp_path,
        "chatterbot",
        lambda t: t.replace(
            "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154", "1" * 64, 1
        ),
    )
    text = (folder / "chatterbot.toml").read_text()
    head, rest = text.split("[[source]]", 1)
    first = rest.split("[[source]]", 1)[0].split("[prepared]", 1)[0]
    rest = text[text.index("[fields]") :]
    (folder / "chatterbot.toml").write_text(head + "[source]" + first + rest)
    monkeypatch.setenv("FEDSIM_MANIFESTS", str(folder))
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    code, _, err = cli(capsys, "datasets", "fetch", "chatterbot")
    assert code == 2
    progress, error = err.strip().splitlines()  # the download's own line, then the error
    assert progress.startswith("fedsim: asset 'chatterbot': downloading ")
    pin = f"{folder / 'chatterbot.toml'} pins 1111"
    assert_one_line(error, "sha256 mismatch", pin, "discarded")


def test_non_finite_metrics_are_null_named_and_the_run_is_marked_diverged(tmp_path):
    """metrics.jsonl stays JSON (which has no NaN) and says which values were not finite."""
    from fedsim.results.writer import RunWriter

    writer = RunWriter(tmp_path)
    writer.metrics(1, "train", {"loss": 0.5, "accuracy": 0.9})
    writer.metrics(2, "train", {"loss": float("nan"), "per_class": [1.0, float("-inf")]})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1] == {
        "round": 2, "scope": "train", "loss": None, "per_class": [1.0, None],
        "non_finite": {"loss": "nan", "per_class.1": "-inf"},
    }  # fmt: skip
    summary = writer.summary({"status": "completed"})
    assert summary["diverged"] == "round 2 (train): loss = nan, per_class.1 = -inf"
    assert summary["final"]["train"]["loss"] == 0.5  # the last finite value
    json.loads((tmp_path / "summary.json").read_text())  # strict JSON


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, run_copy, capsys):
    """/dev/full fails every write with ENOSPC: a temporary file linked to it is a disk that
    fills up just as a result is written."""
    from fedsim.atomic import write_atomically
    from fedsim.checkpoint import checkpoint_files, load_checkpoint, save_checkpoint
    from fedsim.results.writer import RunWriter

    target = tmp_path / "summary.json"
    target.write_text("the previous summary")
    (tmp_path / "summary.json.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError) as err:
        write_atomically(target, "new text")
    assert err.value.filename == str(target) and "No space left" in err.value.strerror
    assert not (tmp_path / "summary.json.tmp").exists()  # the link itself is removed
    assert target.read_text() == "the previous summary"

    before = checkpoint_files(run_copy)
    last = load_checkpoint(run_copy)
    nxt = run_copy / "checkpoints" / f"round-{last.server_round + 1:06d}.ckpt"
    nxt.with_name(nxt.name + ".tmp").symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space left") as err:
        save_checkpoint(run_copy, dataclasses.replace(last, server_round=last.server_round + 1))
    assert err.value.filename == str(nxt)
    assert checkpoint_files(run_copy) == before and not nxt.with_name(nxt.name + ".tmp").exists()

    metrics = tmp_path / "run2" / "metrics.jsonl"
    metrics.parent.mkdir()
    writer = RunWriter(metrics.parent)
    metrics.symlink_to("/dev/full")
    with pytest.raises(OSError) as err:
        writer.metrics(1, "train", {"loss": 0.5})
    assert err.value.filename == str(metrics)


UNREAD_CASES = {
    "DP noise without DP": (
        b"[privacy]\nnoise_multiplier = 0.5\n",
        ["privacy.noise_multiplier", "mode = 'none'"],
    ),
    "an adaptive key with a fixed norm": (
        b'[privacy]\nmode = "server-fixed"\nclip_norm_lr = 0.5\n',
        ["privacy.clip_norm_lr", "mode = 'server-fixed'"],
    ),
}


@pytest.mark.parametrize("case", sorted(UNREAD_CASES))
def test_a_key_nothing_reads_is_refused(case, tmp_path, capsys):
    text, words = UNREAD_CASES[case]
    path = tmp_path / "exp.toml"
    path.write_bytes(b'method = "fedavg"\n' + text)
    code, _, err = cli(capsys, "run", path)
    assert code == 2
    assert_one_line(err, str(path), *words, "no effect")
    assert not (tmp_path / "runs").exists()


def test_sfprompt_split_points_are_refused_without_a_split():
    from fedsim_methods.sfprompt.config import SFPromptConfig

    with pytest.raises(ValueError, match="sfprompt.head_layers: has no effect with sfprompt.mode"):
        SFPromptConfig(mode="prompt-tuning", head_layers=2)
    assert SFPromptConfig(mode="prompt-tuning", head_layers=0).head_layers == 0  # the default


def test_extends_naming_a_folder_says_so(tmp_path, capsys):
    (tmp_path / "base").mkdir()
    path = tmp_path / "exp.toml"
    path.write_text('extends = "base"\nmethod = "fedavg"\n')
    code, _, err = cli(capsys, "run", path)
    assert code == 2
    assert_one_line(err, "extends:", "is a folder; name a TOML file")
