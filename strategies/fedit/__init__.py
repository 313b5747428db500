"""FedIT aggregation of LoRA adapters, as Flower Message-API strategies.

Three modes (``fedit.aggregation``), all weighted by ``num-examples`` (w_k = n_k / sum n):

- ``fedavg`` (the paper, Shepherd): A = sum w_k A_k and B = sum w_k B_k, separately. Not
  the mean update: B A != sum w_k B_k A_k. Bytes per sampled client and round: the adapter
  down and up, r * (d_in + d_out) values per adapted layer each way.
- ``exact``: the global model's update equals the weighted mean of the clients' updates.
  The adapter is still averaged as above (so training continues from it), and the error
  of doing so, s * (sum w_k B_k A_k - B A), is added to a dense per-layer residual that the
  server keeps and sends down with the adapter; clients add it to the frozen base weight
  and reply with their adapter only. Bytes: the adapter up (as fedavg), adapter plus
  d_out * d_in values per adapted layer down. We chose this over FLoRA-style stacking of
  the clients' factors: with partial participation a client sampled now must also receive
  every earlier round's stack (rank grows by K*r per round and overtakes d_out*d_in after
  a few rounds), while the residual is fixed-size and the adapter does not restart.
- ``svd``: the best rank-r approximation (Eckart-Young) of sum w_k B_k A_k, computed from
  the stacked factors (QR of both, SVD of a (K r) x (K r) core), re-factorised as
  B = U_r S_r, A = V_r^T. Adapter-only traffic like fedavg; not exact when the clients'
  products span more than r directions.

``strategy.name = "fedadam" | "fedyogi"`` composes the aggregate with Flower's FedAdam /
FedYogi over the adapter tensors (their pseudo-gradient is aggregate - current). The exact
residual passes through the server optimiser unchanged; ``svd`` does not compose (each
round's factorisation has a new basis, so moments over A and B would mix coordinates).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedYogi, Strategy

from fedsim.config.schema import Experiment
from fedsim.federation.sampling import sampling_kwargs
from fedsim.federation.strategy import UsesFederation
from fedsim_methods.fedit import optimiser_of
from fedsim_methods.fedit.adapter import (
    from_arrays,
    is_residual,
    key_a,
    key_b,
    key_residual,
    modules_of,
    to_arrays,
)
from fedsim_methods.fedit.config import fedit_of, lora_of
from fedsim_methods.server_optimisers import FedOptConfig


@dataclass(frozen=True)
class FedITOptions:
    aggregation: str = "fedavg"  # fedavg | exact | svd
    scaling: float = 2.0  # LoRA alpha / r
    wire_dtype: str = "fp32"  # fp32 | fp16
    train_clients: tuple[int, ...] = ()  # fixed partition ids (local-only baselines)


# ----------------------------------------------------------------------------- the maths


def weighted_sum(values: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """sum w_k x_k in float64, in reply order (fixed: replies are sorted by partition id)."""
    total = np.zeros(values[0].shape, dtype=np.float64)
    for w, v in zip(weights, values):
        total += w * v.astype(np.float64)
    return total


def mean_product(a_list, b_list, weights) -> tuple[np.ndarray, np.ndarray]:
    """Stacked factors P (out x K r), Q (K r x in) with P @ Q = sum w_k B_k A_k."""
    p = np.concatenate([w * b.astype(np.float64) for w, b in zip(weights, b_list)], axis=1)
    q = np.concatenate([a.astype(np.float64) for a in a_list], axis=0)
    return p, q


def best_rank_r(p: np.ndarray, q: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, A) with B @ A the best rank-r approximation of P @ Q, without forming it."""
    qp, rp = np.linalg.qr(p)  # P = Qp Rp
    qq, rq = np.linalg.qr(q.T)  # Q = Rq^T Qq^T
    u, s, vt = np.linalg.svd(rp @ rq.T)
    r = min(r, len(s))
    b = (qp @ u[:, :r]) * s[:r]
    a = vt[:r] @ qq.T
    pad = a.shape[0]
    if pad < r:  # fewer directions than the rank: zero rows/columns keep the shapes
        a = np.vstack([a, np.zeros((r - pad, a.shape[1]))])
        b = np.hstack([b, np.zeros((b.shape[0], r - pad))])
    return b, a


