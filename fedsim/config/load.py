"""Load an experiment TOML, apply ``--set`` overrides, validate, and explain errors in one line."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from fedsim.config.schema import Experiment, experiment_model
from fedsim.errors import UsageError


class ConfigError(UsageError, ValueError):
    """A config problem, already phrased for the user: ``FILE: KEY: what is wrong``."""


def parse_value(text: str) -> Any:
    """Read an override value as TOML (``3``, ``0.1``, ``true``, ``"x"``), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# Where one KEY=VALUE ends and the next begins: whitespace followed by "dotted.key=".
_NEXT_PAIR = re.compile(r"\s+(?=[A-Za-z_][\w.-]*=)")
_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")


def _is_toml_value(text: str) -> bool:
    try:
        tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return False
    return True


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["run.seed=3", "clients.num=50"]`` into ``{"run.seed": 3, "clients.num": 50}``.

    One item may hold several pairs (``"run.seed=3 clients.num=50"``); a value may hold
    spaces (``run.name=my run`` is one pair, as is ``lora.target_modules=["q", "v"]``).
    """
    out: dict[str, Any] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        _, _, rest = item.partition("=")
        one_value = _is_toml_value(rest.strip())  # x="a b=c" is one pair, not two
        for token in [item] if one_value else _NEXT_PAIR.split(item):
            key, sep, value = token.partition("=")
            if not sep or not _KEY.match(key.strip()):
                raise ConfigError(f"--set {token!r}: expected KEY=VALUE, e.g. run.seed=3")
            out[key.strip()] = parse_value(value.strip())
    return out


def _section_names() -> set[str]:
    """Top-level keys that are sections (tables) in the composed schema."""
    return {
        name
        for name, field in experiment_model().model_fields.items()
        if name != "method" and field.annotation is not str
    }


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """Set dotted keys in a nested dict; a path through a non-table is an error, and so is a
    value where a section belongs (``--set run=3``)."""
    for dotted, value in overrides.items():
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: {dotted}: '{part}' is a value, not a section")
            node = child
        is_section = isinstance(node.get(parts[-1]), dict) or (
            len(parts) == 1 and parts[0] in _section_names()
        )
        if is_section and not isinstance(value, dict):
            raise ConfigError(
                f"{source}: {dotted}: is a section; set one of its keys ({dotted}.KEY=VALUE)"
            )
        node[parts[-1]] = value
    return raw


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    # Model-level validators already lead with the key they are about.
    if not loc or msg.split(":")[0].strip() == loc or msg.startswith(loc):
        return msg
    received = error.get("input")
    if error["type"] not in ("missing",) and not isinstance(received, dict):
        return f"{loc}: {msg} (got {received!r})"
    return f"{loc}: {msg}"


# Keys that moved to a method's own section (layout v3): (old section, key) -> new section.
MOVED_KEYS = {
    ("strategy", "proximal_mu"): "fedprox",
    ("strategy", "eta"): "fedopt",
    ("strategy", "eta_l"): "fedopt",
    ("strategy", "beta_1"): "fedopt",
    ("strategy", "beta_2"): "fedopt",
    ("strategy", "tau"): "fedopt",
}


def refuse_moved_keys(raw: dict[str, Any], source: str) -> None:
    """An experiment file with a key that moved gets one line that names the new key."""
    for (section, key), new in MOVED_KEYS.items():
        table = raw.get(section)
        if isinstance(table, dict) and key in table:
            raise ConfigError(
                f"{source}: {section}.{key}: moved to [{new}] ({new}.{key} = {table[key]!r})"
            )


def migrate_moved_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """A run directory's config.toml written before the keys moved, in today's layout.

    Such a file lists every key (defaults too): a moved key goes to its new section where
    the run's method reads that section and the value is not the section's default, and is
    dropped otherwise, so an old run resumes and compares equal to the same run planned now.
    """
    from fedsim.registry import methods

    method = methods().get(str(raw.get("method", "fedavg")))
    sections = method.all_sections() if method is not None else {}
    for (section, key), new in MOVED_KEYS.items():
        table = raw.get(section)
        if not isinstance(table, dict) or key not in table:
            continue
        value = table.pop(key)
        model = sections.get(new)
        if model is None or model.model_fields[key].default == value:
            continue
        target = raw.setdefault(new, {})
        if isinstance(target, dict):
            target.setdefault(key, value)
    return raw


def validate(raw: dict[str, Any], source: str) -> Experiment:
    """Validate a raw dict; raise ConfigError naming the file and the first bad key."""
    from fedsim.registry import known_methods

    refuse_moved_keys(raw, source)
    method = raw.get("method", "fedavg")
    if isinstance(method, str) and method not in known_methods():
        # Said first: a method's own section would otherwise read as an unknown key.
        raise ConfigError(
            f"{source}: method: unknown method '{method}' (known: {', '.join(known_methods())};"
            " a method from another package appears once that package is installed)"
        )
    try:
        return experiment_model().model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
        raise ConfigError(f"{source}: {_describe(first)}{suffix}") from None


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None


def read_text(path: Path, what: str = "experiment file") -> str:
    """A UTF-8 text file, or a ConfigError that names it and says what is wrong."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def read_toml(path: Path) -> dict[str, Any]:
    return parse_toml(read_text(path), str(path))


