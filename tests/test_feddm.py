"""FedDM (Xiong et al. 2023): distribution matching on clients, training on the union on the
server. It learns, its matching loss falls, a reply of the wrong kind is refused, and a
crashed run resumes to the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import CrashAfter, StubGrid

from fedsim.compat import set_message_id
from fedsim.config import load_experiment
from fedsim.config.load import to_toml
from fedsim.config.wire import CONFIG_KEY
from fedsim.models.cnn import SmallCNN
from fedsim.runner import RunError, resume_run, run_experiment
from fedsim_methods.clients.feddm import distribution_match, last_linear, perturbed
from fedsim_methods.feddm import IMAGES, LABELS, SYNTHETIC, FedDMConfig
from fedsim_methods.strategies.feddm import validate_reply

FEDDM = ["method='feddm'", "feddm.ipc=3", "feddm.iterations=8", "feddm.server_epochs=30",
         "feddm.server_lr=0.02",
         "clients.per_round=3", "data.max_train_samples=3000"]  # fmt: skip


def test_perturbed_weights_lie_rho_from_the_global_model():
    model = SmallCNN(1, 28, 10)
    base = {n: p.detach() for n, p in model.named_parameters()}
    moved = perturbed(base, 2.5, torch.Generator().manual_seed(0))
    distance = torch.sqrt(sum(((moved[n] - base[n]) ** 2).sum() for n in base))
    assert float(distance) == pytest.approx(2.5, rel=1e-4)
    assert perturbed(base, 0.0, torch.Generator()) == base


def test_matching_pulls_the_synthetic_embeddings_to_the_real_ones():
    torch.manual_seed(0)
    model = SmallCNN(1, 28, 10)
    x = torch.rand(60, 1, 28, 28)
    y = torch.tensor([1, 4, 7] * 20)
    cfg = FedDMConfig(ipc=2, iterations=30, rho=0.5, real_batch=16, init="noise")
    out = distribution_match(model, x, y, cfg, (0, 1, 2), torch.device("cpu"))
    assert out.images.shape == (6, 1, 28, 28)
    assert out.labels.tolist() == [1, 1, 4, 4, 7, 7]  # only the classes the client holds
    assert out.losses[-1] < 0.2 * out.losses[0]
    again = distribution_match(model, x, y, cfg, (0, 1, 2), torch.device("cpu"))
    assert torch.equal(out.images, again.images)  # seeded by (seed, round, partition id)
    assert isinstance(last_linear(model), torch.nn.Linear)


def _sent(tiny_toml) -> Message:
    StubGrid(1)  # sets Flower's task identity, which building a message needs
    exp = load_experiment(tiny_toml, FEDDM)
    config = ConfigRecord({CONFIG_KEY: to_toml(exp), "server-round": 1})
    msg = Message(RecordDict({"config": config}), 1, "train")
    set_message_id(msg, "m1")
    return msg


def _reply(sent: Message, images: np.ndarray, labels: np.ndarray) -> Message:
    record = ArrayRecord({IMAGES: Array(images), LABELS: Array(labels)})
    metrics = MetricRecord({"num-examples": 10})
    return Message(RecordDict({SYNTHETIC: record, "metrics": metrics}), reply_to=sent)


def test_a_reply_of_the_wrong_kind_is_refused(tiny_toml):
    sent = _sent(tiny_toml)
    images, labels = np.zeros((6, 1, 28, 28), np.float32), np.array([0, 0, 0, 3, 3, 3])
    assert validate_reply("train", sent, _reply(sent, images, labels)) is None
    assert "expected float32 (N, 1, 28, 28)" in validate_reply(
        "train", sent, _reply(sent, np.zeros((6, 3, 32, 32), np.float32), labels)
    )
    assert "outside 0..9" in validate_reply("train", sent, _reply(sent, images, labels + 8))
    nan = images.copy()
    nan[0, 0, 0, 0] = np.nan
    assert "NaN" in validate_reply("train", sent, _reply(sent, nan, labels))
    too_many = np.zeros((31, 1, 28, 28), np.float32)
    assert "more than ipc x classes = 30" in validate_reply(
        "train", sent, _reply(sent, too_many, np.zeros(31, np.int64))
    )


def _evals(run_dir: Path) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["scope"] == "server-eval"]


@pytest.mark.slow
def test_feddm_learns_uploads_images_and_resumes_to_the_same_bytes(tiny_toml, tmp_path):
    exp = load_experiment(tiny_toml, [*FEDDM, "run.rounds=3"])
    reference, _ = run_experiment(exp, tmp_path / "reference")
    evals = _evals(reference)
    assert evals[-1]["accuracy"] > 0.3 and evals[-1]["loss"] < evals[0]["loss"]
    up = [r.split(",") for r in (reference / "comm.csv").read_text().split()[1:]]
    sizes = {int(r[-1]) for r in up if r[3] == "up" and r[1] == "train"}
    assert max(sizes) <= 10 * 3 * 28 * 28 * 4 + 10 * 3 * 8 + 4096  # ipc x classes images

    crashed = tmp_path / "crashed"
    with pytest.raises(RunError, match="simulated crash"):
        run_experiment(exp, crashed, callbacks=[CrashAfter(2)])
    resume_run(crashed)
    for name in ("metrics.jsonl", "comm.csv"):
        assert (crashed / name).read_bytes() == (reference / name).read_bytes()
