"""What a worker loads as it boots, so the clients' first call finds it in the process.

A Ray worker runs ``warm_up`` while the driver prepares round 0, instead of in round 1: the
method's own ``warm_client`` (FedIT: the model and tokeniser), else, for a method whose
clients read fedsim's partitions (``own_data``), the experiment's partitioned dataset. It
must not draw random numbers, so the run's results do not depend on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.method import resolve
from fedsim.registry import get_method

if TYPE_CHECKING:
    from fedsim.config.schema import Experiment


def warm_up(exp: Experiment) -> None:
    """Fill this process's caches as the first client call would."""
    method = get_method(exp.method)
    if method.warm_client is not None:
        resolve(method.warm_client)(exp)
    elif method.own_data:
        from fedsim.data.client import warm_client_data

        warm_client_data(exp)
