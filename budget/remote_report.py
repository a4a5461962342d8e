"""Other machines in this machine's report: a remote exporter's status object as report parts.

The desktop app shows remote machines in the same gauge, table, forecasts and
notifications as local ones; those all read a :class:`~kvwall.budget.report.StatusReport`.
This module turns a remote's ``/status.json`` (``kvwall status --json``'s documented
object) back into report records, every id, key and name prefixed with the host so nothing
collides with this machine's. A remote that is down becomes one server whose health is
``unreachable`` and whose error says why: shown as down, never fatal. Pure, Qt-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol, cast, get_args

from kvwall.budget.report import (
    Advice,
    AdviceAction,
    Attribution,
    Forecast,
    PoolForecast,
    ServerReport,
    SlotReport,
    StatusReport,
)
from kvwall.budget.units import sanitize
from kvwall.monitors.snapshot import HEALTH_UNREACHABLE, DeviceMemory, Health, ProcessMemory

Json = Mapping[str, Any]


class RemoteLike(Protocol):
    """What a remote read gives (``kvwall.monitors.remote.RemoteStatus``)."""

    @property
    def url(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def up(self) -> bool: ...
    @property
    def status(self) -> Json | None: ...
    @property
    def error(self) -> str | None: ...


def _float(value: Any) -> float | None:
    """A finite number no larger than int64 (a remote's ``1e308`` or ``Infinity`` is unknown)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return float(value) if math.isfinite(value) and abs(value) <= 2**63 else None


def _int(value: Any) -> int | None:
    return int(value) if _float(value) is not None else None


def _items(value: Any) -> list[Json]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _texts(value: Any, most: int = 50) -> list[str]:
    """A remote's list of messages, sanitised, at most ``most`` of them."""
    if not isinstance(value, list):
        return []
    return [sanitize(str(v)) for v in value[:most]]


def _device(host: str, d: Json) -> DeviceMemory:
    return DeviceMemory(
        id=f"{host}/{d.get('id')}", kind=str(d.get("kind") or "host"),
        name=f"{host}: {d.get('name')}", unified=bool(d.get("unified")),
        total_bytes=_int(d.get("total_bytes")), used_bytes=_int(d.get("used_bytes")),
        free_bytes=_int(d.get("free_bytes")),
        processes=tuple(ProcessMemory(_int(p.get("pid")) or 0, _int(p.get("used_bytes")) or 0,
                                      str(p.get("name") or ""))
                        for p in _items(d.get("processes"))),
        llama_device=d.get("llama_device") if isinstance(d.get("llama_device"), str) else None,
        error=d.get("error") if isinstance(d.get("error"), str) else None,
        hint=d.get("hint") if isinstance(d.get("hint"), str) else None,
        uuid=d.get("uuid") if isinstance(d.get("uuid"), str) else None,
    )


def _forecast(f: Any) -> Forecast:
    f = f if isinstance(f, Mapping) else {}
    return Forecast(tokens_per_turn=_float(f.get("tokens_per_turn")),
                    tokens_per_minute=_float(f.get("tokens_per_minute")),
                    turns_left=_int(f.get("turns_left")),
                    seconds_left=_float(f.get("seconds_left")),
                    confidence=_float(f.get("confidence")) or 0.0,
                    turns_seen=_int(f.get("turns_seen")) or 0)


def _slot(s: Json) -> SlotReport:
    return SlotReport(_int(s.get("id")) or 0, _int(s.get("n_ctx")) or 0, _int(s.get("tokens")),
                      bool(s.get("is_processing")), _forecast(s.get("forecast")))


def _attribution(host: str, a: Json) -> Attribution:
    return Attribution(
        device_id=f"{host}/{a.get('device_id')}", measured_bytes=_int(a.get("measured_bytes")),
        weights_bytes=_int(a.get("weights_bytes")) or 0, kv_bytes=_int(a.get("kv_bytes")) or 0,
        compute_bytes=_int(a.get("compute_bytes")) or 0,
        overhead_bytes=_int(a.get("overhead_bytes")) or 0,
        unattributed_bytes=_int(a.get("unattributed_bytes")) or 0,
        recurrent_bytes=_int(a.get("recurrent_bytes")) or 0,
        note=a.get("note") if isinstance(a.get("note"), str) else None)


_ACTIONS: frozenset[str] = frozenset(get_args(AdviceAction))
_HEALTHS: frozenset[str] = frozenset(get_args(Health))


def _advice(a: Json) -> Advice | None:
    """A remote's advice item, None when its action is not one kvwall knows."""
    action = a.get("action")
    if not isinstance(action, str) or action not in _ACTIONS:
        return None
    return Advice(cast("AdviceAction", action), str(a.get("title") or ""),
                  _int(a.get("saves_bytes")) or 0, _int(a.get("max_ctx")) or 0,
                  str(a.get("command") or ""), str(a.get("caveat") or ""))


def _health(value: object) -> Health:
    """A remote server's health; anything kvwall does not know reads as ``error``."""
    return cast("Health", value) if isinstance(value, str) and value in _HEALTHS else "error"


def _server(host: str, s: Json) -> ServerReport:
    raw_memory, raw_max_ctx, pool = s.get("memory"), s.get("max_ctx"), s.get("pool")
    memory: Json = raw_memory if isinstance(raw_memory, Mapping) else {}
    max_ctx: Json = raw_max_ctx if isinstance(raw_max_ctx, Mapping) else {}
    return ServerReport(
        key=f"{host}/{s.get('key')}", pid=None, url=str(s.get("url") or ""),
        name=sanitize(f"{host}: {s.get('name')}", 200), model_path=None, health=_health(s.get("health")),
        plan=None, memory=tuple(_attribution(host, a) for a in _items(memory.get("devices"))),
        slots=tuple(_slot(x) for x in _items(s.get("slots"))),
        pool=_slot(pool) if isinstance(pool, Mapping) else None,
        max_ctx={str(k): int(v) for k, v in max_ctx.items() if _int(v) is not None},
        more_servers_fit=_int(s.get("more_servers_fit")),
        advice=tuple(x for x in (_advice(a) for a in _items(s.get("advice"))) if x is not None),
        errors=tuple(_texts(s.get("errors"))),
        notes=(f"on {host} (remote kvwall)", *tuple(_texts(s.get("notes")))),
        more_slots_fit=_int(s.get("more_slots_fit")),
        managed_by=s.get("managed_by") if isinstance(s.get("managed_by"), str) else None,
    )


def _pool_forecast(host: str, f: Json) -> PoolForecast:
    return PoolForecast(device_id=f"{host}/{f.get('device_id')}",
                        free_bytes=_int(f.get("free_bytes")),
                        bytes_per_minute=_float(f.get("bytes_per_minute")),
                        seconds_left=_float(f.get("seconds_left")),
                        confidence=_float(f.get("confidence")) or 0.0,
                        span_s=_float(f.get("span_s")) or 0.0,
                        floor_bytes=_int(f.get("floor_bytes")) or 0)


def _down(remote: RemoteLike) -> ServerReport:
    return ServerReport(
        key=f"remote:{remote.url}", pid=None, url=remote.url,
        name=f"{remote.host} (remote kvwall)", model_path=None, health=HEALTH_UNREACHABLE,
        plan=None, memory=(), slots=(), pool=None, max_ctx={}, more_servers_fit=None,
        advice=(), errors=(f"remote kvwall at {remote.url} {remote.error or 'is down'}",))


def merge_remotes(report: StatusReport, remotes: Iterable[RemoteLike]) -> StatusReport:
    """``report`` with each remote's pools, servers and pool forecasts added after its own.

    Args:
        report: this machine's report.
        remotes: reads of the configured remote exporters.

    Returns:
        A new report; ``report`` itself when there are no remotes.
    """
    devices: list[DeviceMemory] = []
    servers: list[ServerReport] = []
    forecasts: list[PoolForecast] = []
    for r in remotes:
        if not r.up or r.status is None:
            servers.append(_down(r))
            continue
        devices += [_device(r.host, d) for d in _items(r.status.get("devices"))]
        servers += [_server(r.host, s) for s in _items(r.status.get("servers"))]
        forecasts += [_pool_forecast(r.host, f) for f in _items(r.status.get("pool_forecasts"))]
    if not (devices or servers):
        return report
    return replace(report, devices=tuple(report.devices) + tuple(devices),
                   servers=tuple(report.servers) + tuple(servers),
                   pool_forecasts=tuple(report.pool_forecasts) + tuple(forecasts))


def remote_entries(entries: Sequence[tuple[str, str | None]]) -> tuple[tuple[str, str | None], ...]:
    """(url, token) pairs with blank URLs dropped and duplicates removed, in order."""
    seen: dict[str, str | None] = {}
    for url, token in entries:
        if url.strip() and url.strip() not in seen:
            seen[url.strip()] = token or None
    return tuple(seen.items())


__all__ = ["RemoteLike", "merge_remotes", "remote_entries"]
