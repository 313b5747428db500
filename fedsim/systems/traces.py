"""Reading device and behaviour traces: fedsim's plain CSVs and FedScale's pickles.

FedScale ships two traces (its docs, "Device Trace File Formats"): a device-capacity dict
``{client_id: {"computation": ms per sample, "communication": kbit/s}}`` and a behaviour dict
``{client_id: {"active": [s...], "inactive": [s...], "finish_time": s, ...}}`` whose client is
online from each ``active[i]`` to ``inactive[i]`` within a cycle of ``finish_time`` seconds.
The CSVs say the same in columns (docs/async.md). Rows are returned in the file's client
order (numeric where the ids are numbers), and client ``p`` of a run reads entry
``p mod len(entries)``, as FedScale maps its clients onto its trace.

A pickle runs code when loaded: only load traces you trust (FedScale's own, or yours).
"""

from __future__ import annotations

import csv
import pickle
from dataclasses import dataclass
from pathlib import Path

from fedsim.errors import FedsimError


class TraceError(FedsimError, ValueError):
    """A trace file that cannot be read as the format its key documents."""


@dataclass(frozen=True)
class Device:
    """One client's speeds."""

    compute_ms_per_sample: float
    download_kbps: float
    upload_kbps: float


@dataclass(frozen=True)
class Windows:
    """When a client is online: ``spans`` ``[from, to)`` seconds within each cycle of
    ``cycle_s`` seconds (the cycle repeats forever)."""

    cycle_s: float
    spans: tuple[tuple[float, float], ...]

    def online(self, t: float) -> bool:
        x = t % self.cycle_s
        return any(a <= x < b for a, b in self.spans)

    def starts_after(self, t: float) -> list[float]:
        """Every window start in ``[t, t + cycle_s)``."""
        base = t - t % self.cycle_s
        out = []
        for a, _ in self.spans:
            s = base + a
            out.append(s if s >= t else s + self.cycle_s)
        return out


def _key_order(keys) -> list:
    try:
        return sorted(keys, key=float)
    except (TypeError, ValueError):
        return sorted(keys, key=str)


def _load_pickle(path: Path, key: str) -> dict:
    try:
        with path.open("rb") as f:
            data = pickle.load(f)  # noqa: S301 - FedScale's format; see the module docstring
    except Exception as e:  # a truncated or foreign file raises many kinds of errors
        raise TraceError(f"{key}: {path} is not a readable pickle ({e})") from e
    if not isinstance(data, dict) or not data:
        raise TraceError(f"{key}: {path} holds no {{client_id: ...}} dict")
    return data


def _rows(path: Path, key: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{key}: {path} lacks column(s) {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise TraceError(f"{key}: {path} has no rows")
    return rows


def _positive(value, key: str, path: Path, what: str, allow_zero: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TraceError(f"{key}: {path}: {what} = {value!r} is not a number") from None
    if not (x >= 0 if allow_zero else x > 0) or x != x or x == float("inf"):
        raise TraceError(f"{key}: {path}: {what} = {value!r} must be a positive number")
    return x


def _existing(path: str, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise TraceError(f"{key}: no such file: {p}")
    return p


def read_devices(path: str, key: str = "systems.device_trace") -> list[Device]:
    """The devices of a CSV or FedScale device-capacity pickle, in client order."""
    p = _existing(path, key)
    if p.suffix == ".csv":
        cols = ("client", "compute_ms_per_sample", "download_kbps", "upload_kbps")
        rows = _rows(p, key, cols)
        by_client = {r["client"]: r for r in rows}
        return [
            Device(*(_positive(by_client[c][k], key, p, k) for k in cols[1:]))
            for c in _key_order(by_client)
        ]
    data = _load_pickle(p, key)
    out = []
    for client in _key_order(data):
        entry = data[client]
        try:
            ms, kbps = entry["computation"], entry["communication"]
        except (TypeError, KeyError):
            raise TraceError(
                f"{key}: {p}: client {client!r} lacks 'computation'/'communication'"
            ) from None
        ms = _positive(ms, key, p, f"client {client} computation")
        kbps = _positive(kbps, key, p, f"client {client} communication")
        out.append(Device(ms, kbps, kbps))  # FedScale's one rate serves both ways
    return out


def read_windows(path: str, key: str = "systems.behaviour_trace") -> list[Windows]:
    """The online windows of a CSV or FedScale behaviour pickle, in client order."""
    p = _existing(path, key)
    if p.suffix == ".csv":
        rows = _rows(p, key, ("client", "cycle_s", "online_from_s", "online_to_s"))
        grouped: dict[str, list[dict[str, str]]] = {}
        for r in rows:
            grouped.setdefault(r["client"], []).append(r)
        out = []
        for client in _key_order(grouped):
            cycles = {_positive(r["cycle_s"], key, p, "cycle_s") for r in grouped[client]}
            if len(cycles) != 1:
                raise TraceError(f"{key}: {p}: client {client} has several cycle_s values")
            spans = [
                (
                    _positive(r["online_from_s"], key, p, "online_from_s", allow_zero=True),
                    _positive(r["online_to_s"], key, p, "online_to_s"),
                )
                for r in grouped[client]
            ]
            out.append(_windows(cycles.pop(), spans, key, p, client))
        return out
    data = _load_pickle(p, key)
    out = []
    for client in _key_order(data):
        entry = data[client]
        try:
            active, inactive = list(entry["active"]), list(entry["inactive"])
            cycle = _positive(entry["finish_time"], key, p, f"client {client} finish_time")
        except (TypeError, KeyError):
            raise TraceError(
                f"{key}: {p}: client {client!r} lacks 'active'/'inactive'/'finish_time'"
            ) from None
        ends = inactive + [cycle] * (len(active) - len(inactive))  # online to the cycle's end
        spans = [(float(a), float(b)) for a, b in zip(active, ends)]
        out.append(_windows(cycle, spans, key, p, client))
    return out


def _windows(cycle: float, spans, key: str, path: Path, client) -> Windows:
    """The spans clipped to the cycle, sorted, and overlapping ones merged."""
    merged: list[tuple[float, float]] = []
    for a, b in sorted((a, min(b, cycle)) for a, b in spans if b > a and a < cycle):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    if not merged:
        raise TraceError(f"{key}: {path}: client {client} is never online")
    return Windows(cycle, tuple(merged))
