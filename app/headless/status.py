"""``kvwall status``: devices, servers, attribution, slots, forecasts and advice, headless.

Qt-free and quick to start: the memory model (and numpy behind the GGUF reader) is only
imported when a server is found. ``--json`` prints the documented object of
``docs/json-schema.md`` (``status`` section); ``--watch N`` keeps one poller and one engine
alive so the forecasts build up, and prints a fresh view (or one JSON line) every N seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol

from kvwall.app.headless.api_keys import ENV_VAR, KEY_HELP, KeySourceError, api_keys
from kvwall.budget.units import format_bytes, format_duration, sanitize

if TYPE_CHECKING:  # imported lazily at run time: `kvwall status` starts fast
    from kvwall.budget.engine import Engine
    from kvwall.budget.history import HistoryStore
    from kvwall.budget.memory import MemoryPlan
    from kvwall.budget.report import (
        Advice,
        Forecast,
        MemoryEvent,
        PoolForecast,
        ServerReport,
        SlotReport,
        StatusReport,
        StoppedServer,
    )
    from kvwall.monitors.poller import Poller
    from kvwall.monitors.remote import RemoteGroup
    from kvwall.monitors.snapshot import DeviceMemory, Snapshot

JsonObject = dict[str, Any]  # a JSON object as json.dumps takes it

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DESCRIPTION = """\
Find the running llama.cpp servers (process scan plus --url), measure the memory of every
device, split each server's memory into weights, KV cache, compute and overhead, follow
each slot's context and forecast when it fills, and advise what to change."""


class SnapshotSource(Protocol):
    """What the session polls: :class:`kvwall.monitors.poller.Poller`, or a test's fake."""

    def poll(self) -> Snapshot: ...

    def close(self) -> None: ...


