"""Config validation: every bad input names its key and its file, in one line, before a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.config import ConfigError, load_experiment
from fedsim.config.load import from_toml, to_toml

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_is_valid():
    exp = load_experiment(ROOT / "experiments" / "quickstart.toml")
    assert exp.method == "fedavg" and exp.strategy.name == "fedavg"
    assert exp.run.name == "quickstart"


def test_baseline_experiments_are_valid():
    files = sorted((ROOT / "experiments" / "baselines").glob("*.toml"))
    assert len(files) >= 4
    for path in files:
        load_experiment(path)


def test_overrides_apply_with_types(tiny_toml):
    exp = load_experiment(tiny_toml, ["run.seed=3", "clients.num=50 data.alpha=0.1"])
    assert exp.run.seed == 3 and exp.clients.num == 50 and exp.data.alpha == 0.1


def test_resolved_config_round_trips(tiny_toml):
    exp = load_experiment(tiny_toml)
    assert from_toml(to_toml(exp)) == exp


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["run.sede=3"], "run.sede", "unknown key"),
        (["data.alpha=0"], "data.alpha", "greater than 0"),
        (["data.alpha=-1"], "data.alpha", "greater than 0"),
        (["clients.per_round=20"], "clients.per_round", "<= clients.num"),
        (["data.dataset='imagenet'"], "data.dataset", "unknown dataset"),
        (["run.rounds='many'"], "run.rounds", "integer"),
        (["method='fedfoo'"], "method", "unknown method"),
        (["strategy.name='fedadam'"], "strategy.name", "contradicts"),
        (["run.backend='mpi'"], "run.backend", "inprocess"),
        (["client.lr=0"], "client.lr", "greater than 0"),
        (["bogus.key=1"], "bogus", "unknown key"),
        (["model.name='resnet900'"], "model.name", "not one of"),
        (["data.dataset='chatterbot'"], "data.dataset", "is instructions data"),
        (["data.dataset='rotten_tomatoes'"], "model.name", "text-classification data"),
    ],
)
def test_bad_values_name_key_and_file(tiny_toml, overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_experiment(tiny_toml, overrides)
    message = str(info.value)
    assert message.startswith(str(tiny_toml)), message
    assert key in message and words in message, message
    assert "\n" not in message


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_experiment(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nseed=1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_experiment(bad)


def test_cli_reports_bad_key_without_traceback(tiny_toml):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "run",
            str(tiny_toml),
            "--set",
            "clients.per_round=99",
        ],
        capture_output=True,
        text=True,
        cwd=Path(tiny_toml).parent,
    )
    assert proc.returncode == 2
    assert "clients.per_round" in proc.stderr and str(tiny_toml) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
