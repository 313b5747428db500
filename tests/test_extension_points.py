"""What a method declares beyond its strategy and handlers (``Method.streams``, ``.commands``,
``.export_partition``, its own sections for its knobs), and the one-line errors of keys that
moved out of ``[strategy]``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedsim.cli import app, run_cli
from fedsim.config import load_experiment
from fedsim.config.load import ConfigError, load_run_config
from fedsim.method import Method
from fedsim.registry import RegistryError, _check_streams, methods
from fedsim.seeding import ENGINE_STREAMS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "baselines" / "results"


def _method(name: str, **fields) -> Method:
    return Method(
        name=name, description="test", tasks=("image-classification",), strategy="x:y",
        handlers={}, initial_arrays="x:y", **fields,
    )  # fmt: skip


def test_every_stream_has_one_owner():
    numbers = list(ENGINE_STREAMS.values())
    numbers += [n for m in methods().values() for n in m.streams.values()]
    assert len(numbers) == len(set(numbers))
    assert methods()["curriculum"].streams == {"curriculum.order": 7, "curriculum.client-order": 8}


@pytest.mark.parametrize(
    ("number", "owner"), [(7, "method 'curriculum''s 'curriculum.order'"), (1, "the engine's")]
)
def test_a_plugin_cannot_reuse_a_stream_number(number, owner):
    found = {**methods(), "mine": _method("mine", streams={"mine.order": number})}
    with pytest.raises(RegistryError, match=f"stream 'mine.order' = {number}, already {owner}"):
        _check_streams(found)


def test_method_commands_are_added_to_the_cli(capsys):
    names = {c.name for c in app.registered_commands}
    assert {"generate", "distill-generator"} <= names
    assert run_cli(["distill-generator", "--help"]) == 0
    assert "generator a distillation experiment uses" in capsys.readouterr().out


def test_distill_generator_refuses_another_method(tiny_toml, capsys):
    assert run_cli(["distill-generator", str(tiny_toml)]) == 2
    assert "method is 'fedavg', not 'distillation'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "new"),
    [
        ("strategy.proximal_mu=0.1", "[fedprox] (fedprox.proximal_mu = 0.1)"),
        ("strategy.eta=0.5", "[fedopt] (fedopt.eta = 0.5)"),
        ("strategy.tau=0.01", "[fedopt] (fedopt.tau = 0.01)"),
    ],  # fmt: skip
)
def test_a_moved_key_names_its_new_place(tiny_toml, override, new):
    with pytest.raises(ConfigError) as error:
        load_experiment(tiny_toml, ["method='fedprox'", override])
    assert str(error.value).endswith(f"{override.split('=')[0]}: moved to {new}")


def test_knobs_live_in_the_optimisers_sections(tiny_toml):
    exp = load_experiment(tiny_toml, ["method='fedprox'", "fedprox.proximal_mu=0.1"])
    assert exp.section("fedprox").proximal_mu == 0.1
    exp = load_experiment(tiny_toml, ["method='fedadam'", "fedopt.eta=0.05"])
    assert exp.section("fedopt").eta == 0.05
    with pytest.raises(ConfigError, match=r"fedopt: method 'fedprox' ignores a \[fedopt\]"):
        load_experiment(tiny_toml, ["method='fedprox'", "fedopt.eta=0.05"])


def test_the_curriculum_reads_only_its_optimisers_section(tiny_toml):
    base = ["method='curriculum'", "strategy.name='fedprox'"]
    exp = load_experiment(tiny_toml, [*base, "fedprox.proximal_mu=0.2"])
    assert exp.section("fedprox").proximal_mu == 0.2
    with pytest.raises(ConfigError, match=r"fedopt: \[fedopt\] configures fedadam or fedyogi"):
        load_experiment(tiny_toml, [*base, "fedopt.eta=0.05"])


def test_a_run_written_before_the_keys_moved_still_loads(tmp_path):
    """A committed run's config.toml lists [strategy] proximal_mu, eta...: it loads with the
    value in the section its method reads (and defaults dropped), as the same run planned now."""
    run = tmp_path / "fedprox"
    shutil.copytree(RESULTS / "fedprox_mnist-seed0", run)
    text = (run / "config.toml").read_text()
    assert "proximal_mu = 0.01" in text.split("[strategy]")[1]
    (run / "config.toml").write_text(text.replace("proximal_mu = 0.01", "proximal_mu = 0.05"))
    exp = load_run_config(run)
    assert exp.section("fedprox").proximal_mu == 0.05
    fedavg = load_run_config(RESULTS / "fedavg_mnist-seed0")
    planned = load_experiment(ROOT / "experiments" / "baselines" / "fedavg_mnist.toml")
    assert fedavg.section("fedprox") is None
    assert fedavg.strategy == planned.strategy
