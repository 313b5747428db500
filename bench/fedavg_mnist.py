"""FedAvg benchmark: the same workload several ways, side by side in one invocation.

Workload: MNIST, small CNN, 100 Dirichlet(0.5) clients, 10 per round, 1 local epoch,
10 rounds, SGD. Each mode is a separate process; measured: wall time of the whole process,
time before round 1 (process launch to the first training message of round 1), peak RSS
of its process tree (Ray's processes included), final test accuracy.
  floor              a bare PyTorch loop doing the same arithmetic (same sampling, same order)
  inprocess          fedsim, in-process backend (torch threads = the CPUs)
  ray-1, ray-2       fedsim's Ray backend with 1 and 2 worker actors (1 thread each)
  flower-simulation  fedsim on Flower's simulation engine (1 CPU per client)
  flower             a plain Flower app (FedAvg.start under run_simulation)
  inprocess-1000, inprocess-10000   fedsim in-process with that many clients, 3 rounds
                     (memory and seconds per round)
Results also go to bench/out/results.json.
Usage: python bench/fedavg_mnist.py [--rounds N] [--only floor,inprocess,...] [--repeat K]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
MODES = [
    "floor",
    "inprocess",
    "ray-1",
    "ray-2",
    "flower-simulation",
    "flower",
    "inprocess-1000",
    "inprocess-10000",
]
FIRST_ROUND = {"at": None}  # time.time() when round 1's first training message left


def experiment(rounds: int, backend: str = "inprocess", num: int = 100, workers: int = 0):
    from fedsim.config import load_experiment

    return load_experiment(
        ROOT / "experiments" / "baselines" / "fedavg_mnist.toml",
        {
            "run.rounds": rounds,
            "run.backend": backend,
            "run.checkpoint_every": 0,
            "run.name": f"bench-{backend}-{num}",
            "run.ray_workers": workers,
            "eval.every": rounds,
            "clients.num": num,
            "clients.per_round": 10,
            "client.local_epochs": 1,
            # fedsim pins torch threads per client call to clients.num_cpus: in-process gets
            # every core, as the bare loop; on Ray one per worker (two workers on two cores).
            "clients.num_cpus": (os.cpu_count() or 1) if backend == "inprocess" else 1,
            # 10,000 Dirichlet clients of at least 10 samples do not fit MNIST: the scale
            # modes measure memory and seconds per round on IID partitions.
            **({"data.partitioner": "iid", "data.min_partition_size": 0} if num > 100 else {}),
        },
    )


# -- workers ------------------------------------------------------------------------
def run_floor(rounds: int) -> dict:
    """The same arithmetic as fedsim's FedAvg, with nothing around it (bench/floor.py)."""
    from floor import bare_fedavg

    def started() -> None:
        FIRST_ROUND["at"] = FIRST_ROUND["at"] or time.time()

    return bare_fedavg(experiment(rounds), started=started)


def run_fedsim(rounds: int, backend: str, num: int = 100, workers: int = 0) -> dict:
    import shutil

    from fedsim.federation.callbacks import Callback
    from fedsim.runner import run_experiment

    class FirstExchange(Callback):
        def on_round_start(self, run, server_round) -> None:
            FIRST_ROUND["at"] = FIRST_ROUND["at"] or time.time()

    out = OUT / f"run-{backend}-{num}-{os.getpid()}"
    exp = experiment(rounds, backend, num, workers)
    _, summary = run_experiment(exp, out, callbacks=[FirstExchange()])
    shutil.rmtree(out, ignore_errors=True)
    per_round = (summary["wall_time_s"] - summary["setup_s"]) / rounds
    return {**summary["final"]["server-eval"], "s_per_round": per_round}


