"""The one ServerApp and the one ClientApp (``fedsim.client_app``) that
``[tool.flwr.app.components]`` names: ``flwr run`` and SuperNodes load them from here."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.client_app import client_app
from fedsim.config.load import load_experiment, parse_overrides

APP_ROOT = Path(__file__).resolve().parents[1]
__all__ = ["client_app", "server_app"]

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
