"""Faults injected into clients in simulation (``[faults]``): crashes, stragglers, dropouts,
corrupted and adversarial updates.

Injected in the ClientApp (``fedsim.client_app.handle``) around the method's handler of every
``train*`` message, so one place covers every method and every backend. Which client fails
how is a pure function of (run.seed, round, partition id, attempt), and the malicious clients
of ``byzantine_fraction`` of (run.seed, clients.num): no state is carried between rounds, so
the same config gives the same faults in-process, on Ray, under ``flwr run`` and after a
resume. What the server then does with each fault is the engine's
ordinary failure handling (error replies, ``client.timeout``, reply checks); scaled and
sign-flipped updates pass every check on purpose: they are for robust aggregation to handle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict

from fedsim.config.schema import ROUND_FAULTS, Experiment, FaultsConfig, num_byzantine
from fedsim.seeding import BYZANTINE_DRAW, DROPOUT_DRAW, FAULT_DRAW, derive_seed

log = logging.getLogger("fedsim")
ATTEMPT_KEY = "fedsim.attempt"  # a retried round's attempt number (config record, >= 1)
FAULT_INJECTED = 4  # error code of a crash or dropout reply
STRAGGLER_MARGIN = 0.1  # seconds past the deadline a default straggler answers

Handler = Callable[[Message, Context, Experiment], Message]


@dataclass(frozen=True)
class Fault:
    """What happens to one client in one round: ``kind`` (one of ``ROUND_FAULTS`` or
    ``"dropout"``) and the draw that picks an array or a value for it."""

    kind: str
    pick: int = 0
    detail: str = ""


def dropout_start(cfg: FaultsConfig, seed: int, server_round: int, pid: int) -> int | None:
    """The round a dropout covering ``server_round`` began, or None (not dropped out).

    A client drops out at round s with ``dropout_prob`` (one draw per (seed, s, pid)) and
    stays out for ``dropout_rounds`` rounds: stateless, so resumes and retries agree.
    """
    if cfg.dropout_prob <= 0:
        return None
    for start in range(max(1, server_round - cfg.dropout_rounds + 1), server_round + 1):
        u = np.random.default_rng(derive_seed(seed, start, pid, DROPOUT_DRAW)).random()
        if u < cfg.dropout_prob:
            return start
    return None


def byzantine_clients(cfg: FaultsConfig, seed: int, num_clients: int) -> frozenset[int]:
    """The malicious partition ids of ``byzantine_fraction``: ``num_byzantine`` of
    ``range(num_clients)`` drawn without replacement, once per run from (seed, a purpose of
    their own), so the set is the same in every round and attempt and on every backend."""
    k = num_byzantine(cfg.byzantine_fraction, num_clients)
    if k == 0:
        return frozenset()
    rng = np.random.default_rng(derive_seed(seed, BYZANTINE_DRAW))
    return frozenset(int(p) for p in rng.choice(num_clients, size=k, replace=False))


def fault_for(
    cfg: FaultsConfig,
    seed: int,
    server_round: int,
    pid: int,
    attempt: int = 0,
    malicious: frozenset[int] = frozenset(),
) -> Fault | None:
    """The fault of partition ``pid`` in ``server_round`` (attempt ``attempt``), or None.

    ``malicious`` (``byzantine_clients``) attack with ``byzantine_attack`` whenever the
    per-round draws leave them alone: a malicious client may still crash or drop out.
    """
    fault = _round_fault(cfg, seed, server_round, pid, attempt)
    if fault is None and pid in malicious:
        return Fault(cfg.byzantine_attack, detail="faults.byzantine_fraction")
    return fault


def _round_fault(
    cfg: FaultsConfig, seed: int, server_round: int, pid: int, attempt: int
) -> Fault | None:
    start = dropout_start(cfg, seed, server_round, pid)
    if start is not None:
        end = start + cfg.dropout_rounds - 1
        return Fault("dropout", detail=f"rounds {start}-{end}")
    rng = np.random.default_rng(derive_seed(seed, server_round, pid, FAULT_DRAW, attempt))
    u, pick = rng.random(), int(rng.integers(1 << 30))
    edge = 0.0
    for kind in ROUND_FAULTS:
        edge += getattr(cfg, f"{kind}_prob")
        if u < edge:
            return Fault(kind, pick)
    return None


def run_with_faults(
    handler: Handler, msg: Message, context: Context, exp: Experiment, started: float
) -> tuple[Message, str]:
    """Run ``handler`` with this client's fault of the round applied; returns the reply and
    a note for a timeout's reason ("" when no fault delays it)."""
    cfg = exp.faults
    assert cfg is not None
    config = msg.content["config"]
    if "server-round" not in config:
        raise ValueError(
            "faults: this train message has no 'server-round' in its config; the method's "
            "strategy must send it for faults to be drawn per round"
        )
    server_round = int(config["server-round"])
    attempt = int(config.get(ATTEMPT_KEY, 0))
    pid = int(context.node_config["partition-id"])
    malicious = byzantine_clients(cfg, exp.run.seed, exp.clients.num)
    fault = fault_for(cfg, exp.run.seed, server_round, pid, attempt, malicious)
    if fault is None:
        return handler(msg, context, exp), ""
    # A crash or a dropout is the error reply an exception becomes, built here so that its
    # reason reads the same on every backend (Flower's engines word exceptions their own way).
    if fault.kind == "dropout":
        reason = f"fault injected: dropped out for {fault.detail} (faults.dropout_prob)"
        return Message(Error(FAULT_INJECTED, reason), reply_to=msg), ""
    if fault.kind == "crash":
        reason = "fault injected: crash (faults.crash_prob)"
        return Message(Error(FAULT_INJECTED, reason), reply_to=msg), ""
    reply = handler(msg, context, exp)
    if fault.kind == "straggler":
        time.sleep(max(0.0, started + straggler_seconds(exp) - time.perf_counter()))
        return reply, "fault injected: straggler (faults.straggler_prob)"
    if reply.has_error():
        return reply, ""
    source = f" ({fault.detail})" if fault.detail else ""
    log.info("round %d, client %d: fault injected: %s%s", server_round, pid, fault.kind, source)
    content = corrupt(reply.content, msg.content, fault, cfg)
    return Message(content, reply_to=msg), ""


