"""Build ``.device/``: what a GPU machine lent here lacks to run ``bench/device/gpu-check``.

Those machines (``/work/.library/device``) have Python 3.12, a CUDA torch, transformers,
peft, accelerate, numpy, rich, typer, psutil, aiohttp, grpcio, protobuf and more, but
nothing can be installed there from an index, and one call takes at most 64 MiB of files.
So ``.device/`` (git-ignored, named in the call's ``carry``) holds:
- ``wheels/``: the distributions fedsim's FedIT and Ray paths import that the machine's
  image lacks (``MISSING``, found by diffing the modules a FedIT run on Ray imports against
  the image's package list), at this venv's versions, for the machine's Python. Ray's
  wheel (74 MB) is carried without its Java jars (30 MB, unused from Python).
- ``smollm2-135m-config/``: SmolLM2-135M-Instruct's config and tokenizer, not its 540 MB of
  weights: the GPU checks draw seeded random ones (``fedsim_methods.fedit.random_model``).
- ``cache/chatterbot/``: the prepared chatterbot asset (``FEDSIM_CACHE=.device/cache``).
Usage: .venv/bin/python bench/device/bundle.py [--python 3.12]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DEST = ROOT / ".device"
LIMIT_MB = 60  # of the call's 64 MiB: the repository's own files travel too
MISSING = [
    "annotated-types", "cffi", "cryptography", "dill", "flwr", "grpcio-health-checking",
    "iterators", "jsonschema", "jsonschema-specifications", "pycryptodome", "pydantic",
    "pydantic-core", "ray", "referencing", "rpds-py", "tomli-w", "typing-inspection",
    "wcwidth",
]  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]  # fmt: skip


def download(python: str, wheels: Path) -> None:
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in MISSING]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", python, "--implementation", "cp", *platforms,
         "-d", str(wheels), *pins],
        check=True,
    )  # fmt: skip


def without_jars(wheel: Path) -> None:
    """Ray's wheel less ``ray/jars/`` (and their RECORD lines), in place."""
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename.startswith("ray/jars/"):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "\n".join(ln for ln in lines if not ln.startswith("ray/jars/")).encode()
            dst.writestr(item, data)
    slim.replace(wheel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python version")
    args = parser.parse_args()
    from fedsim.assets import fetch

    shutil.rmtree(DEST, ignore_errors=True)
    wheels = DEST / "wheels"
    download(args.python, wheels)
    for wheel in wheels.glob("ray-*.whl"):
        without_jars(wheel)
    model = DEST / "smollm2-135m-config"
    model.mkdir(parents=True)
    for item in fetch("smollm2-135m-instruct").iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            shutil.copy2(item, model / item.name)
    shutil.copytree(fetch("chatterbot"), DEST / "cache" / "chatterbot")
    size = sum(f.stat().st_size for f in DEST.rglob("*") if f.is_file()) / 2**20
    print(f"{DEST}: {size:.1f} MB")
    if size > LIMIT_MB:
        raise SystemExit(f"{DEST} is {size:.1f} MB: more than a device call carries")


if __name__ == "__main__":
    main()
