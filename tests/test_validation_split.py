"""``data.validation_share`` holds rows of the training split out of every client, and
``data.test_split = "validation"`` makes the server evaluate on them: hyper-parameters are
chosen without looking at the test split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.config import ConfigError, load_experiment
from fedsim.config.schema import DataConfig
from fedsim.data.federated import federated_image_data


def _rows_of(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


@pytest.mark.parametrize("dataset", ["mnist", "rotten_tomatoes"])
def test_validation_rows_are_held_out_of_every_client(dataset):
    base = {"dataset": dataset, "max_train_samples": 400, "max_length": 16}
    plain = federated_image_data(DataConfig(**base), 4, seed=3)
    held = federated_image_data(DataConfig(**base, validation_share=0.25), 4, seed=3)
    valid = federated_image_data(
        DataConfig(**base, validation_share=0.25, test_split="validation"), 4, seed=3
    )
    assert len(plain.y_train) == 400 and len(held.y_train) == 300
    # the server's evaluation set: the test split, or the 100 held-out training rows
    assert torch.equal(held.x_test, plain.x_test)
    assert len(valid.y_test) == 100 and not torch.equal(valid.x_test[:5], plain.x_test[:5])
    # the clients train on exactly the same rows whichever set the server evaluates on
    for pid in range(4):
        assert torch.equal(valid.client(pid)[0], held.client(pid)[0])
    clients = _rows_of(torch.cat([held.client(pid)[0] for pid in range(4)]))
    validation = _rows_of(valid.x_test)
    assert sum(len(p) for p in held.partitions) == 300
    assert _rows_of(plain.x_train) >= validation  # drawn from the same 400-row slice
    if dataset == "mnist":  # distinct images; short texts may repeat as token ids
        assert not clients & validation
    again = federated_image_data(
        DataConfig(**base, validation_share=0.25, test_split="validation"), 4, seed=3
    )
    assert torch.equal(again.x_test, valid.x_test)  # seeded
    other = federated_image_data(
        DataConfig(**base, validation_share=0.25, test_split="validation"), 4, seed=4
    )
    assert not torch.equal(other.y_test, valid.y_test) or not torch.equal(
        other.x_test, valid.x_test
    )
    assert np.isin(valid.y_test.numpy(), np.arange(valid.num_classes)).all()


def test_validation_without_held_out_rows_is_refused(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text('[run]\nname = "v"\n[data]\ndataset = "mnist"\ntest_split = "validation"\n')
    with pytest.raises(ConfigError, match="data.test_split: 'validation' needs"):
        load_experiment(path)
