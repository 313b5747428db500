"""Pacing functions: how much of an ordered list (samples or clients) is eligible at step t.

The paper's form (Vahidian et al., after Wu et al. 2021): the pool holds fraction ``b`` of
the ``n`` items at ``t = 0`` and all of them at ``t = a * T``, with ``T`` the step budget.
With ``s = t / (a * T)``, the fraction grows as ``b + (1 - b) * g(s)``:

- linear ``g = s``; quad ``g = s**2``; sqrt ``g = sqrt(s)``
- step ``g = 0`` before ``a*T``, 1 from then on
- exp ``g = (exp(c*s) - 1) / (exp(c) - 1)``; log ``g = 1 + log(s + exp(-c)) / c``; ``c = 10``

The pool size is ``floor(n * fraction)`` clipped to ``[minimum, n]`` (``minimum`` itself
capped at ``n``), so it is never empty and never smaller than a useful batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

PACINGS = ("linear", "quad", "sqrt", "step", "exp", "log")
PACING_C = 10.0  # steepness of exp/log pacing, as in the reference code
_EPS = 1e-9  # absorbs float error in n * fraction before flooring (0.29 * 100 = 28.999...)


def _growth(kind: str) -> Callable[[float], float]:
    c = PACING_C
    table: dict[str, Callable[[float], float]] = {
        "linear": lambda s: s,
        "quad": lambda s: s * s,
        "sqrt": lambda s: math.sqrt(s),
        "step": lambda s: 1.0 if s >= 1.0 else 0.0,
        "exp": lambda s: math.expm1(c * s) / math.expm1(c),
        "log": lambda s: 1.0 + math.log(s + math.exp(-c)) / c,
    }
    if kind not in table:
        raise ValueError(f"unknown pacing '{kind}' (known: {', '.join(table)})")
    return table[kind]


def pool_fraction(kind: str, t: float, total: float, a: float, b: float) -> float:
    """Fraction of the items eligible at step ``t`` of ``total``; in [b, 1]."""
    if total <= 0 or a <= 0 or not 0 < b <= 1:
        raise ValueError(f"pacing needs total > 0, a > 0, 0 < b <= 1 (got {total}, {a}, {b})")
    s = min(max(t, 0.0) / (a * total), 1.0)  # every g reaches 1 at s = 1 and stays there
    return min(1.0, b + (1.0 - b) * _growth(kind)(s))


def pool_size(
    kind: str, t: float, total: float, n: int, a: float, b: float, minimum: int = 1
) -> int:
    """Number of items eligible at step ``t``: ``floor(n * fraction)`` within [minimum, n]."""
    if n <= 0:
        return 0
    size = math.floor(n * pool_fraction(kind, t, total, a, b) + _EPS)
    return max(min(max(minimum, 1), n), min(size, n))
