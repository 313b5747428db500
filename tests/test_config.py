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
    assert exp.method == "fedavg" and exp.strategy.name is None  # a baseline is its own
    assert exp.run.name == "quickstart"


def test_baseline_experiments_are_valid():
    from fedsim.sweep import load_sweep
    from fedsim.sweep.execute import validate

    folder = ROOT / "experiments" / "baselines"
    files = sorted(p for p in folder.glob("*.toml") if not _is_sweep(p))
    assert len(files) >= 8
    for path in files:
        load_experiment(path)
    planned = validate(load_sweep(folder / "sweep.toml"))
    assert len(planned) == 4 * 2 * 3  # strategies x datasets x seeds
    assert {exp.data.dataset for exp in planned.values()} == {"mnist", "cifar10"}


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
        (["client.fused=true"], "client.fused", "'adam' or 'adamw'"),
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


def _toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_chain_deep_merges_and_the_child_wins(tiny_toml):
    folder = tiny_toml.parent
    _toml(
        folder / "b.toml",
        'extends = "tiny.toml"\n[run]\nname = "bee"\nrounds = 5\n[client]\nlr = 0.1\n',
    )
    a = _toml(folder / "sub" / "a.toml", 'extends = "../b.toml"\n[data]\nalpha = 0.3\n')
    exp = load_experiment(a, ["client.lr=0.2"])
    assert exp.data.alpha == 0.3 and exp.data.partitioner == "dirichlet"  # tables merge
    assert exp.run.rounds == 5 and exp.run.seed == 0  # from b, from tiny
    assert exp.client.lr == 0.2 and exp.client.momentum == 0.9  # override > b > tiny
    assert exp.run.name == "a"  # not inherited: the stem of the file being run
    base = load_experiment(folder / "b.toml")
    assert base.run.name == "bee" and base.client.lr == 0.1  # its own name; b wins over tiny


def test_extends_cycles_and_missing_bases_are_refused(tmp_path):
    a = _toml(tmp_path / "a.toml", 'extends = "b.toml"\n')
    _toml(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(ConfigError) as info:
        load_experiment(a)
    assert "cycle" in str(info.value) and "a.toml -> " in str(info.value)
    assert "b.toml -> " in str(info.value)
    lone = _toml(tmp_path / "lone.toml", 'extends = "gone/base.toml"\n')
    with pytest.raises(ConfigError, match=r"lone.toml: extends: no such base file .*gone/base"):
        load_experiment(lone)
    odd = _toml(tmp_path / "odd.toml", "extends = 3\n")
    with pytest.raises(ConfigError, match="odd.toml: extends: expected the path"):
        load_experiment(odd)


def _is_sweep(path: Path) -> bool:
    import tomllib

    return "out" in tomllib.loads(path.read_text())


def test_every_experiment_file_runs_as_it_is():
    """Every experiments/**/*.toml loads on its own (bases through `extends`); every sweep
    file's runs are valid experiments too."""
    from fedsim.sweep import load_sweep
    from fedsim.sweep.execute import validate

    files = sorted(
        p for p in (ROOT / "experiments").rglob("*.toml") if "results" not in p.parts
    )  # results/ holds finished runs' resolved configs, not experiment files
    sweeps = [p for p in files if _is_sweep(p)]
    assert len(sweeps) >= 5
    for path in files:
        if path not in sweeps:
            load_experiment(path)
    planned = {s.name: validate(load_sweep(s)) for s in sweeps if s.parent.name == "curriculum"}

    # the curriculum reproduction: 4 heterogeneity levels x 4 orderings + 2 client-curriculum
    # runs + 5 disparity runs, + text (text-base.toml): 2 heterogeneity levels x 4 orderings
    main = planned["sweep.toml"]
    assert len({run.cell for run in main}) == 31 and len(main) == 31 * 3
    orderings = set()
    for run, exp in main.items():
        text = run.cell.startswith("text-")
        assert run.run_dir.parts[-2:] == (run.cell, f"seed{run.seed}")
        assert exp.run.seed == run.seed and exp.run.rounds == (40 if text else 22)
        assert exp.data.dataset == ("rotten_tomatoes" if text else "cifar10")
        assert exp.model.name == ("bag_of_embeddings" if text else "cnn")
        assert (exp.clients.num, exp.clients.per_round) == (100, 10)
        orderings.add((exp.data.partitioner, exp.data.alpha, exp.curriculum.ordering))
    assert len(orderings) >= 19
    assert {exp.run.rounds for exp in planned["sweep-long.toml"].values()} == {100}
    cell = planned["sweep-cell.toml"]
    assert {r.cell for r in cell} == {"dir0.2-vanilla"} and {r.seed for r in cell} == {0, 1, 2}
