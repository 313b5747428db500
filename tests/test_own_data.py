"""Clients' own data: a node with ``data-path`` in its node config reads a fedsim data folder.

Partitions exported with ``fedsim datasets export`` and served back as own data give the
same run as the partitions themselves (``metrics.jsonl`` bytes); texts and instructions
round-trip; a node whose folder does not fit is left out with a one-line reason naming the
folder, and the run completes with the other clients.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from test_fedit import tiny_exp, tiny_model  # noqa: F401  (the tiny random Llama fixtures)

from fedsim.cli import run_cli
from fedsim.config import ConfigError, load_experiment
from fedsim.data import layouts
from fedsim.data.client import DATA_PATH, client_data, client_records
from fedsim.data.export import export_partitions, partition_folder
from fedsim.data.federated import federated_image_data
from fedsim.data.layouts import OwnDataError
from fedsim.runner import run_experiment

MNIST = """
method = "fedavg"
[run]
name = "own-mnist"
seed = 0
rounds = 2
[data]
dataset = "mnist"
partitioner = "dirichlet"
alpha = 0.5
min_partition_size = 10
max_train_samples = 600
[model]
name = "cnn"
hidden = 16
[client]
batch_size = 32
lr = 0.05
[clients]
num = 3
per_round = 3
[eval]
batch_size = 500
max_samples = 300
"""

TEXT = """
method = "fedavg"
[run]
name = "own-text"
[data]
dataset = "rotten_tomatoes"
partitioner = "iid"
max_length = 32
max_train_samples = 400
[model]
name = "bag_of_embeddings"
[clients]
num = 4
per_round = 2
"""

FEDIT = """
method = "fedit"
[run]
name = "own-fedit"
[data]
dataset = "chatterbot"
[clients]
num = 3
per_round = 2
[fedit]
heldout_per_category = 1
"""


def _toml(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _node(folder: Path | str, pid: int = 0) -> Context:
    """A SuperNode's context as ``--node-config 'partition-id=0 data-path="DIR"'`` makes it."""
    config = {"partition-id": pid, "num-partitions": 3, DATA_PATH: str(folder)}
    return Context(run_id=1, node_id=1, node_config=config, state=RecordDict(), run_config={})


def _rows(run_dir: Path, scope: str) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["scope"] == scope]


@pytest.fixture
def mnist(tmp_path):
    return load_experiment(_toml(tmp_path, MNIST, "mnist"))


def test_exported_partitions_served_as_own_data_give_the_same_run(mnist, tmp_path):
    root = tmp_path / "nodes"
    done = export_partitions(mnist, {k: partition_folder(root, k) for k in range(3)})
    data = federated_image_data(mnist.data, 3, 0)
    assert [d.count for d in done] == [len(p) for p in data.partitions]
    for pid in range(3):  # the folder holds exactly the partition, in order, bit for bit
        own = client_data(mnist, _node(partition_folder(root, pid), pid))
        x, y = data.client(pid)
        assert torch.equal(own.x, x) and torch.equal(own.y, y)
        assert own.classes == data.classes and own.input_shape == (1, 28, 28)

    normal, _ = run_experiment(mnist, tmp_path / "normal")
    paths = [str(partition_folder(root, k)) for k in range(3)]
    own_exp = mnist.model_copy(
        update={"clients": mnist.clients.model_copy(update={"data_paths": paths})}
    )
    own, summary = run_experiment(own_exp, tmp_path / "own")
    assert summary["status"] == "completed"
    assert (own / "metrics.jsonl").read_bytes() == (normal / "metrics.jsonl").read_bytes()
    assert (own / "comm.csv").read_bytes() == (normal / "comm.csv").read_bytes()


def test_nodes_whose_folders_do_not_fit_are_left_out_and_the_run_completes(mnist, tmp_path):
    data = federated_image_data(mnist.data, 3, 0)
    x, y = data.client(1)
    wrong_classes = tmp_path / "letters"
    letters = [chr(ord("a") + i) for i in range(10)]
    layouts.write_images(wrong_classes, x.numpy(), y.numpy(), letters, {})
    wrong_layout = tmp_path / "texts"
    layouts.write_texts(wrong_layout, ["a digit?"], ["0"], data.classes, {})
    overrides = [f"clients.data_paths=['', '{wrong_classes}', '{wrong_layout}']"]
    exp = load_experiment(_toml(tmp_path, MNIST, "mixed"), overrides)

    run_dir, summary = run_experiment(exp, tmp_path / "run")

    assert summary["status"] == "completed"
    train = _rows(run_dir, "train")
    assert [(r["clients"], r["failures"]) for r in train] == [(1, 2), (1, 2)]
    reasons = {
        (c["partition_id"], c["stage"]): c["reason"]
        for row in _rows(run_dir, "failures")
        for c in row["clients"]
    }
    assert {pid for pid, _ in reasons} == {1, 2}
    assert f"data folder {wrong_classes}: classes ['a', 'b'" in reasons[(1, "train")]
    assert "differ from dataset 'mnist'" in reasons[(1, "train")]
    assert reasons[(2, "train")].endswith(
        f"data folder {wrong_layout}: holds texts data, but experiment 'own-mnist' trains on "
        "images (dataset 'mnist')"
    )
    assert all("\n" not in r for r in reasons.values())
    assert "data folder" in (run_dir / "log.txt").read_text()