def run_plain_flower(rounds: int) -> dict:
    """A plain Flower app: FedAvg.start + a ClientApp, Ray simulation engine."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedsim.data.federated import federated_image_data
    from fedsim.models import build_model
    from fedsim.training import evaluate, train_epochs

    exp = experiment(rounds)
    import torch

    cpu = torch.device("cpu")
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
        pid = int(context.node_config["partition-id"])
        model = build_model(exp.model, data.input_shape, data.num_classes, exp.run.seed)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = data.client(pid)
        gen = torch.Generator().manual_seed(pid * 1000 + int(msg.content["config"]["server-round"]))
        loss = train_epochs(model, x, y, exp.client, gen, cpu)
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)}),
            }
        )
        return Message(content, reply_to=msg)

    final: dict = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
        model = build_model(exp.model, data.input_shape, data.num_classes, exp.run.seed)

        def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
            if rnd not in (0, rounds):
                return None
            model.load_state_dict(arrays.to_torch_state_dict())
            result = evaluate(model, data.x_test, data.y_test, exp.eval.batch_size, cpu)
            final.update(result)
            return MetricRecord(result)

        class TimedFedAvg(FedAvg):
            def configure_train(self, server_round, arrays, config, grid):
                FIRST_ROUND["at"] = FIRST_ROUND["at"] or time.time()
                return super().configure_train(server_round, arrays, config, grid)

        strategy = TimedFedAvg(fraction_train=0.1, fraction_evaluate=0.0, min_available_nodes=100)
        strategy.start(
            grid, ArrayRecord(model.state_dict()), num_rounds=rounds, evaluate_fn=evaluate_fn
        )

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=exp.clients.num,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "address": "local",
                "logging_level": "ERROR",
                "log_to_driver": False,
                "include_dashboard": False,
            },
        },
    )
    return final


def worker(mode: str, rounds: int) -> None:
    t0 = time.perf_counter()
    if mode.startswith("ray-"):  # as `fedsim run` does: Ray starts while the config loads
        from fedsim.backends.ray_start import start_early

        start_early(None)
    if mode == "floor":
        result = run_floor(rounds)
    elif mode == "flower":
        result = run_plain_flower(rounds)
    elif mode.startswith("inprocess-"):
        result = run_fedsim(min(rounds, 3), "inprocess", int(mode.split("-")[1]))
    elif mode.startswith("ray-"):
        result = run_fedsim(rounds, "ray", workers=int(mode.split("-")[1]))
    else:
        result = run_fedsim(rounds, mode)
    result = {"work_s": time.perf_counter() - t0, "first_round_at": FIRST_ROUND["at"], **result}
    print(json.dumps(result))


# -- driver -------------------------------------------------------------------------
def measure(mode: str, rounds: int) -> dict:
    from process_peaks import run_sampled

    run = run_sampled(
        [sys.executable, __file__, "--worker", mode, "--rounds", str(rounds)], pss=True
    )
    if run.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    first = result.pop("first_round_at")
    before = first - run.launched_at if first else None
    return {"mode": mode, "wall_s": run.wall_s, "before_round_1_s": before,
            "peak_rss_mb": run.peak_rss_mb, "peak_pss_mb": run.peak_pss_mb, **result}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--only", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions; min kept")
    parser.add_argument("--worker", choices=MODES)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rounds)
        return
    from rich.console import Console
    from rich.table import Table

    OUT.mkdir(parents=True, exist_ok=True)
    modes = args.only.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.repeat):  # interleaved, so background load hits every mode alike
        for mode in modes:
            print(f"running {mode} ({rep + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
            runs[mode].append(measure(mode, args.rounds))
    results = [min(runs[m], key=lambda r: r["wall_s"]) for m in modes]
    floor = next((r for r in results if r["mode"] == "floor"), None)
    table = Table(
        title=f"FedAvg MNIST, 100 clients, 10/round, {args.rounds} rounds",
        box=None,
        padding=(0, 0, 0, 1),
        header_style="bold underline",
    )
    for col in ("mode", "wall s", "x floor", "x inproc", "before r1 s", "s/round",
                "RSS MB", "PSS MB", "acc"):  # fmt: skip
        table.add_column(col, justify="right", no_wrap=True)
    inproc = next((r for r in results if r["mode"] == "inprocess"), None)
    for r in results:
        table.add_row(
            r["mode"],
            f"{r['wall_s']:.1f}",
            f"{r['wall_s'] / floor['wall_s']:.2f}" if floor else "-",
            f"{r['wall_s'] / inproc['wall_s']:.2f}" if inproc else "-",
            f"{r['before_round_1_s']:.1f}" if r.get("before_round_1_s") else "-",
            f"{r['s_per_round']:.2f}" if "s_per_round" in r else "-",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['peak_pss_mb']:.0f}",
            f"{r.get('accuracy', float('nan')):.3f}",
        )
    Console(width=max(100, Console().width)).print(table)
    (OUT / "results.json").write_text(json.dumps({"best": results, "all": runs}, indent=2))


if __name__ == "__main__":
    main()