def aggregate_adapters(
    states: list[dict[str, np.ndarray]],
    weights: np.ndarray,
    mode: str,
    scaling: float,
    current: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(adapter, residuals) from the clients' adapters; see the module docstring.

    ``weights`` are normalised here; ``current`` holds the residuals sent this round
    (exact mode). Returned arrays are float32."""
    weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    adapter: dict[str, np.ndarray] = {}
    residuals: dict[str, np.ndarray] = {}
    for module in modules_of(states[0]):
        a_list = [s[key_a(module)] for s in states]
        b_list = [s[key_b(module)] for s in states]
        r = a_list[0].shape[0]
        if mode == "svd":
            b, a = best_rank_r(*mean_product(a_list, b_list, weights), r)
        else:
            a, b = weighted_sum(a_list, weights), weighted_sum(b_list, weights)
        if mode == "exact":
            p, q = mean_product(a_list, b_list, weights)
            before = current.get(key_residual(module)) if current else None
            delta = scaling * (p @ q - b @ a)
            residual = delta if before is None else before.astype(np.float64) + delta
            residuals[key_residual(module)] = residual.astype(np.float32)
        adapter[key_a(module)] = a.astype(np.float32)
        adapter[key_b(module)] = b.astype(np.float32)
    return adapter, residuals


def averaging_error(
    states: list[dict[str, np.ndarray]],
    weights: np.ndarray,
    sent: dict[str, np.ndarray] | None = None,
) -> float:
    """How much of a round's update averaging A and B separately loses, mean over layers:
    ||mean(B A) - mean(B) mean(A)|| / ||mean(B A) - B0 A0|| (Frobenius; B0 A0 = the adapter
    sent this round). 0 for one client; the exact mode puts this error into its residual."""
    weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    ratios = []
    for module in modules_of(states[0]):
        a_list = [s[key_a(module)] for s in states]
        b_list = [s[key_b(module)] for s in states]
        p, q = mean_product(a_list, b_list, weights)
        exact = p @ q
        lost = np.linalg.norm(exact - weighted_sum(b_list, weights) @ weighted_sum(a_list, weights))
        start = 0.0
        if sent is not None and key_a(module) in sent:
            start = sent[key_b(module)].astype(np.float64) @ sent[key_a(module)]
        moved = np.linalg.norm(exact - start)
        ratios.append(lost / moved if moved > 0 else 0.0)
    return float(np.mean(ratios))


def effective_delta(arrays: dict[str, np.ndarray], module: str, scaling: float) -> np.ndarray:
    """What the global state adds to a layer's base weight: residual + s * B @ A."""
    a = arrays[key_a(module)].astype(np.float64)
    b = arrays[key_b(module)].astype(np.float64)
    residual = arrays.get(key_residual(module))
    out = scaling * (b @ a)
    return out if residual is None else out + residual


# ------------------------------------------------------------------------------ strategy


class FedIT(UsesFederation, FedAvg):
    """FedAvg's sampling and metrics; FedIT's adapter aggregation (``options``)."""

    options: FedITOptions = FedITOptions()
    _defer_residual = False  # set by the server-optimiser classes

    def _wire(self, arrays: ArrayRecord) -> ArrayRecord:
        if self.options.wire_dtype == "fp32" and all(a.dtype == "float32" for a in arrays.values()):
            return arrays
        return to_arrays(from_arrays(arrays), self.options.wire_dtype)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = from_arrays(arrays)  # full precision: the exact residual builds on it
        wire = self._wire(arrays)
        if not self.options.train_clients:
            return super().configure_train(server_round, wire, config, grid)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: wire, self.configrecord_key: config})
        nodes = [self.ctx.node_of(pid) for pid in self.options.train_clients]
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_evaluate(server_round, self._wire(arrays), config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        states = [from_arrays(c[self.arrayrecord_key]) for c in contents]
        weights = np.array([float(c["metrics"][self.weighted_by_key]) for c in contents])
        current = getattr(self, "_sent", None)
        adapter, residuals = aggregate_adapters(
            states, weights, self.options.aggregation, self.options.scaling, current
        )
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        if metrics is not None:
            metrics["averaging_error"] = averaging_error(states, weights, current)
        if self._defer_residual:
            self._pending_residuals = residuals
            return to_arrays(adapter), metrics
        return to_arrays({**adapter, **residuals}), metrics


class _OverAdapters:
    """Placed before Flower's FedOpt in the MRO: the server optimiser sees A and B only;
    the exact residual (if any) passes through it unchanged."""

    _defer_residual = True

    def configure_train(self, server_round, arrays, config, grid):
        messages = super().configure_train(server_round, arrays, config, grid)
        self.current_arrays = {
            k: v.astype(np.float32) for k, v in self.current_arrays.items() if not is_residual(k)
        }
        return messages

    def aggregate_train(self, server_round, replies):
        self._pending_residuals = {}
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        values = {k: v.astype(np.float32) for k, v in from_arrays(arrays).items()}
        return to_arrays({**values, **self._pending_residuals}), metrics


class FedITAdam(_OverAdapters, FedAdam, FedIT):
    """FedIT aggregation, then FedAdam over the adapter."""


class FedITYogi(_OverAdapters, FedYogi, FedIT):
    """FedIT aggregation, then FedYogi over the adapter."""


# ----------------------------------------------------------------------- build + check


def options_of(exp: Experiment) -> FedITOptions:
    cfg, lora = fedit_of(exp), lora_of(exp)
    return FedITOptions(
        aggregation=cfg.aggregation,
        scaling=lora.scaling,
        wire_dtype=cfg.adapter_dtype,
        train_clients=tuple(cfg.train_clients),
    )


def build_strategy(exp: Experiment) -> Strategy:
    kw = sampling_kwargs(exp)
    name = optimiser_of(exp)
    if name in ("fedadam", "fedyogi"):
        cls = FedITAdam if name == "fedadam" else FedITYogi
        o = exp.section("fedopt") or FedOptConfig()
        strategy = cls(eta=o.eta, eta_l=o.eta_l, beta_1=o.beta_1, beta_2=o.beta_2, tau=o.tau, **kw)
    else:
        strategy = FedIT(**kw)
    strategy.options = options_of(exp)
    return strategy