class UsageError(ValueError):
    """A bad command-line value (one line, exit code 2)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvwall status", description=DESCRIPTION,
                                epilog=KEY_HELP)
    p.add_argument("--json", action="store_true",
                   help="print the documented JSON object instead of text "
                        "(with --watch: one object per line)")
    p.add_argument("--watch", metavar="SECONDS", type=str, default=None,
                   help="poll again every SECONDS until interrupted (Ctrl-C)")
    p.add_argument("--url", metavar="URL", action="append", default=[],
                   help="also poll this server (remote or in a container); repeatable")
    p.add_argument("--api-key-file", metavar="URL=PATH", action="append", default=[],
                   help="send the server at URL the API key in PATH (its first line; a "
                        "regular file you own); repeatable. Never printed")
    p.add_argument("--api-key", metavar="URL=KEY", action="append", default=[],
                   help="API key for the server at URL; repeatable. Visible to every local "
                        f"user in `ps`: prefer --api-key-file or {ENV_VAR}")
    p.add_argument("--deadline", metavar="SECONDS", type=str, default=None,
                   help="a poll reports servers that have not answered by then as "
                        "'not responding' (default 2)")
    p.add_argument("--remote", metavar="URL", action="append", default=[],
                   help="also show another machine's `kvwall exporter` (its /status.json); "
                        "repeatable; a remote that is down is shown as down")
    p.add_argument("--remote-token-file", metavar="PATH", default=None,
                   help="bearer token for the remotes (their --token-file). Never printed")
    p.add_argument("--no-history", action="store_true",
                   help="neither read nor write kvwall's history store (by default a one-shot "
                        "status forecasts from it and --watch records into it)")
    p.add_argument("--count", metavar="N", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _positive_float(text: str, flag: str, minimum: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag}: expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise UsageError(f"{flag}: must be at least {minimum:g} seconds, got {text!r}")
    return value


def _check_urls(urls: Sequence[str]) -> list[str]:
    from kvwall.monitors.discovery import InvalidURL, normalize_url

    out = []
    for url in urls:
        try:
            out.append(normalize_url(url, require_scheme=True))
        except InvalidURL as exc:
            raise UsageError(f"--url: {exc}") from None
    return out


# ---------------------------------------------------------------------------- JSON


def _device_json(d: DeviceMemory) -> JsonObject:
    return {
        "id": d.id,
        "kind": d.kind,
        "name": d.name,
        "unified": bool(d.unified),
        "total_bytes": d.total_bytes,
        "used_bytes": d.used_bytes,
        "free_bytes": d.free_bytes,
        "llama_device": d.llama_device,
        "processes": [{"pid": p.pid, "used_bytes": p.used_bytes, "name": p.name}
                      for p in d.processes],
        "error": d.error,
        "hint": d.hint,
        "uuid": getattr(d, "uuid", None),
    }


def _num(x: float | None, digits: int = 3) -> float | None:
    if x is None:
        return None
    return round(float(x), digits)


def _forecast_json(f: Forecast) -> JsonObject:
    return {
        "tokens_per_turn": _num(f.tokens_per_turn, 1),
        "tokens_per_minute": _num(f.tokens_per_minute, 1),
        "turns_left": f.turns_left,
        "seconds_left": _num(f.seconds_left, 1),
        "confidence": _num(f.confidence),
        "turns_seen": f.turns_seen,
    }


def _slot_json(s: SlotReport) -> JsonObject:
    return {
        "id": s.id,
        "n_ctx": s.n_ctx,
        "tokens": s.tokens,
        "is_processing": bool(s.is_processing),
        "forecast": _forecast_json(s.forecast),
    }


def _config_json(server: ServerReport) -> JsonObject | None:
    plan, config = server.plan, server.config
    if plan is not None:
        return {
            "n_ctx": plan.n_ctx, "n_ctx_seq": plan.n_ctx_seq, "n_ctx_slot": plan.n_ctx_slot,
            "n_seq": plan.n_seq, "kv_unified": plan.kv_unified,
            "cache_type_k": plan.cache_type_k, "cache_type_v": plan.cache_type_v,
            "flash_attn": plan.flash_attn, "n_ubatch": plan.n_ubatch,
        }
    slots = server.slots
    if config is None and not slots:
        return None
    unified = None
    if config is not None:
        unified = config.kv_unified if config.kv_unified is not None else config.n_parallel == -1
    n_seq = len(slots) if slots else None
    slot_ctx = max((s.n_ctx for s in slots), default=None) if slots else None
    n_ctx = None
    if slot_ctx is not None and unified is not None:
        n_ctx = slot_ctx if unified else slot_ctx * (n_seq or 1)
    return {
        "n_ctx": n_ctx, "n_ctx_seq": slot_ctx, "n_ctx_slot": slot_ctx, "n_seq": n_seq,
        "kv_unified": unified,
        "cache_type_k": config.cache_type_k if config is not None else None,
        "cache_type_v": config.cache_type_v if config is not None else None,
        "flash_attn": config.flash_attn if config is not None else None,
        "n_ubatch": config.n_ubatch if config is not None else None,
    }


def _memory_json(server: ServerReport) -> JsonObject:
    attrs = server.memory
    measured = [a.measured_bytes for a in attrs if a.measured_bytes is not None]
    return {
        "measured_bytes": sum(measured) if measured else None,
        "weights_bytes": sum(a.weights_bytes for a in attrs),
        "kv_bytes": sum(a.kv_bytes for a in attrs),
        "recurrent_bytes": sum(a.recurrent_bytes for a in attrs),
        "compute_bytes": sum(a.compute_bytes for a in attrs),
        "overhead_bytes": sum(a.overhead_bytes for a in attrs),
        "unattributed_bytes": sum(a.unattributed_bytes for a in attrs),
        "devices": [
            {"device_id": a.device_id, "measured_bytes": a.measured_bytes,
             "weights_bytes": a.weights_bytes, "kv_bytes": a.kv_bytes,
             "recurrent_bytes": a.recurrent_bytes, "compute_bytes": a.compute_bytes,
             "overhead_bytes": a.overhead_bytes, "unattributed_bytes": a.unattributed_bytes,
             "note": a.note}
            for a in attrs
        ],
    }


def _plan_json(plan: MemoryPlan | None) -> JsonObject | None:
    if plan is None:
        return None
    return {
        "weights_bytes": plan.weights_bytes, "kv_bytes": plan.kv_bytes,
        "recurrent_bytes": plan.recurrent_bytes, "compute_bytes": plan.compute_bytes,
        "output_bytes": plan.output_bytes, "total_bytes": plan.total_bytes,
        "cache_ram_bytes": plan.cache_ram_bytes,
        "devices": [{"name": d.name, "weights_bytes": d.weights_bytes, "kv_bytes": d.kv_bytes,
                     "recurrent_bytes": d.recurrent_bytes, "compute_bytes": d.compute_bytes,
                     "total_bytes": d.total_bytes} for d in plan.devices],
        "placement": _placement_json(plan),
    }


def _placement_json(plan: MemoryPlan) -> JsonObject | None:
    p = plan.placement
    if p is None:
        return None
    return {
        "n_gpu_layers": p.n_gpu_layers,
        "layers": [{"device": name, "layers": n} for name, n in p.layers],
        "cpu_expert_layers": list(p.cpu_expert_layers),
        "fit": p.fit,
        "summary": p.summary,
    }


def _server_json(s: ServerReport) -> JsonObject:
    return {
        "key": s.key,
        "pid": s.pid,
        "url": s.url,
        "name": s.name,
        "label": s.label or s.name,
        "model_path": s.model_path,
        "health": s.health,
        "config": _config_json(s),
        "memory": _memory_json(s),
        "plan": _plan_json(s.plan),
        "slots": [_slot_json(x) for x in s.slots],
        "pool": _slot_json(s.pool) if s.pool is not None else None,
        "max_ctx": {k: int(v) for k, v in s.max_ctx.items()},
        "more_servers_fit": s.more_servers_fit,
        "more_slots_fit": s.more_slots_fit,
        "advice": [{"action": a.action, "title": a.title, "saves_bytes": int(a.saves_bytes),
                    "max_ctx": int(a.max_ctx), "command": a.command, "caveat": a.caveat,
                    "solves": a.solves, "n_ctx_slot": a.n_ctx_slot,
                    "turns_left": a.turns_left}
                   for a in s.advice],
        "notes": list(s.notes),
        "errors": list(s.errors),
        "managed_by": getattr(s, "managed_by", None),
        "refused_requests": _refused_json(s),
    }


def _advice_facts(adv: Advice) -> str:
    """What a piece of advice costs or frees, the context it gives, the turns it buys."""
    cost = (f"frees {_status_bytes(adv.saves_bytes)}" if adv.saves_bytes >= 0
            else f"costs {_status_bytes(-adv.saves_bytes)} more")
    facts = [f"solves {adv.solves}", cost]
    if adv.n_ctx_slot is not None:
        facts.append(f"{adv.n_ctx_slot} cells per slot")
    if adv.turns_left is not None:
        facts.append(f"full in ~{adv.turns_left} requests")
    facts.append(f"largest -c {adv.max_ctx}")
    return ", ".join(facts)


def _refused_json(s: ServerReport) -> JsonObject | None:
    r = s.refused_requests
    return None if r is None else {"count": r.count, "last_time": _num(r.last_time)}


def _stopped_json(s: StoppedServer) -> JsonObject:
    return {"key": s.key, "name": s.name, "url": s.url, "command": s.command,
            "stopped_time": _num(s.stopped_time), "last_fill": _num(s.last_fill)}


def _pool_forecast_json(f: PoolForecast) -> JsonObject:
    return {
        "device_id": f.device_id,
        "free_bytes": f.free_bytes,
        "bytes_per_minute": None if f.bytes_per_minute is None else int(f.bytes_per_minute),
        "seconds_left": _num(f.seconds_left, 1),
        "confidence": _num(f.confidence),
        "span_s": _num(f.span_s, 1),
        "floor_bytes": int(f.floor_bytes),
    }


def report_json(report: StatusReport) -> JsonObject:
    """The documented ``status`` object for a StatusReport (``docs/json-schema.md``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "time": _num(report.wall_time),
        "devices": [_device_json(d) for d in report.devices],
        "servers": [_server_json(s) for s in report.servers],
        "pool_forecasts": [_pool_forecast_json(f) for f in report.pool_forecasts],
        "stopped_servers": [_stopped_json(s) for s in report.stopped_servers],
        "errors": list(report.errors),
    }