def merge_tables(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of two TOML tables; the values of ``over`` win (tables merge key by key)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def read_experiment(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """An experiment file with its ``extends = "base.toml"`` chain merged in (child wins).

    The base path is relative to the file that names it. A base's ``run.name`` is dropped:
    a run is named after the file being run (its stem) unless that file names it itself.
    """
    raw = read_toml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: extends: expected the path of a TOML file (got {parent!r})")
    chain = (*_chain, path)
    base_path = Path(os.path.normpath(path.parent / parent))
    if any(base_path.resolve() == p.resolve() for p in chain):
        cycle = " -> ".join(str(p) for p in (*chain, base_path))
        raise ConfigError(f"{path}: extends: cycle {cycle}")
    if not base_path.exists():
        raise ConfigError(f"{path}: extends: no such base file {base_path}")
    if not base_path.is_file():
        kind = "a folder" if base_path.is_dir() else "not a regular file"
        raise ConfigError(f"{path}: extends: {base_path} is {kind}; name a TOML file")
    base = read_experiment(base_path, chain)
    if isinstance(base.get("run"), dict):
        base["run"] = {k: v for k, v in base["run"].items() if k != "name"}
    return merge_tables(base, raw)


def default_run_name(path: Path) -> str:
    """The file's stem as a folder name (characters a run name may not hold become '-')."""
    name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", path.stem).strip("-._+=")
    return name or "experiment"


def backend_hint(path: str | Path, overrides: dict[str, Any]) -> tuple[str, str | None] | None:
    """``(run.backend, run.ray_address)`` as the file chain and the overrides set them, read
    without validating and without importing any method (so without torch): ``fedsim run``
    starts Ray with it while the experiment loads. None where the file cannot be read; the
    real load reports why."""
    try:
        raw = read_experiment(Path(path))
    except (ConfigError, OSError, ValueError):
        return None
    run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
    backend = overrides.get("run.backend", run.get("backend", "inprocess"))
    address = overrides.get("run.ray_address", run.get("ray_address"))
    if not isinstance(backend, str) or not (address is None or isinstance(address, str)):
        return None
    return backend, address or None


def load_experiment(path: str | Path, overrides: Iterable[str] | dict[str, Any] = ()) -> Experiment:
    """The one entry point: file + overrides -> validated Experiment (or ConfigError)."""
    path = Path(path)
    raw = read_experiment(path)
    if not raw:
        raise ConfigError(
            f'{path}: the file sets nothing; write at least `method = "fedavg"` (see '
            "experiments/quickstart.toml)"
        )
    if not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    raw = apply_overrides(raw, overrides, str(path))
    raw.setdefault("run", {}).setdefault("name", default_run_name(path))
    return preflight(validate(raw, str(path)), str(path))


def preflight(exp: Experiment, source: str) -> Experiment:
    """Server-side checks that may read disk: the method's (e.g. a model's module names) and
    that ``[systems]``' trace files exist.

    Run where a user's file is loaded, before any run starts; never on clients, which
    parse the resolved config with ``from_toml``.
    """
    from fedsim.config.systems import check_trace_files
    from fedsim.registry import get_method

    try:
        check_trace_files(exp)
        get_method(exp.method).check_before_run(exp)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return exp


def to_toml(experiment: Experiment) -> str:
    """The resolved config as TOML text: written to the run directory and sent to clients."""
    return tomli_w.dumps(experiment.model_dump(mode="json", exclude_none=True))


def from_toml(text: str, source: str = "<resolved config>") -> Experiment:
    return validate(parse_toml(text, source), source)


RUN_CONFIG = "config.toml"


def load_run_config(run_dir: Path) -> Experiment:
    """The resolved config a run directory was started with (older layouts migrated)."""
    path = Path(run_dir) / RUN_CONFIG
    if not Path(run_dir).is_dir() or not path.exists():
        raise UsageError(f"{run_dir}: not a run directory (no {RUN_CONFIG})")
    raw = migrate_moved_keys(parse_toml(read_text(path, "run config"), str(path)))
    return validate(raw, str(path))


# Keys that say how a run is executed, not what it computes: a resume may change them.
# Like exchange_timeout, max_reply_mb is a guard a resume may tighten or loosen.
HOW_TO_RUN = ("name", "backend", "checkpoint_every", "tensorboard", "log_level", "node_wait",
              "exchange_timeout", "max_reply_mb", "ray_address", "ray_workers")  # fmt: skip


def config_fingerprint(exp: Experiment, *, with_defaults: bool = False) -> str:
    """sha256 of the resolved config without the ``run`` keys in ``HOW_TO_RUN``: two configs
    with the same fingerprint compute the same results (backends are byte-identical).

    Keys left at their defaults are not hashed, so a fedsim release that adds a key (whose
    default keeps the old behaviour) can still resume older runs. ``with_defaults``: the
    fingerprint earlier releases saved (every key hashed), still accepted on resume."""
    data = exp.model_dump(mode="json", exclude_none=True, exclude_defaults=not with_defaults)
    data["run"] = {k: v for k, v in data.get("run", {}).items() if k not in HOW_TO_RUN}
    return hashlib.sha256(tomli_w.dumps(data).encode()).hexdigest()
