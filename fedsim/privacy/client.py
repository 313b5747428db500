"""Client-side clipping for ``privacy.mode = "client-fixed" | "client-adaptive"``.

A ClientApp mod on training messages: it hands the message to Flower's
``fixedclipping_mod`` or ``adaptiveclipping_mod`` (which clip the reply's update to the norm
the server's wrapper put in the config) when the experiment asks for client-side clipping,
and passes every other message through untouched, so methods without ``[privacy]`` see no
difference.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from fedsim.config.wire import experiment_of


def client_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    privacy = experiment_of(msg).privacy
    mode = privacy.mode if privacy is not None else "none"
    if mode == "client-fixed":
        return fixedclipping_mod(msg, context, call_next)
    if mode == "client-adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    return call_next(msg, context)
