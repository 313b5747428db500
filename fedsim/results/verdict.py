"""One rule for turning paired per-seed differences into a verdict word, shared by every
reproduction's report so "holds" means the same thing in each README."""

from __future__ import annotations

import math

from fedsim.results.cells import mean_std

RULE = (
    "*holds*: all seeds' paired differences have the claimed sign and their mean exceeds "
    "their sample std; *does not hold*: all have the opposite sign and the mean exceeds the "
    "std; *inconclusive*: anything else; *pending*: fewer seeds than the claim needs."
)


def paired_verdict(diffs: list[float], sign: float, seeds_needed: int) -> str:
    """``diffs``: per-seed differences (better - worse as claimed); ``sign``: +1 when the
    claim is that the difference is positive, -1 when negative."""
    if len(diffs) < seeds_needed:
        return f"pending (n={len(diffs)})"
    mean, std = mean_std(diffs)
    if not math.isfinite(mean) or abs(mean) <= std:
        return "inconclusive"
    if all(d * sign > 0 for d in diffs):
        return "holds"
    if all(d * sign < 0 for d in diffs):
        return "does not hold"
    return "inconclusive"
