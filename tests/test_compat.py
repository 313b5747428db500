"""fedsim.compat: each private patch applies only on the versions and the code it was
written against, and leaves the library alone elsewhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedsim import compat


def test_every_patch_applies_on_the_pinned_stack():
    """The stack constraints.txt installs is the one each patch was tested on."""
    for name, pin in compat.PINS.items():
        assert compat.refusal(pin) is None, name
        assert compat.may_patch(name)


@pytest.mark.parametrize("name", sorted(compat.PINS))
def test_an_unknown_version_or_changed_code_is_refused(name, monkeypatch):
    pin = compat.PINS[name]
    why = compat.refusal(pin, version_of=lambda dist: "99.0.0")
    assert why == f"{pin.distribution} 99.0.0 is outside the tested {pin.versions}"
    missing = compat.refusal(pin, version_of=lambda dist: None)
    assert missing == f"{pin.distribution} is not installed"
    changed = compat.Pin(**{**pin.__dict__, "fingerprint": "0" * 16})
    assert "code differs from the patched one" in compat.refusal(changed)


def test_lazy_dynamo_leaves_an_unknown_torch_alone():
    """In a fresh interpreter (the patch is process-wide): a torch version outside the pinned
    range keeps torch.optim's own step wrappers."""
    code = """
import fedsim.compat as compat
compat.installed_version = lambda dist: "2.99.0"
from fedsim.lazy_dynamo import defer_dynamo_import
defer_dynamo_import()
import torch
from torch.optim import optimizer
own = optimizer._use_grad_for_differentiable(lambda self: None).__code__
print(torch.optim.SGD.step.__code__ is own, torch.optim.Adam.step.__code__ is own)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr


def test_lazy_dynamo_applies_on_the_tested_torch():
    code = """
from fedsim.lazy_dynamo import defer_dynamo_import
defer_dynamo_import()
import torch
from torch.optim import optimizer
own = optimizer._use_grad_for_differentiable(lambda self: None).__code__
print(torch.optim.SGD.step.__code__ is own)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False"], out.stderr


def test_the_lean_ray_head_leaves_an_unknown_ray_alone(monkeypatch):
    from fedsim.backends.ray_lean import lean_local_head

    monkeypatch.setattr(compat, "installed_version", lambda dist: "9.0.0")
    compat.may_patch.cache_clear()
    try:
        from ray._private import parameter

        before = parameter.RayParams.__init__
        with lean_local_head() as lean:
            assert lean is False and parameter.RayParams.__init__ is before
    finally:
        compat.may_patch.cache_clear()