def straggler_seconds(exp: Experiment) -> float:
    """How long a straggler's call lasts at least (see ``FaultsConfig.straggler_delay``)."""
    cfg = exp.faults
    assert cfg is not None
    if cfg.straggler_delay:
        return cfg.straggler_delay
    return (exp.client.timeout or exp.run.exchange_timeout) + STRAGGLER_MARGIN


# -- corrupted and adversarial replies ---------------------------------------------------------


def corrupt(reply: RecordDict, sent: RecordDict, fault: Fault, cfg: FaultsConfig) -> RecordDict:
    """A copy of ``reply`` with ``fault`` applied; ``reply`` itself is never changed (it may
    share arrays with the message sent to every client)."""
    arrays = {name: dict(rec.items()) for name, rec in reply.array_records.items()}
    slots = [(name, key) for name, rec in arrays.items() for key in rec]
    floats = [s for s in slots if arrays[s[0]][s[1]].numpy().dtype.kind == "f"]
    extra: dict[str, MetricRecord] = {}
    if fault.kind in ("nan", "inf"):
        bad = np.nan if fault.kind == "nan" else np.inf
        if floats:
            name, key = floats[fault.pick % len(floats)]
            values = arrays[name][key].numpy().copy()
            values.flat[fault.pick % max(values.size, 1)] = bad
            arrays[name][key] = Array(values)
        else:  # nothing to spoil among the arrays: a metric carries it
            extra["fault"] = MetricRecord({"fault": float(bad)})
    elif fault.kind == "misshape" and slots:
        name, key = slots[fault.pick % len(slots)]
        values = arrays[name][key].numpy().ravel()
        arrays[name][key] = Array(np.concatenate([values, np.zeros(1, values.dtype)]))
    elif fault.kind == "oversize" and slots:
        name, key = max(slots, key=lambda s: arrays[s[0]][s[1]].numpy().size)
        values = arrays[name][key].numpy()
        arrays[name][key] = Array(np.resize(values, max(values.size, 1) * cfg.oversize_factor))
    elif fault.kind in ("scale", "sign_flip"):
        factor = cfg.scale_factor if fault.kind == "scale" else -1.0
        reference = {k: a for rec in sent.array_records.values() for k, a in rec.items()}
        for name, key in floats:
            arrays[name][key] = Array(_scaled(arrays[name][key], reference.get(key), factor))
    out = RecordDict()
    for name, record in reply.items():
        out[name] = ArrayRecord(array_dict=arrays[name]) if name in arrays else record
    for name, record in extra.items():
        out[name] = record
    return out


def _scaled(local: Array, sent: Array | None, factor: float) -> np.ndarray:
    """global + factor x (local - global); the update from zero when nothing of that name and
    shape was sent (a reply that is not model weights)."""
    values = local.numpy()
    base = sent.numpy() if sent is not None else None
    if base is None or base.shape != values.shape:
        return (values * factor).astype(values.dtype)
    return (base + factor * (values - base)).astype(values.dtype)
