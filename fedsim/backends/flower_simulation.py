"""``run.backend = "flower-simulation"``: Flower's simulation engine (``run_simulation``) runs
the same ServerApp and ClientApp, for users who want Flower's own engine. fedsim's ``ray``
backend (``fedsim/backends/ray_workers.py``) is faster and checkpoints client state.

Each client gets ``clients.num_cpus`` CPUs and ``clients.num_gpus`` (fractional) GPUs;
a client given a GPU trains on it (Ray sets CUDA_VISIBLE_DEVICES per actor). The round loop
and its callbacks are the in-process ones. Client ``Context.state`` lives inside Flower's
engine, out of fedsim's reach: it is not checkpointed, and a method that keeps client state
cannot be resumed on this backend (the loop refuses with a message).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedsim.backends.ray_start import quiet_ray_environment, ray_init_args, wait_for_ray_stop
from fedsim.checkpoint import Checkpoint
from fedsim.config.schema import Experiment
from fedsim.federation.callbacks import Callback


def backend_config(exp: Experiment) -> dict:
    return {
        "client_resources": {
            "num_cpus": exp.clients.num_cpus,
            "num_gpus": exp.clients.num_gpus,
        },
        "init_args": ray_init_args(),
    }


def run_with_flower_simulation(
    exp: Experiment,
    run_dir: Path,
    callbacks: list[Callback],
    checkpoint: Checkpoint | None = None,
):
    wait_for_ray_stop()  # a ray-backend run of this process may still be stopping its Ray
    quiet_ray_environment()
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedsim.client_app import client_app
    from fedsim.federation.loop import run_federation

    outcome: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        outcome["result"] = run_federation(
            grid, exp, run_dir, callbacks=callbacks, checkpoint=checkpoint
        )

    config = backend_config(exp)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=exp.clients.num,
            backend_config=config,
        )
    finally:
        shutil.rmtree(config["init_args"]["_temp_dir"], ignore_errors=True)
    if "result" not in outcome:
        raise RuntimeError("the Ray simulation ended before the federation finished")
    return outcome["result"]