def _images(folder: Path, **manifest_changes) -> Path:
    """A valid 4-image MNIST folder, then the manifest edited as given."""
    x = np.zeros((4, 1, 28, 28), dtype=np.float32)
    layouts.write_images(folder, x, np.arange(4), [str(i) for i in range(10)], {})
    path = folder / layouts.MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(manifest_changes)
    path.write_text(json.dumps(manifest))
    return folder


def _with(folder: Path, name: str, array: np.ndarray) -> Path:
    np.save(folder / name, array)
    return folder


BAD_FOLDERS = {
    "no folder": (lambda d: d / "absent", "no such folder"),
    "no manifest": (lambda d: d.mkdir() or d, "no fedsim-data.json"),
    "newer version": (lambda d: _images(d, version=2), "layout version 2; this fedsim reads 1"),
    "unknown layout": (lambda d: _images(d, layout="audio"), "unknown layout 'audio'"),
    "missing labels": (
        lambda d: (_images(d) / layouts.LABELS).unlink() or d,
        "missing labels.npy (layout images)",
    ),
    "label out of range": (
        lambda d: _with(_images(d), layouts.LABELS, np.array([0, 1, 2, 10])),
        "labels.npy: label 10 out of range for 10 classes",
    ),
    "wrong image size": (
        lambda d: _with(
            _images(d, shape=[1, 32, 32]), layouts.IMAGES, np.zeros((4, 32, 32), np.uint8)
        ),
        "images are [1, 32, 32] (C, H, W); dataset 'mnist' has [1, 28, 28]",
    ),
    "count differs": (lambda d: _images(d, count=5), "holds 4 images, the manifest says 5"),
    "pixels out of range": (
        lambda d: _with(_images(d), layouts.IMAGES, np.full((4, 1, 28, 28), 255, np.float32)),
        "float32 pixels must lie in [0, 1]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_a_folder_that_does_not_fit_is_one_line_naming_it(case, mnist, tmp_path):
    make, problem = BAD_FOLDERS[case]
    folder = make(tmp_path / "node")
    with pytest.raises(OwnDataError) as caught:
        client_data(mnist, _node(folder))
    message = str(caught.value)
    assert message.startswith(f"data folder {folder}: ") and problem in message
    assert "\n" not in message


def test_uint8_images_in_nhwc_are_scaled_and_transposed(mnist, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    folder = _with(_images(tmp_path / "u8", count=5, scale=256), layouts.IMAGES, pixels)
    np.save(folder / layouts.LABELS, np.array([9, 0, 1, 2, 3], dtype=np.uint8))
    own = client_data(mnist, _node(folder))
    assert own.x.dtype == torch.float32 and own.x.shape == (5, 1, 28, 28)
    assert torch.equal(own.x, torch.from_numpy(pixels.transpose(0, 3, 1, 2) / np.float32(256)))
    assert own.y.tolist() == [9, 0, 1, 2, 3] and own.y.dtype == torch.int64


def test_rotten_tomatoes_partition_round_trips_as_texts(tmp_path):
    exp = load_experiment(_toml(tmp_path, TEXT, "text"))
    folder = tmp_path / "texts"
    (done,) = export_partitions(exp, {2: folder})
    assert done.layout == "texts" and (folder / layouts.TEXTS).is_file()
    data = federated_image_data(exp.data, 4, 0)
    x, y = data.client(2)
    own = client_data(exp, _node(folder, 2))  # texts tokenised on the node, as fedsim does
    assert torch.equal(own.x, x) and torch.equal(own.y, y) and own.x.shape[1] == 32
    assert own.classes == ("rotten", "fresh") and own.vocab == data.vocab
    first = json.loads((folder / layouts.TEXTS).read_text().splitlines()[0])
    assert set(first) == {"text", "label"} and first["label"] in own.classes
    with pytest.raises(OwnDataError, match="holds texts data, but experiment 'own-mnist'"):
        client_data(load_experiment(_toml(tmp_path, MNIST, "m")), _node(folder))


def test_instruction_partition_round_trips_as_records(tmp_path):
    from fedsim_methods.fedit.config import fedit_of
    from fedsim_methods.fedit.instructions import federated_instructions

    exp = load_experiment(_toml(tmp_path, FEDIT, "fedit"))
    folder = tmp_path / "records"
    (done,) = export_partitions(exp, {1: folder})
    original = federated_instructions(exp.data, fedit_of(exp), 3, 0).client(1)
    assert done.count == len(original) > 0
    assert layouts.read_instructions(folder) == original
    assert client_records(exp, _node(folder, 1)) == original
    assert client_records(exp, Context(1, 1, {"partition-id": 1}, RecordDict(), {})) is None
    lines = (folder / layouts.RECORDS).read_text().splitlines()
    bad = json.loads(lines[0]) | {"output": 3}
    (folder / layouts.RECORDS).write_text("\n".join([json.dumps(bad), *lines[1:]]) + "\n")
    with pytest.raises(OwnDataError, match="records.jsonl line 1: output must be strings"):
        client_records(exp, _node(folder, 1))


def test_cli_export_writes_folders_and_refuses_a_non_empty_one(tmp_path, capsys):
    toml = _toml(tmp_path, MNIST, "mnist")
    out = tmp_path / "node0"
    assert run_cli(["datasets", "export", str(toml), "--partition", "0", "--out", str(out)]) == 0
    assert json.loads((out / layouts.MANIFEST).read_text())["layout"] == "images"
    assert "partition 0: " in capsys.readouterr().out
    before = (out / layouts.IMAGES).read_bytes()

    again = ["datasets", "export", str(toml), "--partition", "1", "--out", str(out)]
    assert run_cli(again) == 2
    assert f"error: {out}: exists and is not empty; add --force" in capsys.readouterr().err
    assert (out / layouts.IMAGES).read_bytes() == before  # refused: nothing written
    assert run_cli([*again, "--force"]) == 0
    assert json.loads((out / layouts.MANIFEST).read_text())["source"]["partition"] == 1

    root = tmp_path / "all"
    assert run_cli(["datasets", "export", str(toml), "--all", str(root)]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["partition-0", "partition-1", "partition-2"]
    assert run_cli(["datasets", "export", str(toml), "--partition", "3", "--out", "x"]) == 2
    assert "--partition: 3 is outside 0..2" in capsys.readouterr().err
    assert run_cli(["datasets", "export", str(toml)]) == 2


def test_data_paths_must_name_one_folder_per_client(tmp_path):
    toml = _toml(tmp_path, MNIST, "mnist")
    with pytest.raises(ConfigError, match="clients.data_paths: one folder per client"):
        load_experiment(toml, ["clients.data_paths=['a']"])
    with pytest.raises(ConfigError, match="flower-simulation gives nodes no per-node config"):
        load_experiment(toml, ["clients.data_paths=['a','b','c']", "run.backend=flower-simulation"])


def test_a_method_that_cannot_read_own_data_refuses_it(tmp_path, monkeypatch):
    from dataclasses import replace

    from flwr.app import ConfigRecord, Message
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.client_app import handle
    from fedsim.config.load import to_toml
    from fedsim.config.wire import CONFIG_KEY
    from fedsim.registry import methods

    exp = load_experiment(_toml(tmp_path, MNIST, "mnist"))
    monkeypatch.setitem(methods(), "fedavg", replace(methods()["fedavg"], own_data=False))
    with pytest.raises(ConfigError, match="method 'fedavg' cannot read a node's own data"):
        load_experiment(tmp_path / "mnist.toml", ["clients.data_paths=['a', '', '']"])
    # On a SuperNode the folder is in the node config only: the ClientApp refuses the call.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    config = ConfigRecord({CONFIG_KEY: to_toml(exp), "server-round": 1})
    msg = Message(RecordDict({"config": config}), 1, "train")
    with pytest.raises(OwnDataError, match="method 'fedavg' cannot train on a node's own data"):
        handle("train", msg, _node(tmp_path / "node0"))


def test_fedit_nodes_train_on_their_own_records_like_on_partitions(tiny_exp, tmp_path):  # noqa: F811
    """FedIT reads records through the same hook: exported partitions give the same run."""
    exp = tiny_exp(
        run={"rounds": 1, "checkpoint_every": 0},
        fedit={
            "max_steps": 1,
            "eval_generate_every": 0,
            "save_adapter": False,
            "eval_at_start": False,
        },
    )
    root = tmp_path / "nodes"
    export_partitions(exp, {k: partition_folder(root, k) for k in range(3)})
    paths = [str(partition_folder(root, k)) for k in range(3)]
    own_exp = exp.model_copy(
        update={"clients": exp.clients.model_copy(update={"data_paths": paths})}
    )
    normal, _ = run_experiment(exp, tmp_path / "normal")
    own, summary = run_experiment(own_exp, tmp_path / "own")
    assert summary["status"] == "completed" and _rows(own, "train")[0]["failures"] == 0
    assert (own / "metrics.jsonl").read_bytes() == (normal / "metrics.jsonl").read_bytes()
