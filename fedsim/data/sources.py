"""Typed readers over prepared assets: images, text classification, instructions.

Each reader calls ``fetch`` first (a no-op once prepared), applies the manifest's split
rule, and is cached per process: clients call them every round, and 1,000 virtual clients
must share one copy of the data. The returned arrays are shared, so do not modify them.
Prepared files are read inside ``reading_prepared``: a damaged one is an AssetError naming
the file and the repair command, not a bare BadZipFile or JSONDecodeError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedsim.assets.convert import IMAGES, PROMPTS, RECORDS, TEXTS, layout_of
from fedsim.assets.fetch import fetch, reading_prepared
from fedsim.assets.manifest import AssetError, Manifest, Splits, load_manifest


@dataclass(frozen=True, eq=False)
class ImageData:
    """x: float32 (N, C, H, W) in [0, 1]; y: int64 indices into ``classes``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True, eq=False)
class TextData:
    """Raw texts (tokenise per model) with int64 labels indexing ``classes``."""

    texts_train: list[str]
    y_train: np.ndarray
    texts_test: list[str]
    y_test: np.ndarray
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True, slots=True)
class InstructionRecord:
    """One instruction-tuning example; ``category`` drives non-IID client partitions and
    ``source`` says where it came from (file or subtask id)."""

    category: str
    instruction: str
    input: str
    output: str
    source: str


def _prepared(name: str, layout: str, reader: str) -> tuple[Manifest, Path]:
    manifest = load_manifest(name)
    have = layout_of(manifest)
    if manifest.kind != "dataset" or have != layout:
        raise AssetError(
            f"asset '{name}': {reader} needs {layout} data, but it is a {manifest.kind} "
            f"with format '{manifest.format}' ({have})"
        )
    return manifest, fetch(name)


def stratified_split(y: np.ndarray, splits: Splits) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split -> sorted (train, test) row indices. Classes are visited in
    sorted order with one generator, so the result depends only on labels and seed."""
    rng = np.random.default_rng(splits.seed)
    test = []
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        if splits.test_per_class is not None:
            n_test = splits.test_per_class
        else:
            n_test = round(float(splits.test_fraction or 0.0) * len(rows))
        if not 0 < n_test < len(rows):
            raise ValueError(f"class {label}: {n_test} test rows out of {len(rows)}")
        test.append(rng.permutation(rows)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(y)), test_idx), test_idx


def _split(name: str, splits: Splits, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if splits.rule != "stratified":
        raise AssetError(f"asset '{name}': split rule '{splits.rule}' gives no test set")
    try:
        return stratified_split(y, splits)
    except ValueError as exc:
        raise AssetError(f"asset '{name}': cannot split: {exc}") from None


def scale_images(x: np.ndarray, divisor: float) -> np.ndarray:
    """Stored pixels (uint8 as prepared) to float32 in [0, 1]: the one conversion, so rows
    scaled one client at a time equal the same rows of the whole array scaled at once."""
    out = x.astype(np.float32)
    out /= np.float32(divisor)  # in place: x / divisor's values, without a second copy
    return out


@dataclass(frozen=True, eq=False)
class StoredImages:
    """Images as prepared on disk (uint8 for every built-in dataset), split as the manifest
    says; ``scale_images(x, divisor)`` gives ``ImageData``'s float32. A quarter of the memory:
    what a process that serves many clients keeps."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    divisor: float


def load_stored_images(name: str) -> StoredImages:
    """Uncached: the caller keeps what it needs (``fedsim.data.federated``)."""
    manifest, folder = _prepared(name, "images", "load_image_classification")
    with reading_prepared(name, folder / IMAGES) as path, np.load(path) as z:
        parts = [str(p) for p in z["parts"]]
        divisor = float(np.float32(z["divisor"]))
        xs = {p: z[f"x_{p}"] for p in parts}
        ys = {p: z[f"y_{p}"].astype(np.int64) for p in parts}

    splits = manifest.splits
    if splits.rule == "given":
        missing = sorted(set(splits.train + splits.test) - set(parts))
        if missing:
            raise AssetError(f"asset '{name}': split parts {missing} not in {parts}")
        x_tr, x_te = (np.concatenate([xs[p] for p in sel]) for sel in (splits.train, splits.test))
        y_tr, y_te = (np.concatenate([ys[p] for p in sel]) for sel in (splits.train, splits.test))
    else:
        x_all, y_all = np.concatenate(list(xs.values())), np.concatenate(list(ys.values()))
        train, test = _split(name, splits, y_all)
        x_tr, y_tr, x_te, y_te = x_all[train], y_all[train], x_all[test], y_all[test]
    return StoredImages(x_tr, y_tr, x_te, y_te, list(manifest.classes), divisor)


@lru_cache(maxsize=8)
def load_image_classification(name: str) -> ImageData:
    """Images as float32 (N, C, H, W) in [0, 1], split as the manifest says."""
    raw = load_stored_images(name)
    return ImageData(
        scale_images(raw.x_train, raw.divisor),
        raw.y_train,
        scale_images(raw.x_test, raw.divisor),
        raw.y_test,
        raw.classes,
    )


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@lru_cache(maxsize=8)
def load_text_classification(name: str) -> TextData:
    """Labelled texts, split as the manifest says (seeded, stratified)."""
    manifest, folder = _prepared(name, "texts", "load_text_classification")
    index = {c: i for i, c in enumerate(manifest.classes)}
    with reading_prepared(name, folder / TEXTS) as path:
        rows = _read_jsonl(path)
        texts = [r["text"] for r in rows]
        y = np.array([index[r["label"]] for r in rows], dtype=np.int64)
    train, test = _split(name, manifest.splits, y)
    return TextData(
        texts_train=[texts[i] for i in train],
        y_train=y[train],
        texts_test=[texts[i] for i in test],
        y_test=y[test],
        classes=list(manifest.classes),
    )


@lru_cache(maxsize=4)
def _instructions(name: str) -> tuple[InstructionRecord, ...]:
    _, folder = _prepared(name, "instructions", "load_instructions")
    prompts = {}
    if (folder / PROMPTS).is_file():
        with reading_prepared(name, folder / PROMPTS) as path:
            prompts = json.loads(path.read_text(encoding="utf-8"))
    out = []
    with reading_prepared(name, folder / RECORDS) as path, open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            instruction = r.get("instruction")
            if instruction is None:
                instruction = prompts[r["source"]]  # shared string: one copy per subtask
            out.append(
                InstructionRecord(r["category"], instruction, r["input"], r["output"], r["source"])
            )
    return tuple(out)


def load_instructions(name: str) -> list[InstructionRecord]:
    """All records of an instruction dataset, in file order (a fresh list each call; the
    records themselves are shared and immutable)."""
    return list(_instructions(name))
