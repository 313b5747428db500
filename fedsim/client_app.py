"""The one ClientApp, shared by every backend and every method (``fedsim.app`` names it and
the ServerApp for Flower).

Clients learn the experiment from the resolved config the server puts in every message
(``fedsim.config``), so the same ClientApp works in-process, in Ray actors and on real
SuperNodes without access to the experiment file. Every message type a registered method
handles (``train``, ``evaluate``, ``query`` and custom ``<category>.<action>`` types) is routed
to that method's handler, with torch threads pinned to ``clients.num_cpus`` and the call
timed against ``client.timeout``; ``train*`` messages get the ``[faults]`` a config asks for
(``fedsim.faults``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsim.array_codec import install as install_array_codec
from fedsim.config.wire import experiment_of
from fedsim.data.client import data_path
from fedsim.data.layouts import OwnDataError
from fedsim.faults import run_with_faults
from fedsim.federation.context import WHOAMI
from fedsim.privacy.client import client_clipping_mod
from fedsim.registry import get_method, methods
from fedsim.threads import torch_threads

CLIENT_TIMEOUT = 2  # error code of a reply that took longer than client.timeout


# Node config: seconds a node waits before each training reply, to run a deployment with
# nodes of different speeds on one machine (e.g. `--node-config "partition-id=0 ... slowdown-s=2"`).
SLOWDOWN = "slowdown-s"


def handle(message_type: str, msg: Message, context: Context) -> Message:
    """Run the experiment's method's handler for ``message_type``, pinned and timed."""
    exp = experiment_of(msg)
    method = get_method(exp.method)
    handler = method.handler(message_type)
    if handler is None:
        raise ValueError(f"method '{exp.method}' handles no '{message_type}' messages")
    folder = data_path(context)
    if folder is not None and not method.own_data:
        raise OwnDataError(folder, f"method '{exp.method}' cannot train on a node's own data")
    start = time.perf_counter()
    note = ""
    with torch_threads(exp.clients.num_cpus):
        if exp.faults is not None and message_type.split(".")[0] == "train":
            reply, note = run_with_faults(handler, msg, context, exp, start)
        else:
            reply = handler(msg, context, exp)
    slowdown = float(context.node_config.get(SLOWDOWN, 0.0))
    if slowdown > 0 and message_type.split(".")[0] == "train":
        time.sleep(slowdown)  # a node made slower on purpose (testing real-time servers)
    elapsed = time.perf_counter() - start
    if exp.client.timeout and elapsed > exp.client.timeout:
        reason = f"timed out: {elapsed:.1f}s > client.timeout={exp.client.timeout}s"
        reason += f" ({note})" if note else ""
        return Message(Error(code=CLIENT_TIMEOUT, reason=reason), reply_to=msg)
    return reply


def _route(message_type: str) -> Callable[[Message, Context], Message]:
    def route(msg: Message, context: Context) -> Message:
        return handle(message_type, msg, context)

    route.__name__ = message_type.replace(".", "_")
    return route


def query(msg: Message, context: Context) -> Message:
    """Node discovery (the partition id), then the method's own default queries."""
    if WHOAMI in msg.content["config"]:
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"whoami": ConfigRecord({"partition-id": pid})}), reply_to=msg)
    return handle("query", msg, context)


def build_client_app() -> ClientApp:
    """A ClientApp that routes every message type any registered method declares."""
    app = ClientApp()
    app.query()(query)
    types = {"train", "evaluate"} | {t for m in methods().values() for t in m.handlers}
    for message_type in sorted(types - {"query"}):
        category, _, action = message_type.partition(".")
        register = getattr(app, category)
        mods = [client_clipping_mod] if message_type == "train" else []  # [privacy] client-*
        (register(action, mods=mods) if action else register(mods=mods))(_route(message_type))
    return app


install_array_codec()  # np.save/np.load-free Array codec (fedsim.array_codec)
client_app = build_client_app()
