"""Which methods and settings ``clients.chunk_size`` applies to (pure: runs wherever a
config is parsed). The reduction itself is ``fedsim.federation.chunks``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment


def check_chunking(exp: Experiment) -> None:
    """Refuse chunks where a strategy needs every client's own reply, naming the key."""
    from fedsim.config.privacy import enabled
    from fedsim.registry import get_method, methods

    if not exp.clients.chunk_size:
        return
    if not get_method(exp.method).chunked_aggregation:
        able = [m.name for m in methods().values() if m.chunked_aggregation]
        raise ValueError(
            f"clients.chunk_size: method '{exp.method}' needs every client's own reply; "
            f"chunks are summed where they train only for methods whose aggregate is the "
            f"weighted mean ({', '.join(able)})"
        )
    if exp.strategy.aggregator != "mean":
        raise ValueError(
            f"clients.chunk_size: strategy.aggregator '{exp.strategy.aggregator}' looks at "
            "every client's model; chunks apply to the weighted mean only (set 0)"
        )
    if enabled(exp):
        raise ValueError(
            f"clients.chunk_size: privacy.mode '{exp.privacy.mode}' clips each client's update "
            "before the sum; chunks would sum them unclipped (set 0)"
        )
