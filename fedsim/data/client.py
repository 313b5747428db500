"""Where a client's data comes from: the one place every method's client handlers ask.

By default a client holds partition ``partition-id`` of the experiment's dataset. A node
whose config has ``data-path`` (``flower-supernode --node-config 'partition-id=0
data-path="/data/site0"'``, or ``clients.data_paths`` in simulation) reads that folder
instead (``fedsim.data.layouts``); its partition id then only names the node (seeds, order,
traffic rows). Such a node never loads the global dataset: the classes and the image shape
it is checked against come from the dataset's manifest in ``datasets/``, texts are
tokenised here exactly as fedsim tokenises the dataset. A folder that does not fit the
experiment raises ``OwnDataError``, which fails that client's call with a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context

from fedsim.config.schema import Experiment
from fedsim.data.layouts import (
    FILES,
    MANIFEST,
    OwnDataError,
    read_images,
    read_instructions,
    read_manifest,
    read_texts,
)
from fedsim.data.sources import InstructionRecord
from fedsim.text import Vocabulary

DATA_PATH = "data-path"  # node-config key
LAYOUT_OF_TASK = {
    "image-classification": "images",
    "text-classification": "texts",
    "instructions": "instructions",
}


@dataclass(frozen=True, eq=False)
class ClientData:
    """A client's training examples and what its model is built from."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    vocab: Vocabulary | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def data_path(context: Context) -> Path | None:
    """The node's own data folder, or None when it serves a partition."""
    value = context.node_config.get(DATA_PATH)
    return Path(str(value)).expanduser() if value not in (None, "") else None


def client_data(exp: Experiment, context: Context) -> ClientData:
    """This client's (x, y) for an image or text experiment, from its folder or partition."""
    folder = data_path(context)
    if folder is None:
        from fedsim.data.federated import federated_image_data

        data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
        x, y = data.client(int(context.node_config["partition-id"]))
        return ClientData(x, y, data.classes, data.input_shape, data.vocab)
    task, classes = _expected(exp, folder)
    stamp = folder_stamp(folder)
    if task == "image-classification":
        images = _images(str(folder), stamp)
        _same_classes(folder, images.classes, classes, exp.data.dataset)
        shape = _image_shape(exp.data.dataset)
        if shape is not None and tuple(images.x.shape[1:]) != shape:
            raise OwnDataError(
                folder,
                f"images are {list(images.x.shape[1:])} (C, H, W); dataset "
                f"'{exp.data.dataset}' has {list(shape)}",
            )
        x, y = torch.from_numpy(images.x), torch.from_numpy(images.y)
        return ClientData(x, y, classes, tuple(images.x.shape[1:]))
    from fedsim.text import vocabulary

    ids, y, have = _texts(str(folder), stamp, exp.data.max_length)
    _same_classes(folder, have, classes, exp.data.dataset)
    ids_t = torch.from_numpy(ids)
    return ClientData(ids_t, torch.from_numpy(y), classes, (exp.data.max_length,), vocabulary())


def warm_client_data(exp: Experiment) -> None:
    """Load the experiment's partitioned dataset into this process's cache, as the first
    ``client_data`` call would (nothing to do when every node has its own folder)."""
    from fedsim.assets.datasets import task_of

    if exp.clients.data_paths and all(exp.clients.data_paths):
        return
    if task_of(exp.data.dataset) in ("image-classification", "text-classification"):
        from fedsim.data.federated import federated_image_data

        federated_image_data(exp.data, exp.clients.num, exp.run.seed)


def client_records(exp: Experiment, context: Context) -> list[InstructionRecord] | None:
    """The node's own instruction records, or None when it serves a partition."""
    folder = data_path(context)
    if folder is None:
        return None
    _expected(exp, folder)
    return list(_records(str(folder), folder_stamp(folder)))


def own_data_key(context: Context) -> str | None:
    """A cache key for the node's folder as it is now (path + file stamps), or None."""
    folder = data_path(context)
    return None if folder is None else f"{folder.resolve()}|{folder_stamp(folder)}"


def folder_stamp(folder: Path) -> tuple:
    """(name, size, mtime) of the manifest and data files: a rewritten folder is read
    again by long-lived processes (Ray workers) instead of served from their cache."""
    read_manifest(folder)  # a missing or broken folder fails here, with its reason
    stamp = []
    for name in (MANIFEST, *sorted({f for files in FILES.values() for f in files})):
        path = folder / name
        if path.is_file():
            st = path.stat()
            stamp.append((name, st.st_size, st.st_mtime_ns))
    return tuple(stamp)


def _expected(exp: Experiment, folder: Path) -> tuple[str, tuple[str, ...]]:
    """(task, dataset classes); refuses a folder whose layout is not the task's."""
    from fedsim.assets.datasets import task_of
    from fedsim.assets.manifest import load_manifest

    task = task_of(exp.data.dataset)
    layout = read_manifest(folder)["layout"]
    want = LAYOUT_OF_TASK.get(task)
    if layout != want:
        raise OwnDataError(
            folder,
            f"holds {layout} data, but experiment '{exp.run.name}' trains on {want or task} "
            f"(dataset '{exp.data.dataset}')",
        )
    return task, tuple(load_manifest(exp.data.dataset).classes)


def _image_shape(dataset: str) -> tuple[int, ...] | None:
    """The dataset's (C, H, W), from its manifest's ``info.input_shape``."""
    from fedsim.assets.manifest import load_manifest

    shape = load_manifest(dataset).info.get("input_shape")
    return tuple(int(s) for s in shape) if shape else None


def _same_classes(folder: Path, have: tuple[str, ...], want: tuple[str, ...], dataset: str):
    if tuple(have) != tuple(want):
        raise OwnDataError(
            folder, f"classes {list(have)} differ from dataset '{dataset}': {list(want)}"
        )


# Cached per process by (folder, file stamps): every round's calls share one read.
@lru_cache(maxsize=8)
def _images(folder: str, stamp: tuple) -> Any:
    return read_images(Path(folder))


@lru_cache(maxsize=8)
def _texts(folder: str, stamp: tuple, max_length: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    from fedsim.text import token_ids

    texts = read_texts(Path(folder))
    return token_ids(texts.texts, max_length), texts.y, texts.classes


@lru_cache(maxsize=8)
def _records(folder: str, stamp: tuple) -> tuple[InstructionRecord, ...]:
    return tuple(read_instructions(Path(folder)))


def node_configs(exp: Experiment) -> list[dict[str, Any]]:
    """Simulation: the extra node config of each partition (``clients.data_paths``)."""
    paths = exp.clients.data_paths
    return [{DATA_PATH: str(Path(p).expanduser().resolve())} if p else {} for p in paths]
