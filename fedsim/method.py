"""The method contract: everything the engine needs to know about a method, in one object.

A method (FedAvg, FedIT, SCAFFOLD, yours) is one ``Method`` registered by name under the
entry-point group ``fedsim.methods`` (``fedsim.registry``). Built-in methods register the
same way third-party packages do, so ``pip install my-method`` adds a method to the CLI,
the in-process grid, Ray workers and SuperNodes alike.

Where the code runs decides where it is referenced from:
- ``handlers`` run on clients (a SuperNode needs only these and their imports);
- ``strategy``, ``initial_arrays``, ``server_evaluator``, ``save_final`` and ``preflight``
  run on the server only;
- ``validate`` runs wherever an experiment is parsed (server and every client process), so
  it must be pure: no mutation, no disk or network.

References are callables or ``"module:attribute"`` strings; strings are imported on first
use, which keeps the registry cheap to load in every worker and avoids import cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from pydantic import BaseModel

Ref = str | Callable[..., Any]

# Message actions a ClientApp can route: "<category>" or "<category>.<action>".
CATEGORIES = ("train", "evaluate", "query")


def resolve(ref: Ref) -> Callable[..., Any]:
    """A callable from a callable or a ``"package.module:attribute"`` string."""
    if callable(ref):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep:
        raise ValueError(f"reference {ref!r} must look like 'package.module:attribute'")
    target: Any = import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


@dataclass(frozen=True)
class Method:
    """One federated method, declared.

    ``sections`` are the experiment sections the method reads beyond the shared ones
    (``[lora]``, ``[curriculum]``...): pydantic models the engine composes into the schema.
    Required sections are filled with their defaults when a file omits them (so the
    resolved config shows every setting); ``optional_sections`` stay absent unless given,
    and their presence switches a feature on (a ``[curriculum]`` on FedAvg).
    """

    name: str
    description: str
    tasks: tuple[str, ...]
    strategy: Ref  # (exp) -> flwr.serverapp.strategy.Strategy
    handlers: Mapping[str, Ref]  # message type -> (msg, context, exp) -> Message
    initial_arrays: Ref  # (exp) -> ArrayRecord
    server_evaluator: Ref | None = None  # (exp) -> ((round, ArrayRecord) -> MetricRecord)
    save_final: Ref | None = None  # (exp, ArrayRecord, run_dir) -> None
    sections: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    optional_sections: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    validate: Ref | None = None  # (exp) -> None; raises ValueError("key: what is wrong")
    preflight: Ref | None = None  # (exp) -> None; server-side checks that read disk
    validate_reply: Ref | None = None  # (stage, sent: Message, reply: Message) -> str | None
    keeps_client_state: Ref | bool = False  # (exp) -> bool: Context.state carries results
    callbacks: Ref | None = None  # (exp, run_dir) -> list[Callback]: the method's own outputs
    # Engine options its strategy applies (clients return model arrays, the server combines
    # them): strategy.aggregator (fedsim.robust) and [privacy] (fedsim.privacy). A method
    # that leaves them False refuses those keys instead of ignoring them.
    robust_aggregation: bool = False
    differential_privacy: bool = False
    # Its training aggregate is the weighted mean by num-examples of one model per client,
    # and its strategy composes with fedsim.federation.chunked_mean when clients.chunk_size
    # is set: a chunk of clients is then summed where it trained. Left False, the key is
    # refused (a method that needs every reply: robust rules, DP clipping, SCAFFOLD...).
    chunked_aggregation: bool = False
    # Its clients get their data from fedsim.data.client, so a node with its own data folder
    # (node config data-path) works; a method that leaves it False refuses such nodes.
    own_data: bool = False
    # (exp) -> None: loads what this method's clients load on their first call (data,
    # tokeniser...) into the process's caches. A Ray worker runs it as it boots, while the
    # driver prepares round 0, instead of in round 1. It must not draw random numbers.
    # Unset: a method with own_data loads the experiment's partitions (fedsim.data.client).
    warm_client: Ref | None = None
    # Random streams it draws from: name -> purpose number (fedsim.seeding). The registry
    # refuses a number the engine or another method uses, so two streams never coincide.
    streams: Mapping[str, int] = field(default_factory=dict)
    # CLI sub-commands it adds to `fedsim`: name -> a typer command function (e.g.
    # distillation's `distill-generator`, FedIT's `generate`). Resolved when the CLI starts.
    commands: Mapping[str, Ref] = field(default_factory=dict)
    # (exp, partition id, folder, source: dict) -> (layout, count): writes a client's data as
    # a node data folder, for a method that partitions data its own way (FedIT's instruction
    # categories); unset: the engine's partitions of images or texts (fedsim.data.export).
    export_partition: Ref | None = None

    def __post_init__(self) -> None:
        for message_type in self.handlers:
            category, _, action = message_type.partition(".")
            if category not in CATEGORIES or (action and not action.isidentifier()):
                raise ValueError(
                    f"method {self.name!r}: handler key {message_type!r} must be "
                    "'train', 'evaluate', 'query' or '<one of those>.<identifier>'"
                )
        both = set(self.sections) & set(self.optional_sections)
        if both:
            raise ValueError(f"method {self.name!r}: section(s) {sorted(both)} listed twice")
        for stream, number in self.streams.items():
            if not isinstance(number, int) or number <= 0:
                raise ValueError(f"method {self.name!r}: stream {stream!r} needs a positive int")
        for command in self.commands:
            if not command.replace("-", "").isalnum():
                raise ValueError(f"method {self.name!r}: command name {command!r}")

    # -- what the engine calls ------------------------------------------------------------
    def all_sections(self) -> dict[str, type[BaseModel]]:
        return {**self.sections, **self.optional_sections}

    def build_strategy(self, exp: Any):
        return resolve(self.strategy)(exp)

    def handler(self, message_type: str) -> Callable[..., Any] | None:
        ref = self.handlers.get(message_type)
        return resolve(ref) if ref is not None else None

    def make_initial_arrays(self, exp: Any):
        return resolve(self.initial_arrays)(exp)

    def make_server_evaluator(self, exp: Any):
        return resolve(self.server_evaluator)(exp) if self.server_evaluator else None

    def finish(self, exp: Any, arrays: Any, run_dir: Any) -> None:
        if self.save_final is not None:
            resolve(self.save_final)(exp, arrays, run_dir)

    def check(self, exp: Any) -> None:
        if self.validate is not None:
            resolve(self.validate)(exp)

    def check_before_run(self, exp: Any) -> None:
        if self.preflight is not None:
            resolve(self.preflight)(exp)

    def reply_validator(self) -> Callable[..., str | None] | None:
        return resolve(self.validate_reply) if self.validate_reply is not None else None

    def make_callbacks(self, exp: Any, run_dir: Any) -> list[Any]:
        return list(resolve(self.callbacks)(exp, run_dir)) if self.callbacks else []

    def stateful_clients(self, exp: Any) -> bool:
        flag = self.keeps_client_state
        return bool(flag if isinstance(flag, bool) else resolve(flag)(exp))
