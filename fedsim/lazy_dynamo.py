"""Keep torch.optim from importing torch's compiler (``torch._dynamo``) when nothing compiles.

torch.optim imports ``torch._dynamo`` the first time an optimiser is built or steps, only
to tell the compiler where not to trace: ``Optimizer.add_param_group``, ``state_dict``,
``load_state_dict`` and ``zero_grad`` are wrapped by ``torch._disable_dynamo``, and every
built-in optimiser's ``step`` by ``_use_grad_for_differentiable``, which calls
``torch._dynamo.graph_break()`` (a no-op outside tracing). That import costs 1.8-2.7 s and
about 70 MB in every process that trains (measured on 2 cores, torch 2.13): the driver and
each Ray worker. Nothing can trace before ``torch._dynamo`` is imported, so until it is,
these methods run without the marks; once it is (a ``torch.compile`` anywhere), they
defer to torch's own wrappers, exactly as torch would have run them. Each replacement is
made only on the torch versions it was tested on, where the wrappers' source is the one it
was written against (``fedsim.compat``), and only where torch's wrapper is that very code
object: a different torch gets its own behaviour untouched.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from fedsim.compat import may_patch

_INSTALLED = False


def _deferred(fn: Callable, recursive: bool) -> Callable:
    def call(*args, **kwargs):
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        import torch._dynamo

        disabled = torch._dynamo.disable(fn, recursive, wrapping=False)
        fn.__dynamo_disable = disabled  # what torch's wrapper would have cached
        return disabled(*args, **kwargs)

    return call


def _deferred_step(use_grad: Callable) -> Callable:
    """``_use_grad_for_differentiable(step)`` without its two graph breaks until dynamo
    is loaded (``use_grad``: torch's wrapper, whose ``__wrapped__`` is the raw step)."""
    import torch

    step = use_grad.__wrapped__

    @functools.wraps(step)
    def call(*args, **kwargs):
        if "torch._dynamo" in sys.modules:
            return use_grad(*args, **kwargs)
        previous = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(args[0].defaults["differentiable"])
            return step(*args, **kwargs)
        finally:
            torch.set_grad_enabled(previous)

    return call


def defer_dynamo_import() -> None:
    """Install the deferrals on ``torch.optim`` (idempotent; before any optimiser is built,
    as the first one wraps its class's ``step`` in a profiling hook)."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    if "torch._dynamo" in sys.modules or not may_patch("lazy-dynamo"):
        return  # dynamo is there already, or this torch is not the one tested (fedsim.compat)
    import torch
    from torch.optim import optimizer

    disable_code = torch._disable_dynamo(lambda: None).__code__  # torch's wrappers' code
    for member in vars(optimizer.Optimizer).values():
        inner = getattr(member, "__wrapped__", None)
        if inner is None or getattr(member, "__code__", None) is not disable_code:
            continue
        if getattr(inner, "__dynamo_disable", None) is None:
            recursive = _closure_value(member, "recursive", default=True)
            inner.__dynamo_disable = _deferred(inner, recursive)
    use_grad_code = optimizer._use_grad_for_differentiable(lambda self: None).__code__
    for cls in _subclasses(optimizer.Optimizer):
        step = cls.__dict__.get("step")
        if getattr(step, "__code__", None) is use_grad_code and hasattr(step, "__wrapped__"):
            cls.step = _deferred_step(step)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _closure_value(fn: Callable, name: str, default):
    names = fn.__code__.co_freevars
    if name in names and fn.__closure__:
        return fn.__closure__[names.index(name)].cell_contents
    return default
