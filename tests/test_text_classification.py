"""Text classification through the supervised client: real Rotten Tomatoes snippets as
MiniLM-L6 WordPiece ids, a bag of word embeddings, FedAvg and the data curriculum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedsim.config import ConfigError, load_experiment
from fedsim.config.schema import DataConfig
from fedsim.data.federated import federated_image_data
from fedsim.runner import run_experiment
from fedsim.text import pretrained_embeddings, token_ids, vocabulary

TEXT = """
method = "fedavg"
[run]
name = "text"
seed = 0
rounds = 8
[data]
dataset = "rotten_tomatoes"
partitioner = "iid"
max_length = 48
[model]
name = "bag_of_embeddings"
hidden = 32
[client]
local_epochs = 3
batch_size = 16
lr = 0.5
momentum = 0.9
[clients]
num = 10
per_round = 5
[eval]
batch_size = 1000
"""


@pytest.fixture
def text_toml(tmp_path: Path) -> Path:
    path = tmp_path / "text.toml"
    path.write_text(TEXT)
    return path


def _server_rows(run_dir: Path) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["scope"] == "server-eval"]


def test_texts_become_padded_wordpiece_ids():
    ids = token_ids(["a gripping, funny film", "dull"], 8)
    vocab = vocabulary()
    assert ids.shape == (2, 8) and ids.dtype.name == "int64"
    assert vocab.size == 30522 and vocab.pad_id == 0
    assert (ids[1, 3:] == vocab.pad_id).all() and (ids[0] != vocab.pad_id).sum() > 3
    data = federated_image_data(DataConfig(dataset="rotten_tomatoes", max_length=16), 4, 0)
    assert data.x_train.dtype == torch.int64 and data.x_train.shape[1] == 16
    assert sum(len(p) for p in data.partitions) == len(data.y_train)


def test_fedavg_learns_rotten_tomatoes(text_toml, tmp_path):
    first, _ = run_experiment(load_experiment(text_toml, ["run.rounds=5"]), tmp_path / "a")
    rows = _server_rows(first)
    majority = 0.578  # share of "fresh" snippets in the test split
    assert rows[-1]["accuracy"] > majority + 0.07
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.1


def test_data_curriculum_runs_on_text(text_toml, tmp_path):
    run_dir, summary = run_experiment(
        load_experiment(
            text_toml,
            [
                "method='curriculum'",
                "run.rounds=2",
                "curriculum.ordering='curriculum'",
                "curriculum.min_pool=16",
                "curriculum.client_curriculum=true",
            ],
        ),
        tmp_path / "cur",
    )
    assert summary["status"] == "completed"
    rows = _server_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    # paced local training still learns (accuracy; the loss rises as the model grows confident)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.05


def test_pretrained_minilm_vectors_initialise_the_embedding(text_toml):
    from fedsim.models import build_model

    exp = load_experiment(text_toml, ["model.init='minilm'"])
    vocab = vocabulary()
    model = build_model(exp.model, (48,), 2, 0, vocab)
    table = pretrained_embeddings()
    assert model.embedding.weight.shape == table.shape == (30522, 384)
    assert torch.equal(model.embedding.weight[1:], table[1:])
    assert not model.embedding.weight[vocab.pad_id].any()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.name='cnn'"], "model.name: 'cnn' is not one of bag_of_embeddings"),
        (
            ["data.dataset='mnist'"],
            "model.name: 'bag_of_embeddings' is not one of cnn, lenet5, mlp, convnet, "
            "resnet18 (the models for image",
        ),
        (["data.partitioner='disparity'"], "data.partitioner: disparity scores images only"),
        (["data.server_share=0.1"], "data.server_share: only image datasets"),
        (["model.name='mlp'", "model.init='minilm'", "data.dataset='mnist'"], "model.init"),
        (["data.max_length=2"], "data.max_length"),
    ],
)
def test_mismatched_model_and_data_is_a_config_error(text_toml, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_experiment(text_toml, overrides)
