"""fedsim.lazy_dynamo: torch.optim without its compiler import, same numbers, compile intact.

Each case runs in a fresh interpreter: whether ``torch._dynamo`` was imported is a
process-wide fact."""

from __future__ import annotations

import subprocess
import sys

TRAIN = """
import hashlib, sys, torch
{before}
from fedsim.threads import torch_threads
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
digest = hashlib.sha256()
with torch_threads(1):
    for make in (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                 lambda p: torch.optim.Adam(p, lr=1e-2), lambda p: torch.optim.AdamW(p, lr=1e-2)):
        optimizer = make(model.parameters())
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        optimizer.load_state_dict(optimizer.state_dict())
        optimizer.step()
        assert torch.is_grad_enabled()  # step() restores the grad mode it found
for p in model.parameters():
    digest.update(p.detach().numpy().tobytes())
print("dynamo" if "torch._dynamo" in sys.modules else "no-dynamo", digest.hexdigest())
{after}
"""

COMPILE_AFTER = """
compiled = torch.compile(lambda t: torch.sin(t) * 2, backend="eager")
assert torch.equal(compiled(x), torch.sin(x) * 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
torch.nn.functional.cross_entropy(model(x), y).backward()
optimizer.step()
print("compiled")
"""


def _run(before: str = "", after: str = "") -> list[str]:
    code = TRAIN.format(before=before, after=after)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_training_never_imports_the_compiler_and_gives_torchs_numbers():
    deferred = _run()
    with_torch_wrappers = _run(before="import torch._dynamo")  # torch's own path
    assert deferred[0] == "no-dynamo" and with_torch_wrappers[0] == "dynamo"
    assert deferred[1] == with_torch_wrappers[1]  # bit for bit


def test_compiling_later_still_works():
    said = _run(after="import torch._dynamo\n" + COMPILE_AFTER)
    assert said[0] == "no-dynamo" and said[-1] == "compiled"
