"""The GPU paths, on a CUDA GPU (skipped elsewhere: this project's CI has none).

FedIT's clients on the GPU reproduce to the bit; Ray workers packed on one GPU
(``clients.num_gpus = 0.25``) give the bytes of one client at a time; a worker capped at a
share of the GPU's memory that its client overruns is a failed client, not a crashed run.
``bench/device/gpu-check`` runs this module on a GPU machine, beside the packing benchmark.

The base model is SmolLM2-135M-Instruct when its asset is cached; else ``FEDSIM_GPU_MODEL``
names a folder with its config and tokenizer, and the weights are seeded random ones
(``fedsim_methods.fedit.random_model``): the arithmetic and memory are the real model's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fedsim.config import load_experiment
from fedsim.runner import run_experiment

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.xdist_group("ray"),
]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    from fedsim.assets.fetch import is_prepared
    from fedsim_methods.fedit.random_model import random_weights_copy

    source = os.environ.get("FEDSIM_GPU_MODEL")
    if source is None and is_prepared("smollm2-135m-instruct"):
        return "smollm2-135m-instruct"
    if source is None:
        pytest.skip("neither the smollm2-135m-instruct asset nor FEDSIM_GPU_MODEL is here")
    return str(random_weights_copy(Path(source), tmp_path_factory.mktemp("model")))


def _fedit(base_model: str, *overrides: str):
    return load_experiment(
        ROOT / "experiments" / "fedit" / "fedit_chatterbot.toml",
        [
            "run.rounds=2", "run.checkpoint_every=0", "eval.server=false",
            "clients.num=8", "clients.per_round=4", "clients.num_gpus=1",
            "fedit.partition='iid'", "fedit.max_steps=4", f"fedit.base_model='{base_model}'",
            *overrides,
        ],
    )  # fmt: skip


def _run(exp, run_dir: Path) -> tuple[dict, bytes]:
    _, summary = run_experiment(exp, run_dir)
    return summary, (run_dir / "metrics.jsonl").read_bytes()


def test_fedit_clients_on_the_gpu_reproduce_to_the_bit(base_model, tmp_path):
    first, first_bytes = _run(_fedit(base_model), tmp_path / "a")
    second, second_bytes = _run(_fedit(base_model), tmp_path / "b")
    assert first["status"] == second["status"] == "completed", (first, second)
    assert first_bytes == second_bytes
    rows = [json.loads(line) for line in first_bytes.splitlines()]
    assert [r["round"] for r in rows if r["scope"] == "train"] == [1, 2]


def test_workers_packed_on_one_gpu_give_the_bytes_of_one_at_a_time(base_model, tmp_path):
    _, one_at_a_time = _run(_fedit(base_model), tmp_path / "inprocess")
    packed = _fedit(base_model, "run.backend='ray'", "clients.num_gpus=0.25")
    summary, packed_bytes = _run(packed, tmp_path / "packed")
    assert summary["status"] == "completed", summary
    assert "ray backend: 4 workers starting" in (tmp_path / "packed" / "log.txt").read_text()
    assert packed_bytes == one_at_a_time


def test_a_worker_over_its_gpu_memory_share_is_a_failed_client(base_model, tmp_path):
    """A 0.2% share of the GPU's memory holds nothing of a 135M-parameter model (540 MB in
    fp32): every worker's client meets CUDA's out-of-memory error, each is recorded as
    that client's failure, and the run ends as failed with the reason, not a crash."""
    starved = _fedit(base_model, "run.backend='ray'", "clients.num_gpus=0.002", "run.rounds=1")
    summary, metrics = _run(starved, tmp_path / "starved")
    assert summary["status"] == "failed" and "every client failed" in summary["error"], summary
    assert "OutOfMemoryError" in summary["error"], summary["error"]
    failures = [json.loads(line) for line in metrics.splitlines()]
    assert any(r.get("failures") for r in failures), failures
