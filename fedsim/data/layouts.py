"""fedsim's data-folder layouts (version 1): how a SuperNode's own data lies on disk.

A folder holds ``fedsim-data.json`` (the manifest: ``format``, ``version``, ``layout``,
``count`` and per layout ``classes``/``shape``) and the layout's files:

- ``images``: ``images.npy`` (float32 (N, C, H, W) in [0, 1], or uint8 (N, H, W) /
  (N, H, W, C) divided by the manifest's ``scale``, default 255) and ``labels.npy`` (integer
  (N,), indices into ``classes``);
- ``texts``: ``texts.jsonl``, one ``{"text": str, "label": class name}`` per line;
- ``instructions``: ``records.jsonl``, one ``{"instruction", "input", "output", "category"}``
  (plus an optional ``source``) per line: FedIT's records.

Readers check the folder itself (files, types, shapes, counts, labels against its own
classes) and raise ``OwnDataError`` naming the folder and what is wrong, in one line;
whether the folder fits an experiment is ``fedsim.data.client``'s business. Arrays are
read with ``allow_pickle=False``: a data folder never runs code. Writers replace the
manifest last, so a folder whose export was interrupted has none and is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.sources import InstructionRecord
from fedsim.errors import UsageError

MANIFEST = "fedsim-data.json"
FORMAT = "fedsim-data"
VERSION = 1
IMAGES, LABELS, TEXTS, RECORDS = "images.npy", "labels.npy", "texts.jsonl", "records.jsonl"
FILES = {"images": (IMAGES, LABELS), "texts": (TEXTS,), "instructions": (RECORDS,)}
RECORD_KEYS = ("instruction", "input", "output", "category")


class OwnDataError(UsageError, ValueError):
    """A data folder that cannot be used; the message names the folder."""

    def __init__(self, folder: Path | str, problem: str) -> None:
        super().__init__(f"data folder {folder}: {problem}")


@dataclass(frozen=True, eq=False)
class FolderImages:
    """x: float32 (N, C, H, W) in [0, 1]; y: int64 indices into ``classes``."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class FolderTexts:
    texts: list[str]
    y: np.ndarray  # int64 indices into ``classes``
    classes: tuple[str, ...]


# ------------------------------------------------------------------------------ reading


def read_manifest(folder: Path) -> dict[str, Any]:
    """The checked manifest of ``folder``: format, version, known layout, count, files."""
    if not folder.is_dir():
        raise OwnDataError(folder, "no such folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise OwnDataError(folder, f"no {MANIFEST} (not a fedsim data folder; see docs/data.md)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OwnDataError(folder, f"{MANIFEST} is not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OwnDataError(folder, f'{MANIFEST} lacks "format": "{FORMAT}"')
    version = manifest.get("version")
    if version != VERSION:
        raise OwnDataError(folder, f"layout version {version!r}; this fedsim reads {VERSION}")
    layout = manifest.get("layout")
    if layout not in FILES:
        raise OwnDataError(folder, f"unknown layout {layout!r} (known: {', '.join(FILES)})")
    count = manifest.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise OwnDataError(folder, f'"count" must be a positive integer (got {count!r})')
    for name in FILES[layout]:
        if not (folder / name).is_file():
            raise OwnDataError(folder, f"missing {name} (layout {layout})")
    if layout != "instructions":
        classes = manifest.get("classes")
        if (
            not isinstance(classes, list)
            or not classes
            or not all(isinstance(c, str) for c in classes)
        ):
            raise OwnDataError(folder, '"classes" must be a non-empty list of names')
        if len(set(classes)) != len(classes):
            raise OwnDataError(folder, '"classes" names a class twice')
    return manifest


def _npy(folder: Path, name: str) -> np.ndarray:
    try:
        return np.load(folder / name, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise OwnDataError(folder, f"{name} is not a readable .npy array ({exc})") from None


def read_images(folder: Path) -> FolderImages:
    """An ``images`` folder as float32 (N, C, H, W) in [0, 1] and int64 labels."""
    manifest = read_manifest(folder)
    _expect_layout(folder, manifest, "images")
    classes, count = tuple(manifest["classes"]), manifest["count"]
    shape = manifest.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_positive(s) for s in shape)):
        raise OwnDataError(folder, f'"shape" must be [C, H, W] (got {shape!r})')
    x, y = _npy(folder, IMAGES), _npy(folder, LABELS)
    x = _as_nchw(folder, x, tuple(shape), manifest.get("scale", 255))
    if len(x) != count:
        raise OwnDataError(folder, f"{IMAGES} holds {len(x)} images, the manifest says {count}")
    if y.shape != (count,) or y.dtype.kind not in "iu":
        raise OwnDataError(
            folder, f"{LABELS} must be integers of shape ({count},) (got {y.dtype} {y.shape})"
        )
    _labels_in_range(folder, y, len(classes), LABELS)
    return FolderImages(x, y.astype(np.int64), classes)


def _as_nchw(folder: Path, x: np.ndarray, shape: tuple[int, ...], scale: Any) -> np.ndarray:
    """float32 NCHW as stored, or uint8 NHW / NHWC divided by ``scale``."""
    c, h, w = shape
    if x.dtype == np.float32:
        if x.ndim != 4 or x.shape[1:] != shape:
            raise OwnDataError(
                folder, f"{IMAGES}: float32 images must be (N, {c}, {h}, {w}), got {x.shape}"
            )
        if not np.isfinite(x).all() or x.min(initial=0) < 0 or x.max(initial=0) > 1:
            raise OwnDataError(folder, f"{IMAGES}: float32 pixels must lie in [0, 1]")
        return np.ascontiguousarray(x)
    if x.dtype != np.uint8:
        raise OwnDataError(folder, f"{IMAGES}: dtype {x.dtype}; use uint8 or float32")
    fits = (x.ndim == 3 and c == 1 and x.shape[1:] == (h, w)) or (
        x.ndim == 4 and x.shape[1:] == (h, w, c)
    )
    if not fits:
        raise OwnDataError(
            folder, f"{IMAGES}: uint8 images must be (N, {h}, {w}, {c}) for shape "
            f"{list(shape)}, got {x.shape}",
        )  # fmt: skip
    if not (isinstance(scale, int | float) and not isinstance(scale, bool) and scale > 0):
        raise OwnDataError(folder, f'"scale" must be a positive number (got {scale!r})')
    nhwc = x.reshape(len(x), h, w, c)
    return np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(scale)


def read_texts(folder: Path) -> FolderTexts:
    """A ``texts`` folder: the texts and their labels as indices into ``classes``."""
    manifest = read_manifest(folder)
    _expect_layout(folder, manifest, "texts")
    classes = tuple(manifest["classes"])
    index = {c: i for i, c in enumerate(classes)}
    texts, labels = [], []
    for line_no, row in _jsonl(folder, TEXTS):
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str):
            raise OwnDataError(folder, f'{TEXTS} line {line_no}: "text" must be a string')
        if label not in index:
            raise OwnDataError(
                folder, f"{TEXTS} line {line_no}: label {label!r} is not one of {list(classes)}"
            )
        texts.append(text)
        labels.append(index[label])
    _count_matches(folder, TEXTS, len(texts), manifest["count"])
    return FolderTexts(texts, np.array(labels, dtype=np.int64), classes)