def snapshot_json(snapshot: Snapshot, wall_time: float,
                  pool_forecasts: Sequence[PoolForecast] = (),
                  stopped: Sequence[StoppedServer] = ()) -> JsonObject:
    """The same object for a poll that found no server (no engine needed)."""
    # Discovery's errors quote other processes' command lines: escaped like the engine's.
    raw = list(snapshot.errors) + [e for e in snapshot.memory.errors
                                   if e not in snapshot.errors]
    errors = [sanitize(e) for e in raw]
    return {
        "schema_version": SCHEMA_VERSION,
        "time": _num(wall_time),
        "devices": [_device_json(d) for d in snapshot.memory.devices],
        "servers": [],
        "pool_forecasts": [_pool_forecast_json(f) for f in pool_forecasts],
        "stopped_servers": [_stopped_json(s) for s in stopped],
        "errors": errors,
    }


# ---------------------------------------------------------------------------- text


def _status_bytes(n: int | float | None) -> str:
    """Bytes in the status screen's narrow columns: ``1.5 GiB``, ``820 MiB``, ``8.0 GiB``."""
    return format_bytes(n, max_decimals=1)


def bar(fraction: float | None, width: int = 20) -> str:
    if fraction is None:
        return "[" + "?" * width + "]"
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    return "[" + "#" * full + "." * (width - full) + "]"


