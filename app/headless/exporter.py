"""``kvwall exporter``: Prometheus metrics and ``/status.json`` from one shared poll loop.

One background thread polls (the same poller and engine as ``kvwall status --watch``) every
``--interval`` seconds and keeps the latest result; every request only reads that result,
so ten scrapers cost what one does. ``/metrics`` is rendered by ``prometheus_client`` from
custom collectors, ``/status.json`` is the ``kvwall status --json`` object, ``/`` a short
index. Loopback by default; ``--token-file`` requires a bearer token. API keys, and the
token, never appear in anything served or logged. Qt-free.
"""

from __future__ import annotations

import argparse
import hmac
import html
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kvwall.app.headless.api_keys import ENV_VAR, KEY_HELP, KeySourceError, api_keys
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9766
DEFAULT_INTERVAL_S = 2.0
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
COMPONENTS = ("weights", "kv", "recurrent", "compute", "overhead", "unattributed", "measured")
POOL_SLOT = "pool"  # the slot label of a unified KV pool (all slots share it)
REDACTED = "<redacted>"

DESCRIPTION = """\
Serve kvwall's view of this machine to Prometheus (/metrics) and to other kvwall instances
(/status.json, read by `kvwall status --remote URL`). One poll loop serves every client."""


class UsageError(ValueError):
    """A bad command-line value (one line, exit code 2)."""


# ---------------------------------------------------------------------------- poll loop


@dataclass(frozen=True)
class Observation:
    """The latest poll, shared by every request.

    Attributes:
        obj: the ``kvwall status --json`` object (not yet redacted).
        snapshot: the poller's snapshot behind it (build info, slot task ids), or None.
        secrets: API keys to keep out of anything served.
        poll_seconds: how long the poll took.
        refused: server URL -> requests it refused because the context was exceeded.
    """

    obj: Mapping[str, Any]
    snapshot: Any = None
    secrets: frozenset[str] = frozenset()
    poll_seconds: float = 0.0
    refused: Mapping[str, int] = field(default_factory=dict)


class _CapturingPoller:
    """Wraps a poller to keep the last snapshot it returned (StatusSession hides it)."""

    def __init__(self, poller: Any) -> None:
        self.poller = poller
        self.last: Any = None

    def poll(self) -> Any:
        self.last = self.poller.poll()
        return self.last

    def close(self) -> None:
        self.poller.close()


def refused_counts(obj: Mapping[str, Any]) -> dict[str, int]:
    """Server URL -> requests it refused (context exceeded), from the status object's
    ``servers[].refused_requests`` (the engine counts them from ``/slots``: the task id
    advances while the slot's cells do not; see docs/llamacpp-notes.md)."""
    counts: dict[str, int] = {}
    for s in obj.get("servers", ()):
        refused = s.get("refused_requests") or {}
        counts[_text(s.get("url"))] = int(refused.get("count") or 0)
    return counts


def _default_session(urls: Sequence[str], keys: Mapping[str, str],
                     deadline: float | None) -> tuple[Any, _CapturingPoller]:
    from kvwall.app.headless.status import StatusSession, _default_poller

    poller = _CapturingPoller(_default_poller(urls, keys, deadline))
    return StatusSession(poller), poller


