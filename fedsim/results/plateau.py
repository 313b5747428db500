"""When a training curve stops improving: one rule for every reproduction's report, so
"plateau from round 43" means the same thing in each README (the issue asks each grid to run
until its baseline's curve has flattened, and to show it)."""

from __future__ import annotations

import statistics

WINDOW = 5  # rounds in the moving average
BAND = 1.0  # points of accuracy (%)
TAIL = 10  # the last rounds whose mean is the curve's level


def rule(window: int = WINDOW, band: float = BAND, tail: int = TAIL) -> str:
    """The rule in words, for a table's caption."""
    return (
        f"the first round from which every {window}-round moving average stays within "
        f"{band:g} point of the last {tail} rounds' mean"
    )


def plateau_from(
    rounds: list[int],
    values: list[float],
    window: int = WINDOW,
    band: float = BAND,
    tail: int = TAIL,
) -> int | None:
    """The first round from which every ``window``-round moving average of ``values``
    (accuracy %) stays within ``band`` of the mean of the last ``tail`` rounds; None for a
    curve shorter than ``tail`` trained rounds, or one still moving by more at its end.
    Round 0 (the untrained model) never enters a window. "Stays", not "first reaches": a
    curve still rising steadily crosses its own recent mean near its end without flattening.
    """
    trained = [(r, v) for r, v in zip(rounds, values, strict=True) if r >= 1]
    if len(trained) < tail:
        return None
    level = statistics.fmean(v for _, v in trained[-tail:])
    start = None
    for i in range(window - 1, len(trained)):
        moving = statistics.fmean(v for _, v in trained[i - window + 1 : i + 1])
        if abs(moving - level) > band:
            start = None
        elif start is None:
            start = trained[i][0]
    return start
