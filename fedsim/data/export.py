"""``fedsim datasets export``: an experiment's client partitions as data folders.

A partition written here and read back by a node (node config ``data-path``) gives that
node exactly the examples, in the same order, that the partition gives it: images as the
float32 arrays fedsim trains on, texts as the raw strings (tokenised again on the node),
a method that partitions its own way through its ``Method.export_partition``
(FedIT's instruction records). So per-node folders for tests, demos or a real deployment
start from any experiment file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.data import layouts
from fedsim.errors import UsageError

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment


@dataclass(frozen=True)
class Exported:
    partition: int
    folder: Path
    layout: str
    count: int


def partition_folder(root: Path, partition: int) -> Path:
    """Where ``--all ROOT`` writes partition ``partition``."""
    return root / f"partition-{partition}"


def check_target(folder: Path, force: bool) -> None:
    """Refuse a file, or a non-empty folder unless ``force`` (then files are replaced)."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: exists and is not a folder")
    above = next((p for p in folder.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UsageError(f"{above}: is a file, not a folder to export into")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise UsageError(f"{folder}: exists and is not empty; add --force to overwrite it")


def export_partitions(
    exp: Experiment, targets: dict[int, Path], force: bool = False
) -> list[Exported]:
    """Write each partition id's data into its folder; every target is checked first, so a
    refused export writes nothing."""
    for pid in targets:
        if not 0 <= pid < exp.clients.num:
            raise UsageError(
                f"--partition: {pid} is outside 0..{exp.clients.num - 1} (clients.num)"
            )
    for folder in targets.values():
        check_target(folder, force)
    return [_export_one(exp, pid, folder) for pid, folder in sorted(targets.items())]


def _source(exp: Experiment, pid: int) -> dict:
    return {
        "exported-from": exp.run.name,
        "dataset": exp.data.dataset,
        "partitioner": exp.data.partitioner,
        "partition": pid,
        "num-partitions": exp.clients.num,
        "seed": exp.run.seed,
    }


def _export_one(exp: Experiment, pid: int, folder: Path) -> Exported:
    from fedsim.assets.datasets import task_of
    from fedsim.method import resolve
    from fedsim.registry import get_method

    task, source = task_of(exp.data.dataset), _source(exp, pid)
    own = get_method(exp.method).export_partition
    if own is not None:  # the method partitions its data its own way (FedIT's categories)
        layout, count = resolve(own)(exp, pid, folder, source)
        return Exported(pid, folder, layout, count)
    from fedsim.data.federated import federated_image_data

    data = federated_image_data(exp.data, exp.clients.num, exp.run.seed)
    rows = data.partitions[pid]
    _not_empty(rows, pid)
    x, y = data.client(pid)
    if task == "image-classification":
        layouts.write_images(folder, x.numpy(), y.numpy(), data.classes, source)
        return Exported(pid, folder, "images", len(y))
    from fedsim.data.sources import load_text_classification

    raw = load_text_classification(exp.data.dataset)
    assert data.text_rows is not None
    texts = [raw.texts_train[i] for i in data.text_rows[rows]]
    labels = [data.classes[i] for i in y.tolist()]
    layouts.write_texts(folder, texts, labels, data.classes, source)
    return Exported(pid, folder, "texts", len(texts))


def _not_empty(rows, pid: int) -> None:
    if len(rows) == 0:
        raise UsageError(f"partition {pid} holds no examples: nothing to export")
