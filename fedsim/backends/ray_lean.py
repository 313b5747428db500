"""A local Ray head with only the processes fedsim's Ray backend uses.

``ray.init()`` on a new local cluster starts, beside the GCS and the raylet (and the
raylet's agents), three Python daemons fedsim never talks to: the autoscaler monitor, the
log monitor (it streams workers' output to the driver: fedsim starts Ray with
``log_to_driver=False``) and the dashboard's API server (job submission and the state API;
fedsim starts Ray with ``include_dashboard=False``, which still starts it, minimal). Measured
on 2 cores: about 285 MB of RSS and 0.5-2 s of ``ray.init``, competing for the CPUs with the
workers' start. Ray has no public switch for them; its ``RayParams`` has ``no_monitor`` and
``include_log_monitor``, which ``ray.init`` does not pass, so they are set here for the
duration of the call. On a Ray other than the one this was tested on (versions and source
pinned in ``fedsim.compat``), the call is left as it is: a full local Ray, just slower.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("fedsim")


@contextmanager
def lean_local_head() -> Iterator[bool]:
    """Within: a ``ray.init()`` that starts a new local cluster skips the three daemons.
    Yields whether it could (False: Ray's internals differ, nothing was changed)."""
    from fedsim.compat import may_patch

    if not may_patch("ray-lean-head"):  # not the Ray it was tested on (fedsim.compat)
        yield False
        return
    try:
        from ray._private import node, parameter

        original_params_init = parameter.RayParams.__init__
        original_api_server = node.Node.start_api_server
        fields = original_params_init.__code__.co_varnames
    except (ImportError, AttributeError):
        yield False
        return
    if "no_monitor" not in fields or "include_log_monitor" not in fields:
        yield False
        return

    def params_init(self, *args, **kwargs):
        kwargs.setdefault("no_monitor", True)
        kwargs.setdefault("include_log_monitor", False)
        original_params_init(self, *args, **kwargs)

    def no_api_server(self, *, include_dashboard, raise_on_failure) -> None:
        if include_dashboard:  # asked for: start it as Ray would
            original_api_server(
                self, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure
            )

    parameter.RayParams.__init__ = params_init
    node.Node.start_api_server = no_api_server
    try:
        yield True
    finally:
        parameter.RayParams.__init__ = original_params_init
        node.Node.start_api_server = original_api_server
