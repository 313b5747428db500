"""The strategy side of chunked aggregation (``clients.chunk_size``, public API).

``chunked(FedAdam)`` is FedAdam whose weighted mean comes from the chunks' partial sums
(``fedsim.federation.chunks.combine``) instead of one model per client. Composition by
inheritance, as the robust aggregators compose (``fedsim.robust``): FedAdam's
``aggregate_train`` calls ``super().aggregate_train``, which in ``FedAdam+ChunkedMean``
resolves to ``ChunkedMean``'s, so FedAdam's server step runs on the same mean. A method
whose strategy is a Flower ``FedAvg`` subclass declares ``chunked_aggregation`` and builds
its strategy through ``chunked`` when ``clients.chunk_size`` is set.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedsim.federation.chunks import combine


class ChunkedMean(FedAvg):
    """FedAvg over the chunks' partial sums (the replies of a chunked exchange)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return combine([reply.content for reply in replies if not reply.has_error()])


@cache
def chunked(base: type[FedAvg]) -> type[FedAvg]:
    """``base``'s messages and server step on the chunked mean."""
    if base is FedAvg:
        return ChunkedMean
    return type(f"{base.__name__}+ChunkedMean", (base, ChunkedMean), {"__module__": __name__})
