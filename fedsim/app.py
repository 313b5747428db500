"""The one ServerApp and the one ClientApp, shared by every backend and every method.

Clients learn the experiment from the resolved config the server puts in every message
(``fedsim.config``), so the same ClientApp works in-process, in Ray actors and on real
SuperNodes without access to the experiment file.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedsim.config.load import from_toml, load_experiment, parse_overrides
from fedsim.config.schema import Experiment
from fedsim.federation.grid_view import WHOAMI
from fedsim.federation.loop import CONFIG_KEY
from fedsim.methods import get_method

APP_ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=8)
def _experiment_from_text(text: str) -> Experiment:
    return from_toml(text)


def experiment_of(msg: Message) -> Experiment:
    return _experiment_from_text(str(msg.content["config"][CONFIG_KEY]))


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    exp = experiment_of(msg)
    return get_method(exp.method).handler("train")(msg, context, exp)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    exp = experiment_of(msg)
    return get_method(exp.method).handler("evaluate")(msg, context, exp)


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Node discovery (partition id), then any method-specific queries."""
    config = msg.content["config"]
    if WHOAMI in config:
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"whoami": ConfigRecord({"partition-id": pid})}), reply_to=msg)
    exp = experiment_of(msg)
    handler = get_method(exp.method).handler("query")
    if handler is None:
        raise ValueError(f"method '{exp.method}' answers no queries")
    return handler(msg, context, exp)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: the experiment comes from the run config."""
    from fedsim.runner import run_on_grid

    cfg = context.run_config
    experiment = Path(str(cfg.get("experiment", "experiments/quickstart.toml")))
    if not experiment.is_absolute():
        experiment = APP_ROOT / experiment
    exp = load_experiment(experiment, parse_overrides([str(cfg.get("overrides", ""))]))
    out = str(cfg.get("out", "")) or None
    run_on_grid(grid, exp, out=Path(out) if out else None)