class SharedPoll:
    """One poll loop in a background thread; readers get the latest :class:`Observation`.

    Args:
        session: object with ``poll() -> (obj, text, secrets)`` and ``close()``
            (``kvwall.app.headless.status.StatusSession``).
        capture: the poller wrapper whose ``last`` is the snapshot behind each poll.
        interval_s: seconds between polls.
        secrets: keys known up front (``--api-key``), kept out of everything served.
        monotonic: clock (injectable).
    """

    def __init__(self, session: Any, capture: _CapturingPoller | None = None, *,
                 interval_s: float = DEFAULT_INTERVAL_S, secrets: Iterable[str] = (),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.capture = capture
        self.interval_s = interval_s
        self._secrets = frozenset(s for s in secrets if s)
        self._monotonic = monotonic
        self._latest: Observation | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0

    def poll_once(self) -> Observation:
        """Poll now and publish the result (the loop calls this; tests may too)."""
        started = self._monotonic()
        try:
            obj, _text, found = self.session.poll()
        except Exception as e:  # noqa: BLE001 - a failed poll is reported, never fatal
            obj = {"schema_version": 1, "time": time.time(), "devices": [], "servers": [],
                   "pool_forecasts": [], "errors": [f"poll failed: {type(e).__name__}: {e}"]}
            found = set()
        snapshot = self.capture.last if self.capture is not None else None
        self._secrets = self._secrets | frozenset(s for s in found if s)
        observation = Observation(obj, snapshot, self._secrets, self._monotonic() - started,
                                  refused_counts(obj))
        self._latest = observation
        self.polls += 1
        self._ready.set()
        return observation

    def latest(self, wait_s: float = 10.0) -> Observation | None:
        """The latest observation; waits up to ``wait_s`` for the first poll."""
        self._ready.wait(wait_s)
        return self._latest

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kvwall-exporter-poll",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = self._monotonic()
        while not self._stop.is_set():
            self.poll_once()
            next_at += self.interval_s
            delay = next_at - self._monotonic()
            if delay < 0:  # a slow poll: do not try to catch up
                next_at, delay = self._monotonic(), 0.0
            self._stop.wait(delay)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.session.close()


# ---------------------------------------------------------------------------- metrics


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def device_families(obj: Mapping[str, Any]) -> list[Metric]:
    """``kvwall_device_memory_{total,used,free}_bytes{device, name, kind, uuid}``."""
    labels = ["device", "name", "kind", "uuid"]
    families = {
        part: GaugeMetricFamily(f"kvwall_device_memory_{part}_bytes",
                                f"{part.capitalize()} memory of the pool (bytes)",
                                labels=labels)
        for part in ("total", "used", "free")
    }
    for d in obj.get("devices", ()):
        values = [_text(d.get("id")), _text(d.get("name")), _text(d.get("kind")),
                  _text(d.get("uuid"))]
        for part, family in families.items():
            value = _finite(d.get(f"{part}_bytes"))
            if value is not None:
                family.add_metric(values, value)
    return list(families.values())


def server_memory_family(obj: Mapping[str, Any]) -> Metric:
    """``kvwall_server_memory_bytes{server, model, device, component}`` per pool."""
    family = GaugeMetricFamily(
        "kvwall_server_memory_bytes",
        "A server's memory on one pool by component: weights, kv, recurrent, compute, "
        "overhead, unattributed (attributed by llama.cpp's memory model) or measured",
        labels=["server", "model", "device", "component"])
    for s in obj.get("servers", ()):
        for d in (s.get("memory") or {}).get("devices", ()):
            for component in COMPONENTS:
                value = _finite(d.get(f"{component}_bytes"))
                if value is not None:
                    family.add_metric([_text(s.get("url")), _text(s.get("name")),
                                       _text(d.get("device_id")), component], value)
    return family


def _slot_rows(server: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    pool = server.get("pool")
    if pool is not None:
        yield POOL_SLOT, pool
    for slot in server.get("slots", ()):
        yield str(slot.get("id")), slot


def slot_families(obj: Mapping[str, Any]) -> list[Metric]:
    """Context fill, capacity and forecast per slot (``slot="pool"`` for unified KV)."""
    labels = ["server", "slot"]
    tokens = GaugeMetricFamily("kvwall_slot_context_tokens",
                               "KV cells the slot holds now", labels=labels)
    capacity = GaugeMetricFamily("kvwall_slot_context_capacity_tokens",
                                 "The slot's context limit (cells)", labels=labels)
    turns = GaugeMetricFamily("kvwall_slot_turns_left",
                              "Requests until the slot is full, at the growth seen so far "
                              "(absent while unknown)", labels=labels)
    seconds = GaugeMetricFamily("kvwall_slot_seconds_left",
                                "Seconds until the slot is full, at the current rate "
                                "(absent while unknown)", labels=labels)
    for s in obj.get("servers", ()):
        for slot_id, slot in _slot_rows(s):
            values = [_text(s.get("url")), slot_id]
            forecast = slot.get("forecast") or {}
            for family, value in ((tokens, slot.get("tokens")), (capacity, slot.get("n_ctx")),
                                  (turns, forecast.get("turns_left")),
                                  (seconds, forecast.get("seconds_left"))):
                number = _finite(value)
                if number is not None:
                    family.add_metric(values, number)
    return [tokens, capacity, turns, seconds]


def _build_infos(snapshot: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for state in getattr(snapshot, "servers", ()) or ():
        props = state.props or {}
        build = props.get("build_info")
        if isinstance(build, str):
            out[state.process.url] = build
    return out


def server_families(observation: Observation) -> list[Metric]:
    """Per server: configuration info, up, and requests that hit the context wall."""
    obj = observation.obj
    builds = _build_infos(observation.snapshot)
    info = InfoMetricFamily("kvwall_server", "A llama.cpp server's configuration",
                            labels=["server", "model"])
    up = GaugeMetricFamily("kvwall_server_up", "1 when the server answers (health ok)",
                           labels=["server", "model"])
    refused = CounterMetricFamily(
        "kvwall_server_refused_requests",
        "Requests the server refused because the prompt exceeded the slot's context "
        "(exceed_context_size_error), since the exporter started", labels=["server"])
    for s in obj.get("servers", ()):
        url, model = _text(s.get("url")), _text(s.get("name"))
        cfg = s.get("config") or {}
        info.add_metric([url, model], {
            "ctk": _text(cfg.get("cache_type_k")), "ctv": _text(cfg.get("cache_type_v")),
            "fa": _text(cfg.get("flash_attn")), "np": _text(cfg.get("n_seq")),
            "kv_unified": _text(cfg.get("kv_unified")), "build": builds.get(url, ""),
            "managed_by": _text(s.get("managed_by")),
        })
        up.add_metric([url, model], 1.0 if s.get("health") == "ok" else 0.0)
        refused.add_metric([url], float(observation.refused.get(url, 0)))
    return [info, up, refused]


def pool_family(obj: Mapping[str, Any]) -> Metric:
    """``kvwall_pool_seconds_left{device}``: when a pool's free memory runs out."""
    family = GaugeMetricFamily(
        "kvwall_pool_seconds_left",
        "Seconds until the pool's free memory runs out at its recent trend "
        "(absent while flat or unknown)", labels=["device"])
    for f in obj.get("pool_forecasts", ()):
        value = _finite(f.get("seconds_left"))
        if value is not None:
            family.add_metric([_text(f.get("device_id"))], value)
    return family


class StatusCollector(Collector):
    """Renders the shared poll's latest observation as kvwall_* metric families."""

    def __init__(self, shared: SharedPoll) -> None:
        self.shared = shared

    def collect(self) -> Iterable[Metric]:
        observation = self.shared.latest()
        if observation is None:
            return []
        obj = observation.obj
        poll = GaugeMetricFamily("kvwall_poll_duration_seconds",
                                 "How long kvwall's latest poll took")
        poll.add_metric([], observation.poll_seconds)
        stamp = GaugeMetricFamily("kvwall_poll_timestamp_seconds",
                                  "Wall-clock time of kvwall's latest poll")
        stamp.add_metric([], _finite(obj.get("time")) or 0.0)
        return [*device_families(obj), server_memory_family(obj), *slot_families(obj),
                *server_families(observation), pool_family(obj), poll, stamp]


def build_registry(shared: SharedPoll) -> CollectorRegistry:
    """A registry holding only kvwall's collector (no process metrics of the exporter)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(shared))
    return registry


# ---------------------------------------------------------------------------- HTTP


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret of 4 characters or more replaced by ``<redacted>``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


INDEX_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>kvwall exporter</title></head>
<body><h1>kvwall exporter</h1>
<p>llama.cpp memory, KV cache and context forecasts for {host}.</p>
<ul><li><a href="metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="status.json">/status.json</a>: the <code>kvwall status --json</code> object
(read by <code>kvwall status --remote URL</code>)</li></ul>
</body></html>
"""


class RenderCache:
    """The latest poll's ``/metrics`` text, rendered once and served to every scraper."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Observation | None = None
        self._body = b""

    def metrics(self, registry: CollectorRegistry, shared: SharedPoll,
                secrets: Callable[[], Iterable[str]]) -> bytes:
        with self._lock:
            observation = shared.latest()
            if observation is None or observation is not self._key:
                text = generate_latest(registry).decode()
                self._body = redact(text, secrets()).encode()
                self._key = observation
            return self._body


@dataclass(frozen=True)
class ExporterConfig:
    """What the HTTP server needs: the poll, the registry and the optional token."""

    shared: SharedPoll
    registry: CollectorRegistry
    token: str | None = None
    hostname: str = "this machine"
    cache: RenderCache = field(default_factory=RenderCache)


class ExporterHandler(BaseHTTPRequestHandler):
    """GET /, /metrics, /status.json; bearer-token check; never logs headers."""

    config: ExporterConfig  # set on the subclass make_server builds
    server_version = "kvwall-exporter"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str,
              extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        token = self.config.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), token.encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self._authorized():
            self._send(401, b"bearer token required\n", "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Bearer realm="kvwall"'})
            return
        if path == "/metrics":
            metrics = self.config.cache.metrics(self.config.registry, self.config.shared,
                                                self._secrets)
            self._send(200, metrics, CONTENT_TYPE_LATEST)
        elif path == "/status.json":
            observation = self.config.shared.latest()
            obj = observation.obj if observation is not None else {}
            text = redact(json.dumps(obj, separators=(",", ":")), self._secrets())
            self._send(200, text.encode(), "application/json")
        elif path in ("/", "/index.html"):
            page = INDEX_HTML.format(host=html.escape(self.config.hostname))
            self._send(200, page.encode(), "text/html; charset=utf-8")
        else:
            self._send(404, b"not found: try /metrics or /status.json\n",
                       "text/plain; charset=utf-8")

    def _secrets(self) -> frozenset[str]:
        observation = self.config.shared.latest(0)
        known = observation.secrets if observation is not None else frozenset()
        token = self.config.token
        return known | {token} if token else known


class _ThreadingHTTPServer6(ThreadingHTTPServer):
    """An IPv6 listener (``--listen [::1]:9766``)."""

    address_family = socket.AF_INET6


def make_server(config: ExporterConfig, host: str, port: int) -> ThreadingHTTPServer:
    """Bind the exporter's HTTP server (port 0 picks a free one). Raises OSError."""
    handler = type("BoundExporterHandler", (ExporterHandler,), {"config": config})
    server_class = _ThreadingHTTPServer6 if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), handler)
    server.daemon_threads = True
    return server


# ---------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvwall exporter", description=DESCRIPTION,
                                epilog=KEY_HELP)
    p.add_argument("--listen", metavar="HOST:PORT", default=None,
                   help=f"address to serve on (default {DEFAULT_HOST}:{DEFAULT_PORT}, "
                        "loopback only; any other address must be given here explicitly)")
    p.add_argument("--token-file", metavar="PATH", default=None,
                   help="require 'Authorization: Bearer TOKEN', TOKEN read from PATH")
    p.add_argument("--interval", metavar="SECONDS", type=float, default=DEFAULT_INTERVAL_S,
                   help=f"seconds between polls (default {DEFAULT_INTERVAL_S:g})")
    p.add_argument("--url", metavar="URL", action="append", default=[],
                   help="also poll this llama.cpp server; repeatable")
    p.add_argument("--api-key-file", metavar="URL=PATH", action="append", default=[],
                   help="API key for the server at URL, the first line of PATH; repeatable")
    p.add_argument("--api-key", metavar="URL=KEY", action="append", default=[],
                   help="API key for the server at URL only; repeatable. Never served, but "
                        f"visible in `ps`: prefer --api-key-file or {ENV_VAR}")
    p.add_argument("--deadline", metavar="SECONDS", type=float, default=None,
                   help="servers that have not answered by then are 'not responding'")
    return p