def read_instructions(folder: Path) -> list[InstructionRecord]:
    """An ``instructions`` folder as FedIT's records, in file order."""
    manifest = read_manifest(folder)
    _expect_layout(folder, manifest, "instructions")
    records = []
    for line_no, row in _jsonl(folder, RECORDS):
        bad = [k for k in RECORD_KEYS if not isinstance(row.get(k), str)]
        if bad:
            raise OwnDataError(
                folder, f"{RECORDS} line {line_no}: {', '.join(bad)} must be strings"
            )
        if not row["instruction"].strip() or not row["output"].strip():
            raise OwnDataError(folder, f"{RECORDS} line {line_no}: empty instruction or output")
        source = row.get("source", "own")
        records.append(
            InstructionRecord(
                row["category"], row["instruction"], row["input"], row["output"], str(source)
            )
        )
    _count_matches(folder, RECORDS, len(records), manifest["count"])
    return records


def _jsonl(folder: Path, name: str) -> Iterable[tuple[int, dict]]:
    try:
        with open(folder / name, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise OwnDataError(folder, f"{name} line {line_no}: not JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise OwnDataError(folder, f"{name} line {line_no}: not a JSON object")
                yield line_no, row
    except (OSError, UnicodeDecodeError) as exc:
        raise OwnDataError(folder, f"{name} is not readable UTF-8 text ({exc})") from None


def _expect_layout(folder: Path, manifest: dict, layout: str) -> None:
    if manifest["layout"] != layout:
        raise OwnDataError(folder, f"layout is {manifest['layout']}, expected {layout}")


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _labels_in_range(folder: Path, y: np.ndarray, num_classes: int, name: str) -> None:
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise OwnDataError(folder, f"{name}: label {bad} out of range for {num_classes} classes")


def _count_matches(folder: Path, name: str, have: int, count: int) -> None:
    if have != count:
        raise OwnDataError(folder, f"{name} holds {have} rows, the manifest says {count}")


# ------------------------------------------------------------------------------ writing


def write_images(
    folder: Path, x: np.ndarray, y: np.ndarray, classes: Sequence[str], source: dict
) -> None:
    """float32 (N, C, H, W) images in [0, 1] as written here read back bit for bit."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    extra = {"classes": list(classes), "shape": list(x.shape[1:])}
    _replace_npy(folder, IMAGES, x)
    _replace_npy(folder, LABELS, np.asarray(y, dtype=np.int64))
    _write_manifest(folder, "images", len(x), extra, source)


def write_texts(
    folder: Path, texts: Sequence[str], labels: Sequence[str], classes: Sequence[str], source: dict
) -> None:
    rows = ({"text": t, "label": lab} for t, lab in zip(texts, labels, strict=True))
    _replace_jsonl(folder, TEXTS, rows)
    _write_manifest(folder, "texts", len(texts), {"classes": list(classes)}, source)


def write_instructions(folder: Path, records: Sequence[InstructionRecord], source: dict) -> None:
    rows = (
        {
            "instruction": r.instruction,
            "input": r.input,
            "output": r.output,
            "category": r.category,
            "source": r.source,
        }
        for r in records
    )
    _replace_jsonl(folder, RECORDS, rows)
    _write_manifest(folder, "instructions", len(records), {}, source)


def _start(folder: Path) -> None:
    """Create the folder and drop an old manifest first: a half-written folder is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)


def _replace_npy(folder: Path, name: str, array: np.ndarray) -> None:
    _start(folder)
    tmp = folder / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, folder / name)


def _replace_jsonl(folder: Path, name: str, rows: Iterable[dict]) -> None:
    _start(folder)
    tmp = folder / f".{name}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, folder / name)


def _write_manifest(folder: Path, layout: str, count: int, extra: dict, source: dict) -> None:
    manifest = {"format": FORMAT, "version": VERSION, "layout": layout, "count": count}
    manifest.update(extra)
    manifest["source"] = source
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