def _pool_forecast_text(f: PoolForecast | None) -> str | None:
    """``+300 MiB/min used: full in ~40 min (confidence 85%)``, None when not growing."""
    if f is None or f.seconds_left is None or f.bytes_per_minute is None:
        return None
    what = "at its floor" if f.seconds_left <= 0 else f"full in ~{format_duration(f.seconds_left)}"
    if f.floor_bytes and f.seconds_left > 0:
        what += f" (down to {_status_bytes(f.floor_bytes)} free)"
    return (f"+{_status_bytes(f.bytes_per_minute)}/min used over the last "
            f"{format_duration(f.span_s)}: {what}, confidence {f.confidence:.0%}")


def _event_text(e: MemoryEvent) -> str:
    share = f" ({e.share:.0%} of the pool)" if e.share else ""
    return (f"{e.name or 'a process'} (pid {e.pid}) took {_status_bytes(e.grown_bytes)}{share} "
            f"within {format_duration(e.window_s)}; it holds {_status_bytes(e.used_bytes)}")


def _device_lines(devices: Iterable[DeviceMemory], pool_forecasts: Iterable[PoolForecast] = (),
                  memory_events: Iterable[MemoryEvent] = ()) -> list[str]:
    forecasts = {f.device_id: f for f in pool_forecasts}
    events: dict[str, list[MemoryEvent]] = {}
    for e in memory_events:
        events.setdefault(e.device_id, []).append(e)
    lines = ["Memory"]
    for d in devices:
        label = f"{d.name} ({d.id})"
        if d.total_bytes and d.used_bytes is not None:
            frac = d.used_bytes / d.total_bytes
            lines.append(f"  {label:<34} {bar(frac)} {_status_bytes(d.used_bytes)} / "
                         f"{_status_bytes(d.total_bytes)} used, {_status_bytes(d.free_bytes)} free"
                         + ("  (unified)" if d.unified and d.kind != "host"
                            and "unified" not in d.name.lower() else ""))
        else:
            lines.append(f"  {label:<34} {bar(None)} unknown")
        if d.error:
            lines.append(f"    ! {d.error}")
        if d.hint:
            lines.append(f"    hint: {d.hint}")
        trend = _pool_forecast_text(forecasts.get(d.id))
        if trend:
            lines.append(f"    trend: {trend}")
        for e in events.get(d.id, ()):
            lines.append(f"    ! {_event_text(e)}")
    if len(lines) == 1:
        lines.append("  (no memory source could be read)")
    return lines