def parse_listen(text: str | None) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9766`` for IPv6; ``:PORT`` = loopback) -> (host, port)."""
    if text is None:
        return DEFAULT_HOST, DEFAULT_PORT
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise UsageError(f"--listen: expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"--listen: {port_text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"--listen: port {port} is out of range")
    return host, port


def read_token(path: str) -> str:
    """The bearer token in ``path`` (first line, stripped). Raises UsageError."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except OSError as e:
        raise UsageError(f"--token-file: cannot read {path!r} ({e.strerror or e})") from None
    if len(token) < 8:
        raise UsageError(f"--token-file: {path!r} holds no token of 8 characters or more")
    return token


@dataclass(frozen=True)
class _Options:
    host: str
    port: int
    token: str | None
    interval_s: float
    urls: list[str]
    keys: dict[str, str]
    deadline: float | None


def _options(argv: Sequence[str]) -> _Options:
    args = _parser().parse_args(list(argv))
    host, port = parse_listen(args.listen)
    token = read_token(args.token_file) if args.token_file else None
    if not math.isfinite(args.interval) or args.interval < 0.2:
        raise UsageError("--interval: must be at least 0.2 seconds")
    if args.deadline is not None and not (math.isfinite(args.deadline) and args.deadline > 0):
        raise UsageError("--deadline: must be a positive number of seconds")
    urls = [u.rstrip("/") for u in args.url]
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise UsageError(f"--url: {u!r} is not an http:// or https:// URL")
    try:
        keys = api_keys(args.api_key, args.api_key_file, os.environ)
    except KeySourceError as e:
        raise UsageError(str(e)) from None
    urls += [u for u in keys if u not in urls]
    return _Options(host, port, token, args.interval, urls, keys, args.deadline)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(opts: _Options, *, session: Any = None, ready: Callable[[str], None] | None = None,
          stop: threading.Event | None = None) -> int:
    """Poll and serve until ``stop`` is set (or Ctrl-C); returns the exit code."""
    capture = None
    if session is None:
        session, capture = _default_session(opts.urls, opts.keys, opts.deadline)
    shared = SharedPoll(session, capture, interval_s=opts.interval_s, secrets=opts.keys.values())
    config = ExporterConfig(shared, build_registry(shared), opts.token, socket.gethostname())
    try:
        server = make_server(config, opts.host, opts.port)
    except OSError as e:
        shared.close()
        sys.stderr.write(f"kvwall exporter: cannot listen on {opts.host}:{opts.port}: "
                         f"{e.strerror or e}\n")
        return EXIT_FAILURE
    host, port = str(server.server_address[0]), server.server_address[1]
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    if not _is_loopback(opts.host) and opts.token is None:
        sys.stderr.write("kvwall exporter: listening beyond this machine without "
                         "--token-file: anyone who can reach it can read it\n")
    shared.start()
    thread = threading.Thread(target=server.serve_forever, name="kvwall-exporter-http",
                              daemon=True)
    thread.start()
    sys.stderr.write(f"kvwall exporter: serving {where}metrics and {where}status.json\n")
    sys.stderr.flush()
    if ready is not None:
        ready(where)
    try:
        while not (stop or threading.Event()).wait(1.0):
            pass  # a timed wait lets Ctrl-C in on every platform
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        shared.close()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kvwall exporter``; returns the exit code (0, 1, or 2 for a bad argument)."""
    try:
        opts = _options(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        sys.stderr.write(f"kvwall exporter: {e}\n")
        return EXIT_USAGE
    import signal

    stop = threading.Event()
    # SIGTERM (systemd, docker stop) ends the loop like Ctrl-C: the poller closes cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        return serve(opts, stop=stop)
    except KeyboardInterrupt:
        return EXIT_OK


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ExporterConfig",
    "Observation",
    "SharedPoll",
    "StatusCollector",
    "build_registry",
    "main",
    "make_server",
    "parse_listen",
    "read_token",
    "redact",
    "refused_counts",
    "serve",
]
