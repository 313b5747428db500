"""Which methods exist: every ``Method`` registered under the ``fedsim.methods`` entry points.

fedsim's own methods are declared in its ``pyproject.toml`` exactly like a plugin's::

    [project.entry-points."fedsim.methods"]
    fedavg = "fedsim_methods.strategies.baselines:FEDAVG"

The registry is read once per process (the CLI, a Ray worker, a SuperNode's ClientApp), so
an installed plugin is visible everywhere the package is installed.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib.metadata import entry_points

from pydantic import BaseModel

from fedsim.errors import FedsimError
from fedsim.method import Method

GROUP = "fedsim.methods"
# The engine's own top-level sections; methods cannot redefine them.
CORE_SECTIONS = ("run", "data", "model", "strategy", "client", "clients", "eval", "privacy")
log = logging.getLogger("fedsim")


class RegistryError(FedsimError, RuntimeError):
    """A broken method declaration (bad entry point, clashing names or sections)."""


@lru_cache(maxsize=1)
def methods() -> dict[str, Method]:
    """Name -> Method, sorted by name; broken plugins are an error that names them."""
    found: dict[str, Method] = {}
    for ep in entry_points(group=GROUP):
        try:
            method = ep.load()
        except Exception as exc:  # a plugin that fails to import must say which one
            raise RegistryError(
                f"method plugin '{ep.name}' ({ep.value}) failed to load: {exc}"
            ) from exc
        if not isinstance(method, Method):
            raise RegistryError(f"entry point '{ep.name}' ({ep.value}) is not a fedsim Method")
        if method.name != ep.name:
            raise RegistryError(
                f"entry point '{ep.name}' declares a method named '{method.name}'; "
                "the two names must agree"
            )
        if method.name in found and found[method.name] is not method:
            raise RegistryError(f"two packages register a method named '{method.name}'")
        found[method.name] = method
    if not found:
        raise RegistryError(
            "no methods registered: is fedsim installed (`pip install -e .` / `make setup`)?"
        )
    _check_sections(found)
    _check_streams(found)
    return dict(sorted(found.items()))


def _check_sections(found: dict[str, Method]) -> None:
    owners: dict[str, type[BaseModel]] = {}
    for method in found.values():
        for name, model in method.all_sections().items():
            if name in CORE_SECTIONS:
                raise RegistryError(
                    f"method '{method.name}' declares a section '[{name}]' that the engine owns"
                )
            if owners.setdefault(name, model) is not model:
                raise RegistryError(
                    f"section '[{name}]' is declared with two different schemas "
                    f"(method '{method.name}' and another)"
                )


def _check_streams(found: dict[str, Method]) -> None:
    """No two random streams (the engine's, each method's) share a purpose number."""
    from fedsim.seeding import ENGINE_STREAMS

    owner = {number: f"the engine's '{name}'" for name, number in ENGINE_STREAMS.items()}
    for method in found.values():
        for name, number in method.streams.items():
            claimed = owner.setdefault(number, f"method '{method.name}''s '{name}'")
            if claimed != f"method '{method.name}''s '{name}'":
                raise RegistryError(
                    f"method '{method.name}' declares stream '{name}' = {number}, already {claimed}"
                )


def known_methods() -> list[str]:
    return list(methods())


def get_method(name: str) -> Method:
    try:
        return methods()[name]
    except KeyError:
        raise KeyError(f"unknown method '{name}' (known: {', '.join(methods())})") from None


def method_sections() -> dict[str, type[BaseModel]]:
    """Every method section by name (the schema gets one optional field per section)."""
    out: dict[str, type[BaseModel]] = {}
    for method in methods().values():
        out.update(method.all_sections())
    return dict(sorted(out.items()))


def users_of(section: str) -> list[str]:
    """The methods that read ``[section]`` (for error messages)."""
    return [m.name for m in methods().values() if section in m.all_sections()]


_generation = 0


def generation() -> int:
    """How many times the registry was reloaded: caches built from it key on this."""
    return _generation


def reload() -> None:
    """Forget what was discovered (after installing a plugin in a running process)."""
    global _generation
    methods.cache_clear()
    _generation += 1
