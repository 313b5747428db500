"""A method from another package: installed with pip, it runs in-process and on Ray with no
edit under fedsim/ (entry points ``fedsim.methods``; tests/plugin is the package)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import fedsim_with

TOY = """
method = "toy_probe"
[run]
name = "toy"
rounds = 2
[data]
dataset = "mnist"
partitioner = "dirichlet"
max_train_samples = 2000
[clients]
num = 6
per_round = 4
[toy_probe]
keep = 2
"""


def _stages(run_dir: Path) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    with open(run_dir / "comm.csv") as f:
        for row in csv.DictReader(f):
            out.setdefault((row["stage"], row["direction"]), []).append(int(row["bytes"]))
    return out


@pytest.fixture(scope="module")
def inprocess_run(plugin_site, tmp_path_factory) -> Path:
    """The plugin's run through a separate ``fedsim run`` process, as a user would start it."""
    work = tmp_path_factory.mktemp("toy")
    toml = work / "toy.toml"
    toml.write_text(TOY)
    done = fedsim_with(plugin_site, "run", str(toml), "--out", str(work / "run"), cwd=work)
    assert done.returncode == 0, done.stderr
    return work / "run"


@pytest.fixture
def plugin_registered(plugin_site, monkeypatch):
    """The plugin visible in this process too (for quick CLI checks), then forgotten."""
    from fedsim.registry import reload

    monkeypatch.syspath_prepend(str(plugin_site))
    reload()
    yield
    monkeypatch.undo()
    reload()


def test_plugin_method_runs_with_its_own_section_and_two_exchanges(inprocess_run):
    run_dir = inprocess_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["client_failures"] == 0
    assert "[toy_probe]\nkeep = 2" in (run_dir / "config.toml").read_text()
    stages = _stages(run_dir)
    # Probe: the 4 candidates get the model and answer one float per layer (8 layers of
    # the CNN: a few hundred bytes against ~320 kB down); then 2 of them train.
    assert len(stages[("probe", "down")]) == len(stages[("probe", "up")]) == 2 * 4
    assert max(stages[("probe", "up")]) < 2000 < min(stages[("probe", "down")])
    assert len(stages[("train", "up")]) == 2 * 2
    assert stages[("train", "up")] == stages[("train", "down")]
    train = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in train if r["scope"] == "train"] == [2, 2]


def test_plugin_section_is_validated_and_listed(plugin_registered, tmp_path, capsys):
    from fedsim.cli import run_cli

    toml = tmp_path / "toy.toml"
    toml.write_text(TOY)
    assert run_cli(["list"]) == 0 and "toy_probe" in capsys.readouterr().out
    assert run_cli(["run", str(toml), "--set", "toy_probe.keep=9"]) == 2
    assert "toy_probe.keep: at most clients.per_round (4)" in capsys.readouterr().err
    assert run_cli(["run", str(toml), "--set", "toy_probe.kep=1"]) == 2
    assert "toy_probe.kep: unknown key" in capsys.readouterr().err


def test_without_the_plugin_its_section_is_an_unknown_method(tmp_path, capsys):
    from fedsim.cli import run_cli

    toml = tmp_path / "toy.toml"
    toml.write_text(TOY)
    assert run_cli(["run", str(toml)]) == 2
    assert "unknown method 'toy_probe'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one Ray cluster at a time under pytest-xdist
def test_plugin_method_on_ray_gives_the_inprocess_bytes(plugin_site, inprocess_run, tmp_path):
    toml = tmp_path / "toy.toml"
    toml.write_text(TOY)
    args = ("run", str(toml), "--backend", "ray", "--out", str(tmp_path / "ray"))
    done = fedsim_with(plugin_site, *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("metrics.jsonl", "comm.csv"):
        assert (inprocess_run / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()
