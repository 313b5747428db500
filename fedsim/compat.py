"""Private patches of other libraries, each pinned to what it was written and tested against.

fedsim changes two libraries' private internals for speed (docs/engine.md, "Patches"):
torch.optim's compiler marks (``fedsim.lazy_dynamo``: 2 s and 70 MB per training process)
and Ray's local head (``fedsim.backends.ray_lean``: 285 MB and up to 2 s per run). Neither
changes a number. Each applies only where

- the installed distribution's version is in the range it was tested on, and
- the source text of every function it replaces or relies on is the one it was written
  against (a sha256 of ``inspect.getsource``, the same on every Python version),

and otherwise leaves the library alone, with one debug line saying why: a new torch or Ray
then runs as it comes, just slower, instead of running a patch that no longer fits it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

log = logging.getLogger("fedsim")


@dataclass(frozen=True)
class Pin:
    """One patch: the distribution and versions it was tested on, and the objects (dotted
    ``module:qualname``) whose source it was written against, with their fingerprint."""

    name: str
    distribution: str
    versions: str
    objects: tuple[str, ...]
    fingerprint: str
    why: str


PINS: dict[str, Pin] = {
    pin.name: pin
    for pin in (
        Pin(
            name="lazy-dynamo",
            distribution="torch",
            versions=">=2.13,<2.14",
            objects=("torch:_disable_dynamo", "torch.optim.optimizer:_use_grad_for_differentiable"),
            fingerprint="3d6590d01eb40497",
            why="torch.optim imports torch._dynamo only to mark what not to trace",
        ),
        Pin(
            name="ray-lean-head",
            distribution="ray",
            versions=">=2.55,<2.56",
            objects=(
                "ray._private.parameter:RayParams.__init__",
                "ray._private.node:Node.start_api_server",
            ),
            fingerprint="8c563b0e38b7c4d4",
            why="ray.init starts a monitor, a log monitor and an API server fedsim never uses",
        ),
        Pin(
            name="flwr-array-codec",
            distribution="flwr",
            versions=">=1.41,<1.43",
            objects=(
                "flwr.app.message.array:Array.from_numpy_ndarray",
                "flwr.app.message.array:Array.numpy",
            ),
            fingerprint="65988575ad949e4a",
            why="Array parses its .npy header with np.load on every read",
        ),
    )
}


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _resolve(ref: str) -> object:
    module, _, qualname = ref.partition(":")
    target: object = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def source_fingerprint(objects: tuple[str, ...]) -> str:
    """sha256 (16 hex digits) of the source text of ``objects``, in order."""
    digest = hashlib.sha256()
    for ref in objects:
        digest.update(inspect.getsource(_resolve(ref)).encode())
    return digest.hexdigest()[:16]


def refusal(pin: Pin, version_of: Callable[[str], str | None] | None = None) -> str | None:
    """Why ``pin`` must not apply here, or None when it may."""
    version = (version_of or installed_version)(pin.distribution)
    if version is None:
        return f"{pin.distribution} is not installed"
    try:
        tested = Version(version) in SpecifierSet(pin.versions)
    except InvalidVersion:
        tested = False
    if not tested:
        return f"{pin.distribution} {version} is outside the tested {pin.versions}"
    try:
        found = source_fingerprint(pin.objects)
    except (ImportError, AttributeError, OSError, TypeError) as exc:
        return f"cannot read {', '.join(pin.objects)} ({type(exc).__name__})"
    if found != pin.fingerprint:
        return f"{pin.distribution} {version}'s code differs from the patched one ({found})"
    return None


@cache
def may_patch(name: str) -> bool:
    """Whether patch ``name`` applies here; a refusal is logged once, at debug level."""
    pin = PINS[name]
    why = refusal(pin)
    if why is not None:
        log.debug("fedsim: patch '%s' not applied: %s (%s)", name, why, pin.why)
    return why is None


def set_message_id(message, message_id: str) -> None:
    """Give a Flower ``Message`` its id, as a SuperLink would when it stores the message.

    Flower's ``Metadata`` exposes ``message_id`` read-only; fedsim's own grids (in-process,
    Ray) assign ids the way a SuperLink does, through its private attribute (Flower 1.41-1.42,
    the range ``pyproject.toml`` allows). The one place fedsim writes it.
    """
    message.metadata.__dict__["_message_id"] = message_id