def _forecast_text(f: Forecast) -> str:
    if f.turns_left == 0:
        return "FULL"
    if f.turns_left is None:
        if f.turns_seen == 0:
            return "forecast after the first finished request"
        return "not growing"
    # turns_left counts the request that hits the wall: 1 means the next one does.
    parts = ["the next request fills it" if f.turns_left == 1
             else f"full in ~{f.turns_left} requests"]
    if f.seconds_left is not None:
        parts.append(f"~{format_duration(f.seconds_left)}")
    parts.append(f"+{f.tokens_per_turn:.0f}/turn, confidence {f.confidence:.0%}")
    return ", ".join(parts)


def _slot_line(label: str, s: SlotReport) -> str:
    frac = (s.tokens / s.n_ctx) if (s.tokens is not None and s.n_ctx) else None
    tokens = "?" if s.tokens is None else str(s.tokens)
    state = "busy" if s.is_processing else "idle"
    pct = f"{frac:4.0%}" if frac is not None else "   ?"
    return (f"    {label:<6} {bar(frac, 16)} {tokens:>7}/{s.n_ctx:<7} {pct} {state}  "
            f"{_forecast_text(s.forecast)}")


def _server_lines(s: ServerReport, footnotes: list[str]) -> list[str]:
    who = s.label or s.name
    head = f"  {who}" if who != s.url else ""
    if s.pid is not None:
        head += f"  pid {s.pid}"
    head += f"  {s.url}  [{s.health}]"
    lines = [head]
    cfg = _config_json(s)
    if cfg is not None and cfg.get("n_ctx") is not None:
        layout = ("unified pool" if cfg["kv_unified"]
                  else f"{cfg['n_seq']} x {cfg['n_ctx_seq']} cells")
        lines.append(f"    config   -c {cfg['n_ctx']}  {cfg['n_seq']} slot(s), {layout}  "
                     f"cache K {cfg['cache_type_k']} / V {cfg['cache_type_v']}  "
                     f"FA {cfg['flash_attn']}")
    for a in s.memory:
        parts = [f"weights {_status_bytes(a.weights_bytes)}", f"KV {_status_bytes(a.kv_bytes)}"]
        if a.recurrent_bytes:
            parts.append(f"recurrent {_status_bytes(a.recurrent_bytes)}")
        parts.append(f"compute {_status_bytes(a.compute_bytes)}")
        if a.measured_bytes is not None:
            parts.append(f"overhead {_status_bytes(a.overhead_bytes)}")
            if a.unattributed_bytes:
                parts.append(f"unattributed {_status_bytes(a.unattributed_bytes)}")
            head = f"{a.device_id}: {_status_bytes(a.measured_bytes)} ="
        else:
            head = f"{a.device_id}: modeled"
        lines.append(f"    memory   {head} " + " + ".join(parts))
        note = a.note
        if note:
            for common in footnotes:
                if common in note:
                    note = note.replace("; " + common, "").replace(common, "")
                    head = head.replace(":", "*:", 1)
                    lines[-1] = f"    memory   {head} " + " + ".join(parts)
        if note:
            lines.append(f"             note: {note}")
    if s.pool is not None:
        lines.append(_slot_line("pool", s.pool))
    for slot in s.slots:
        lines.append(_slot_line(f"#{slot.id}", slot))
    refused = s.refused_requests
    if refused is not None and refused.count:
        when = ("" if refused.last_time is None else
                ", last at " + time.strftime("%H:%M:%S", time.localtime(refused.last_time)))
        lines.append(f"    refused  {refused.count} request(s) over the slot's context "
                     f"(exceed_context_size_error){when}")
    if s.max_ctx:
        ctx = ", ".join(f"{k} {v}" for k, v in s.max_ctx.items())
        more = ""
        if s.more_servers_fit is not None:
            more = f"; {s.more_servers_fit} more server(s) like this fit"
        slots_fit = s.more_slots_fit
        if slots_fit is not None:
            more += f", or {slots_fit} more slot(s)"
        lines.append(f"    restart  largest -c that fits: {ctx}{more}")
    for i, adv in enumerate(s.advice, 1):
        lines.append(f"    advice {i}. {adv.title}: {_advice_facts(adv)}")
        lines.append(f"             $ {adv.command}")
        lines.append(f"             {adv.caveat}")
    for n in s.notes:
        lines.append(f"    note: {n}")
    for e in s.errors:
        lines.append(f"    ! {e}")
    return lines


