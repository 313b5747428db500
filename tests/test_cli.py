"""The command line as a user meets it: run, report, partition, list, datasets.

In-process through ``fedsim.cli.run_cli`` (the function behind the ``fedsim`` script), so the
commands are checked end to end without paying a Python start-up per call."""

from __future__ import annotations

import json
import subprocess
import sys

from fedsim.cli import run_cli

SMALL = "data.max_train_samples=2000"


def cli(capsys, *args) -> tuple[int, str, str]:
    code = run_cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_then_report_and_plot(tiny_toml, tmp_path, capsys):
    out = tmp_path / "myrun"
    code, stdout, err = cli(capsys, "run", tiny_toml, "--set", "run.rounds=2", SMALL, "--out", out)
    assert code == 0, err
    assert (out / "metrics.jsonl").exists()  # --out is exactly the run directory
    assert "test acc" in stdout and f"results: {out}" in stdout
    other = tmp_path / "other"
    code, _, err = cli(capsys, "run", tiny_toml, "--set", "run.rounds=1", "run.seed=2", SMALL,
                       "--out", other)  # fmt: skip
    assert code == 0, err
    code, stdout, err = cli(capsys, "report", out, other, "--plot", tmp_path / "cmp.png")
    assert code == 0, err
    assert "myrun" in stdout and "other" in stdout
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    final = json.loads((out / "summary.json").read_text())["final"]["server-eval"]["accuracy"]
    assert f"{final:.4f}" in stdout


def test_default_run_dir_lives_under_runs(tiny_toml, tmp_path, capsys):
    code, _, err = cli(
        capsys, "run", tiny_toml, "--set", "run.rounds=1 data.max_train_samples=1000"
    )
    assert code == 0, err
    assert list((tmp_path / "runs" / "tiny").glob("*/metrics.jsonl"))


def test_partition_table_and_plot(tiny_toml, tmp_path, capsys):
    code, out, err = cli(capsys, "partition", tiny_toml, "--plot", tmp_path / "p.png")
    assert code == 0, err
    assert "dirichlet over 10 clients" in out
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_list_and_datasets_list(capsys):
    code, out, err = cli(capsys, "list")
    assert code == 0, err
    for word in ("fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm", "scaffold", "mnist",
                 "cifar10", "smollm2"):  # fmt: skip
        assert word in out
    code, out, _ = cli(capsys, "datasets", "list")
    assert code == 0 and "rotten_tomatoes" in out


def test_unknown_asset_is_a_clear_error(capsys):
    code, _, err = cli(capsys, "datasets", "fetch", "imagenet")
    assert code != 0
    assert "imagenet" in err and "Traceback" not in err


def test_report_rejects_non_run_dir(tmp_path, capsys):
    code, _, err = cli(capsys, "report", tmp_path)
    assert code == 2 and f"the argument {tmp_path} is not a run directory" in err


def test_the_fedsim_script_and_python_m_fedsim_start(tmp_path):
    """The installed entry points themselves (everything else here calls run_cli)."""
    for cmd in ([sys.executable, "-m", "fedsim", "--help"], [sys.executable, "-m", "fedsim.cli"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode in (0, 2) and "fedsim" in proc.stdout + proc.stderr