def render_text(devices: Sequence[DeviceMemory], servers: Sequence[ServerReport],
                errors: Sequence[str], wall_time: float,
                pool_forecasts: Sequence[PoolForecast] = (),
                memory_events: Sequence[MemoryEvent] = (),
                stopped: Sequence[StoppedServer] = ()) -> str:
    """The readable status screen."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall_time))
    lines = [f"kvwall status  {stamp}", ""]
    lines += _device_lines(devices, pool_forecasts, memory_events)
    lines.append("")
    if servers:
        from kvwall.budget.attribution import RSS_NOTE

        footnotes = [RSS_NOTE]
        lines.append(f"Servers ({len(servers)})")
        for s in servers:
            lines += _server_lines(s, footnotes)
            lines.append("")
        if any("*:" in line for line in lines):
            lines.append(f"* {RSS_NOTE}.")
    else:
        lines.append("No llama.cpp server found (running llama-server processes, or --url).")
    lines += _stopped_lines(stopped)
    for e in errors:
        lines.append(f"! {e}")
    return "\n".join(lines).rstrip() + "\n"


def _stopped_lines(stopped: Sequence[StoppedServer]) -> list[str]:
    """``stopped 19:15, last fill 71%`` per server the history knows that is gone."""
    if not stopped:
        return []
    lines = ["", f"Stopped ({len(stopped)})"]
    for s in stopped:
        fill = "" if s.last_fill is None else f", last fill {s.last_fill:.0%}"
        stamp = time.strftime("%H:%M", time.localtime(s.stopped_time))
        lines.append(f"  {s.name}  {s.url}  stopped {stamp}{fill}")
        if s.command:
            lines.append(f"             $ {s.command}")
    return lines


# ---------------------------------------------------------------------------- loop


class StatusSession:
    """One poller and (once a server shows up) one engine, kept across polls.

    Args:
        poller: object with ``poll() -> Snapshot`` and ``close()``.
        engine_factory: builds the engine on first need (importing the memory model
            lazily keeps ``kvwall status`` fast when no server runs).
        clock: wall-clock seconds for the report time.
        history: the history store: the engine's trackers are seeded from it when the
            engine is built (a one-shot status forecasts from what an earlier watch
            saw), stopped servers are listed from it, and with ``record`` every report
            is written into it.
        record: write each report into ``history`` (``--watch``).
        monotonic: the poller's clock, to map stored epoch times onto the trackers'.
    """

    def __init__(self, poller: SnapshotSource, engine_factory: Callable[[], Engine] | None = None,
                 clock: Callable[[], float] = time.time, *, history: HistoryStore | None = None,
                 record: bool = False,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.poller = poller
        self._engine_factory = engine_factory
        self.engine: Engine | None = None
        self._clock = clock
        self._monotonic = monotonic
        self.history = history
        self._record = record
        # Pool trends build up before a server shows up, and go on in its engine.
        from kvwall.budget.forecast import PoolTracker

        self.pool_tracker = PoolTracker()

    def poll(self) -> tuple[JsonObject, str, set[str]]:
        """One poll: (json object, text screen, API keys to keep out of the output)."""
        snapshot = self.poller.poll()
        secrets = {s.process.api_key for s in snapshot.servers if s.process.api_key}
        if not snapshot.servers and self.engine is None:
            wall = self._clock()
            devices = snapshot.memory.devices
            try:
                self.pool_tracker.observe(devices, snapshot.memory.timestamp)
                forecasts = self.pool_tracker.forecasts(devices)
            except Exception:  # noqa: BLE001 - a forecast never costs the screen
                forecasts = ()
            stopped = self._stopped((), wall)
            obj = snapshot_json(snapshot, wall, forecasts, stopped)
            text = render_text(devices, (), obj["errors"], wall, forecasts, stopped=stopped)
            return obj, text, secrets
        report = self._with_history(self._engine(snapshot).analyse(snapshot))
        text = render_text(report.devices, report.servers, report.errors, report.wall_time,
                           report.pool_forecasts, report.memory_events,
                           report.stopped_servers)
        return report_json(report), text, secrets

    def _stopped(self, servers: Sequence[ServerReport], wall: float
                 ) -> tuple[StoppedServer, ...]:
        if self.history is None:
            return ()
        try:
            return self.history.stopped(servers, wall)
        except Exception as e:  # noqa: BLE001 - history is optional; the screen is not
            log.warning("history read failed: %s", e)
            return ()

    def _with_history(self, report: StatusReport) -> StatusReport:
        """Record the report (``--watch``) and add the stopped servers to it."""
        if self.history is None:
            return report
        if self._record:
            try:
                self.history.record(report)
            except Exception as e:  # noqa: BLE001 - a lost sample never stops the watch
                log.warning("history write failed: %s", e)
        from dataclasses import replace

        return replace(report,
                       stopped_servers=self._stopped(report.servers, report.wall_time))

    def _engine(self, snapshot: Snapshot) -> Engine:
        """The engine, built on the first poll that finds a server (seeded from history)."""
        if self.engine is None:
            if self._engine_factory is None:
                from kvwall.budget.engine import Engine

                self.engine = Engine(clock=self._clock, pool_tracker=self.pool_tracker)
            else:
                self.engine = self._engine_factory()
            self._seed(self.engine, snapshot)
        return self.engine

    def _seed(self, engine: Engine, snapshot: Snapshot) -> None:
        """The trackers fed with the stored polls of the servers this poll found."""
        if self.history is None:
            return
        from kvwall.budget.history import seed_trackers
        from kvwall.monitors.discovery import server_key

        try:
            seed_trackers(self.history, engine.tracker, engine.pool_tracker,
                          now_wall=self._clock(), now_monotonic=self._monotonic(),
                          keys=[server_key(s.process) for s in snapshot.servers])
        except Exception as e:  # noqa: BLE001 - no history is a fresh start, not an error
            log.warning("history replay failed: %s", e)

    def close(self) -> None:
        self.poller.close()
        if self.history is not None:
            self.history.close()


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    return text


def _default_poller(urls: Sequence[str], keys: Mapping[str, str],
                    deadline: float | None) -> Poller:
    from kvwall.monitors.devices import MemorySources
    from kvwall.monitors.poller import POLL_DEADLINE_S, Poller

    return Poller(memory_sources=MemorySources(), extra_urls=urls, api_keys=dict(keys),
                  deadline_s=POLL_DEADLINE_S if deadline is None else deadline)


def _read_args(args: argparse.Namespace, environ: Mapping[str, str]
               ) -> tuple[list[str], dict[str, str], float | None, float | None]:
    """(URLs to poll, API key per URL, --watch seconds, --deadline seconds).

    Keys come from ``environ``'s KVWALL_API_KEY, --api-key-file and --api-key.

    Raises:
        UsageError: a bad value (one line, exit code 2).
    """
    urls = _check_urls(args.url)
    try:
        keys = api_keys(args.api_key, args.api_key_file, environ)
    except KeySourceError as e:
        raise UsageError(str(e)) from None
    watch = _positive_float(args.watch, "--watch", 0.2) if args.watch is not None else None
    deadline = (_positive_float(args.deadline, "--deadline", 0.05)
                if args.deadline is not None else None)
    for url in keys:
        if url not in urls:
            urls.append(url)  # a key for a URL means: poll that URL
    return urls, keys, watch, deadline


def _remotes(args: argparse.Namespace, deadline: float | None, secrets: set[str]
             ) -> RemoteGroup | None:
    """The ``--remote`` readers; None (and nothing imported) without ``--remote``."""
    if not args.remote:
        return None
    from kvwall.app.headless.remote_view import remote_group

    return remote_group(args.remote, args.remote_token_file, deadline, secrets)


def _open_history(args: argparse.Namespace, injected: bool,
                  path: str | os.PathLike[str] | None) -> HistoryStore | None:
    """The history store, None with ``--no-history`` (or for an injected poller, unless
    a path is given: a test's fake servers stay out of the user's history)."""
    if args.no_history or (injected and path is None):
        return None
    from kvwall.budget.history import open_store

    store, message = open_store(path)
    if message:
        sys.stderr.write(f"kvwall status: {message}\n")
    return store


def main(argv: Sequence[str] | None = None, *, poller: SnapshotSource | None = None,
         out: IO[str] | None = None, sleep: Callable[[float], None] = time.sleep,
         monotonic: Callable[[], float] = time.monotonic,
         environ: Mapping[str, str] | None = None,
         history_path: str | os.PathLike[str] | None = None) -> int:
    """Run ``kvwall status``; returns the exit code (0, or 2 for a bad argument)."""
    out = out or sys.stdout
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        urls, keys, watch, deadline = _read_args(args, os.environ if environ is None
                                                 else environ)
    except UsageError as e:
        sys.stderr.write(f"kvwall status: {e}\n")
        return EXIT_USAGE
    secrets = set(keys.values())
    try:
        remotes = _remotes(args, deadline, secrets)
    except ValueError as e:  # a bad --remote URL or token file (never the token itself)
        sys.stderr.write(f"kvwall status: {e}\n")
        return EXIT_USAGE
    try:
        session = StatusSession(poller if poller is not None
                                else _default_poller(urls, keys, deadline),
                                history=_open_history(args, poller is not None, history_path),
                                record=watch is not None, monotonic=monotonic)
    except Exception as e:  # noqa: BLE001 - a one-line message, never a traceback
        sys.stderr.write(_redact(f"kvwall status: cannot start monitoring: {e}\n", secrets))
        return EXIT_FAILURE
    interactive = watch is not None and not args.json and hasattr(out, "isatty") and out.isatty()
    count = 0
    try:
        next_at = monotonic()
        while True:
            obj, text, found = session.poll()
            if remotes is not None:
                from kvwall.app.headless.remote_view import with_remotes

                obj, text = with_remotes(obj, text, remotes)
            secrets |= found
            if args.json:
                payload = json.dumps(obj, separators=(",", ":") if watch else None,
                                     indent=None if watch else 2)
                out.write(_redact(payload, secrets) + "\n")
            else:
                if interactive:
                    out.write("\x1b[H\x1b[2J")
                elif watch is not None and count:
                    out.write("\n")
                out.write(_redact(text, secrets))
            out.flush()
            count += 1
            if watch is None or (args.count is not None and count >= args.count):
                return EXIT_OK
            next_at += watch
            delay = next_at - monotonic()
            if delay < 0:  # a slow poll: do not try to catch up
                next_at = monotonic()
                delay = 0
            sleep(delay)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - the poller and engine never raise; belt and braces
        sys.stderr.write(_redact(f"kvwall status: {type(e).__name__}: {e}\n", secrets))
        return EXIT_FAILURE
    finally:
        session.close()
