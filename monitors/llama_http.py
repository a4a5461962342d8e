"""Talk to one llama-server over HTTP (stdlib only): pure parsers and a one-at-a-time client."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import urlsplit

from kvwall.monitors.snapshot import (
    HEALTH_ERROR,
    HEALTH_LOADING,
    HEALTH_OK,
    HEALTH_ROUTER,
    HEALTH_SLEEPING,
    HEALTH_TIMEOUT,
    HEALTH_UNAUTHORIZED,
    HEALTH_UNREACHABLE,
    Health,
    JSONObject,
    ServerProcess,
    ServerState,
    SlotState,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_T = TypeVar("_T")

CONNECT_TIMEOUT_S = 0.5
READ_TIMEOUT_S = 1.5
MAX_BODY_BYTES = 8 << 20
BUSY_MESSAGE = "previous request still running"
# Every GET /slots is a task that restarts a server's --sleep-idle-seconds timer (only
# /health, /props, /models and /metrics leave it alone). While such a server's slots are
# all idle, /slots is read again only when the server shows activity, or at the latest
# this long after the sleep delay, so polling never keeps it awake.
SLEEP_REFRESH_MARGIN_S = 5.0
# CPU time a server's main thread (the one that decodes) uses between two polls that
# means "it is working": answering /props costs it about 3 us, /slots or /metrics about
# 0.1 ms, the smallest request on a tiny model over 10 ms.
CPU_ACTIVITY_S = 0.002
# /metrics counters that move with every request.
_ACTIVITY_METRICS = ("prompt_tokens_total", "prompt_tokens_cached_total",
                     "tokens_predicted_total", "n_decode_total", "requests_processing",
                     "requests_deferred")


class ResponseError(ValueError):
    """A server answered something that is not what that endpoint returns."""


# ---------------------------------------------------------------------------- parsers


def _snippet(body: bytes | str, n: int = 60) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    text = " ".join(body.split())
    return repr(text[:n] + ("..." if len(text) > n else ""))


def _json(body: bytes | str, what: str) -> object:
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ResponseError(f"{what}: not UTF-8 text ({e.reason})") from None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        raise ResponseError(f"{what}: not JSON: {_snippet(body)}") from None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


# llama.cpp's own limits: LLAMA_MAX_SEQ sequences (so slots) per context; contexts and
# token counts are int32; sizes and parameter counts int64. A number outside them is
# not something llama.cpp sends, and a huge one (1e308) would overflow float arithmetic.
LLAMA_MAX_SEQ = 256
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# /v1/models meta fields that are counts or sizes.
_META_COUNTS = ("n_ctx_train", "n_vocab", "n_embd", "n_params", "size")


def _shown(value: object) -> str:
    """A bad value as a note quotes it: repr (control characters escaped), cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _count(value: object, what: str, notes: list[str] | None, limit: int = INT32_MAX
           ) -> int | None:
    """A non-negative integer no larger than ``limit``; anything else None, with a note.

    None (the key absent) is simply unknown; every other bad value is reported as
    "the server sent an invalid <what>" so it never reaches a sum, a forecast or the JSON.
    """
    if value is None:
        return None
    n = _int_or_none(value)
    if n is None or n < 0 or n > limit:
        if notes is not None:
            notes.append(f"the server sent an invalid {what} ({_shown(value)})")
        return None
    return n


def _has_type(value: object, expected: type, what: str, notes: list[str] | None) -> bool:
    """Whether ``value`` has llama.cpp's type for ``what`` (noting it when it has not)."""
    if isinstance(value, expected):
        return True
    if notes is not None:
        name = "boolean" if expected is bool else "string" if expected is str else "value"
        notes.append(f"the server sent an invalid {what} ({_shown(value)}): expected a {name}")
    return False


def parse_health(body: bytes | str) -> str:
    """``GET /health`` body -> its ``status`` ("ok").

    Raises:
        ResponseError: not a JSON object.
    """
    data = _json(body, "/health")
    if not isinstance(data, dict):
        raise ResponseError(f"/health: expected a JSON object, got {type(data).__name__}")
    status = data.get("status", "ok")
    return str(status)


def parse_props(body: bytes | str, notes: list[str] | None = None) -> JSONObject:
    """``GET /props`` body -> a read-only mapping of its fields (missing keys simply absent).

    Useful keys: ``total_slots``, ``default_generation_settings.n_ctx`` (per slot),
    ``model_path``, ``model_alias``, ``is_sleeping``, ``endpoint_slots``,
    ``endpoint_metrics``, ``build_info``, ``role`` (``"router"`` in router mode).
    Those keys are checked as llama.cpp produces them: a value of the wrong type or out
    of llama.cpp's limits is dropped (unknown) with a note in ``notes``;
    ``total_slots`` above :data:`LLAMA_MAX_SEQ` is cut to it.

    Raises:
        ResponseError: not a JSON object.
    """
    data = _json(body, "/props")
    if not isinstance(data, dict):
        raise ResponseError(f"/props: expected a JSON object, got {type(data).__name__}")
    return _checked_props(data, notes)


_PROPS_TYPES: tuple[tuple[str, type], ...] = (
    ("is_sleeping", bool), ("endpoint_slots", bool), ("endpoint_metrics", bool),
    ("model_path", str), ("model_alias", str), ("build_info", str), ("role", str),
)


def _checked_props(data: dict[str, object], notes: list[str] | None) -> dict[str, object]:
    """``/props`` with every field kvwall reads checked (see :func:`parse_props`)."""
    for key, expected in _PROPS_TYPES:
        if key in data and not _has_type(data[key], expected, key, notes):
            del data[key]
    if "total_slots" in data:
        slots = _count(data["total_slots"], "total_slots", notes, limit=INT64_MAX)
        if slots is not None and slots > LLAMA_MAX_SEQ:
            if notes is not None:
                notes.append(f"the server claims {slots} slots; llama.cpp allows at most "
                             f"{LLAMA_MAX_SEQ}: read as {LLAMA_MAX_SEQ}")
            slots = LLAMA_MAX_SEQ
        _set_or_drop(data, "total_slots", slots)
    dgs = data.get("default_generation_settings")
    if isinstance(dgs, dict) and "n_ctx" in dgs:
        _set_or_drop(dgs, "n_ctx", _count(dgs["n_ctx"], "n_ctx", notes))
    return data


def _set_or_drop(data: dict[str, object], key: str, value: int | None) -> None:
    if value is None:
        data.pop(key, None)
    else:
        data[key] = value


def props_n_ctx_slot(props: JSONObject) -> int | None:
    """Per-slot context from ``/props`` (``default_generation_settings.n_ctx``), or None."""
    dgs = props.get("default_generation_settings")
    if isinstance(dgs, Mapping):
        return _int_or_none(dgs.get("n_ctx"))
    return None


def parse_slots(body: bytes | str, notes: list[str] | None = None) -> tuple[SlotState, ...]:
    """``GET /slots`` body -> one :class:`SlotState` per slot.

    ``n_tokens`` is ``n_prompt_tokens`` (the slot's token cache, generated tokens included):
    None for a slot that has never run a task. Counts outside llama.cpp's limits are read
    as unknown (``n_ctx`` as 0) with a note in ``notes``; slots beyond
    :data:`LLAMA_MAX_SEQ` are left out with a note, so a poll stays cheap.

    Raises:
        ResponseError: not a JSON array of objects with an integer ``id``.
    """
    data = _json(body, "/slots")
    if not isinstance(data, list):
        raise ResponseError(f"/slots: expected a JSON array, got {type(data).__name__}")
    if len(data) > LLAMA_MAX_SEQ:
        if notes is not None:
            notes.append(f"/slots lists {len(data)} slots; llama.cpp allows at most "
                         f"{LLAMA_MAX_SEQ}: the first {LLAMA_MAX_SEQ} are read")
        data = data[:LLAMA_MAX_SEQ]
    return tuple(_slot(i, item, notes) for i, item in enumerate(data))


def _slot(i: int, item: object, notes: list[str] | None) -> SlotState:
    """One ``/slots`` item, its numbers checked against llama.cpp's limits."""
    if not isinstance(item, dict):
        raise ResponseError(f"/slots: item {i} is not an object")
    sid = _count(item.get("id"), "slot id", None)
    if sid is None:
        raise ResponseError(f"/slots: item {i} has no integer id")
    n_decoded = None
    nxt = item.get("next_token")
    if isinstance(nxt, list) and nxt and isinstance(nxt[0], dict):
        n_decoded = _count(nxt[0].get("n_decoded"), f"slot {sid} n_decoded", notes)
    elif isinstance(nxt, dict):
        n_decoded = _count(nxt.get("n_decoded"), f"slot {sid} n_decoded", notes)
    id_task = _int_or_none(item.get("id_task"))  # -1: no task yet
    processing = item.get("is_processing", False)
    if not _has_type(processing, bool, f"slot {sid} is_processing", notes):
        processing = False
    return SlotState(
        id=sid,
        n_ctx=_count(item.get("n_ctx"), f"slot {sid} n_ctx", notes) or 0,
        n_tokens=_count(item.get("n_prompt_tokens"), f"slot {sid} n_prompt_tokens", notes),
        is_processing=bool(processing),
        id_task=id_task if id_task is not None and 0 <= id_task <= INT32_MAX else None,
        n_decoded=n_decoded,
    )


def parse_metrics(text: bytes | str) -> Mapping[str, float]:
    """Prometheus text exposition -> name -> value (``llamacpp:`` prefix dropped).

    Labelled samples keep their labels in the name (``x{position="0"}``). Comment and
    blank lines are skipped.

    Raises:
        ResponseError: a line is neither a comment nor ``name [labels] value``, or the
            body has no samples at all.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    out: dict[str, float] = {}
    saw_comment = False
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            saw_comment = True
            continue
        if "}" in line:
            name, _, rest = line.rpartition("}")
            name += "}"
        else:
            name, _, rest = line.partition(" ")
        fields = rest.split()
        if not name or not fields:
            raise ResponseError(f"/metrics: line {n} is not a sample: {_snippet(raw)}")
        try:
            value = float(fields[0])
        except ValueError:
            raise ResponseError(f"/metrics: line {n} has no number: {_snippet(raw)}") from None
        if name.startswith("llamacpp:"):
            name = name[len("llamacpp:"):]
        out[name] = value
    if not out and not saw_comment:
        raise ResponseError(f"/metrics: no samples in {_snippet(text)}")
    return out


def parse_models(body: bytes | str) -> tuple[JSONObject, ...]:
    """``GET /v1/models`` or router ``GET /models`` body -> its ``data`` items.

    Raises:
        ResponseError: not a JSON object with a ``data`` list of objects.
    """
    data = _json(body, "/models")
    if not isinstance(data, dict):
        raise ResponseError(f"/models: expected a JSON object, got {type(data).__name__}")
    items = data.get("data", [])
    if not isinstance(items, list):
        raise ResponseError("/models: 'data' is not a list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ResponseError(f"/models: data[{i}] is not an object")
    return tuple(items)


def model_meta(items: tuple[JSONObject, ...], notes: list[str] | None = None
               ) -> JSONObject | None:
    """``data[0].meta`` of a ``/v1/models`` answer (n_ctx_train, n_vocab, size...), or None.

    Counts and sizes that are not non-negative int64 values are dropped with a note.
    """
    if not items or not isinstance(items[0].get("meta"), Mapping):
        return None
    meta = dict(items[0]["meta"])
    for key in _META_COUNTS:
        if key in meta:
            _set_or_drop(meta, key, _count(meta[key], key, notes, limit=INT64_MAX))
    return meta


def error_message(body: bytes | str) -> str | None:
    """The ``error.message`` of a llama-server error body, if it is one."""
    try:
        data = _json(body, "error")
    except ResponseError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        msg = data["error"].get("message")
        return str(msg) if msg is not None else None
    return None


# ---------------------------------------------------------------------------- transport


@dataclass(frozen=True)
class HttpResponse:
    """A complete HTTP answer."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class TransportError(Exception):
    """The request did not get an HTTP answer.

    Attributes:
        kind: ``timeout`` | ``refused`` | ``closed`` | ``garbage`` | ``other``.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Transport(Protocol):
    """Sends one GET and returns the whole answer, or raises :class:`TransportError`."""

    def __call__(self, url: str, headers: Mapping[str, str], connect_timeout: float,
                 read_timeout: float) -> HttpResponse: ...


def process_cpu_seconds(pid: int, proc_root: str = "/proc") -> float | None:
    """CPU seconds a server's main thread has used, None when it cannot be read.

    llama-server decodes on its main thread and answers HTTP on others: on Linux the main
    thread's ``schedstat`` (nanoseconds) leaves kvwall's own requests out. Elsewhere the
    whole process's user + system time.
    """
    try:
        with open(f"{proc_root}/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # loaded by discovery already

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except Exception:  # noqa: BLE001 - gone, not permitted, no psutil
        return None


def sleep_idle_seconds(argv: Sequence[str]) -> float | None:
    """``--sleep-idle-seconds`` from a command line (last one wins); None when off/absent."""
    value = None
    for i, arg in enumerate(argv):
        flag, eq, rest = arg.partition("=")
        if flag == "--sleep-idle-seconds":
            value = rest if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    try:
        seconds = float(value) if value is not None else -1.0
    except ValueError:
        return None
    return seconds if seconds > 0 else None


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side that gives up at a deadline for the whole answer.

    http.client reads the status line and headers through a buffered file, one socket
    read at a time; with a plain socket timeout every byte would start the wait afresh,
    and a server sending one byte a second could hold a request forever.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """The connected socket as http.client sees it: reads end at ``deadline``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left)
        self._sock.sendall(data)

    def makefile(self, mode: str, *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        # http.client closes its connection as soon as a response that ends with the
        # connection starts, while the body is still to be read (a real socket waits for
        # its files): the real socket is closed by http_get once the answer is read.
        pass


def _connect(conn: http.client.HTTPConnection, connect_timeout: float) -> None:
    """Open the connection, or raise the :class:`TransportError` that says why not."""
    try:
        conn.connect()
    except TimeoutError:
        raise TransportError("timeout", f"no connection within {connect_timeout:g} s") from None
    except ConnectionRefusedError:
        raise TransportError("refused", "connection refused") from None
    except OSError as e:
        raise TransportError("refused", f"cannot connect ({e.strerror or e})") from None


def _read_answer(conn: http.client.HTTPConnection, path: str,
                 headers: Mapping[str, str]) -> HttpResponse:
    """Send the GET and read the whole answer (the socket ends reads at the deadline)."""
    conn.request("GET", path, headers=dict(headers))
    resp = conn.getresponse()
    chunks = []
    size = 0
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TransportError("garbage", f"answer larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return HttpResponse(resp.status, b"".join(chunks),
                        {k.lower(): v for k, v in resp.getheaders()})


def http_get(url: str, headers: Mapping[str, str], connect_timeout: float,
             read_timeout: float) -> HttpResponse:
    """GET ``url`` with the stdlib: a connect timeout, then one deadline for the whole answer.

    ``read_timeout`` bounds everything after the connection: sending the request, the
    status line, the headers and the body together, however slowly a server trickles
    them.

    Raises:
        TransportError: refused, timed out, closed mid-answer, or not HTTP.
    """
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(host, parts.port, timeout=connect_timeout)
    raw: socket.socket | None = None
    try:
        _connect(conn, connect_timeout)
        raw = conn.sock
        conn.sock = _DeadlineSocket(raw, time.monotonic() + read_timeout)
        try:
            return _read_answer(conn, path, headers)
        except TimeoutError:
            raise TransportError("timeout", f"no answer within {read_timeout:g} s") from None
        except http.client.RemoteDisconnected:
            raise TransportError("closed", "connection closed without an answer") from None
        except (ConnectionError, http.client.IncompleteRead):
            raise TransportError("closed", "connection closed mid-answer") from None
        except http.client.HTTPException as e:
            raise TransportError("garbage", f"not an HTTP answer ({type(e).__name__})") from None
        except OSError as e:
            raise TransportError("other", f"network error ({e.strerror or e})") from None
    finally:
        conn.close()
        if raw is not None:
            raw.close()


# ---------------------------------------------------------------------------- client


_HEALTH_BY_KIND: dict[str, Health] = {
    "timeout": HEALTH_TIMEOUT,
    "refused": HEALTH_UNREACHABLE,
    "closed": HEALTH_UNREACHABLE,
    "garbage": HEALTH_ERROR,
    "other": HEALTH_UNREACHABLE,
}


class _Stop(Exception):
    """Ends a poll early with a final health."""

    def __init__(self, health: Health, message: str | None):
        super().__init__(message)
        self.health = health
        self.message = message


class LlamaClient:
    """Polls one llama-server; never more than one request in flight.

    Args:
        process: the server (its ``url`` and ``api_key``).
        transport: sends one GET (default :func:`http_get`).
        clock: monotonic seconds for timestamps.
        connect_timeout: seconds to wait for a TCP connection.
        read_timeout: seconds to wait for a whole answer.
        cpu_seconds: pid -> CPU seconds used so far (None if unknown): tells whether an
            idle server that may sleep is working again (see :data:`SLEEP_REFRESH_MARGIN_S`).
    """

    def __init__(
        self,
        process: ServerProcess,
        *,
        transport: Transport = http_get,
        clock: Callable[[], float] = time.monotonic,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        cpu_seconds: Callable[[int], float | None] = process_cpu_seconds,
    ) -> None:
        self.process = process
        self._cpu_seconds = cpu_seconds
        # Idle slots kept while a server that may sleep shows no activity:
        # (slots, read at, activity mark at the last poll).
        self._idle_slots: tuple[SlotState, ...] | None = None
        self._idle_read_at = 0.0
        self._mark: tuple[tuple[float | None, ...] | None, float | None] = (None, None)
        self._transport = transport
        self._clock = clock
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._lock = threading.Lock()
        # (model path|build, its /v1/models meta, the notes on that meta)
        self._meta_cache: tuple[str, JSONObject | None, tuple[str, ...]] | None = None

    def __repr__(self) -> str:
        return f"LlamaClient({self.process.url!r}, busy={self.busy})"

    @property
    def busy(self) -> bool:
        """True while a poll of this server is still waiting for an answer."""
        return self._lock.locked()

    def busy_state(self) -> ServerState:
        """The state to report while a previous poll is still waiting."""
        return ServerState(process=self.process, timestamp=self._clock(),
                           health=HEALTH_TIMEOUT, errors=(f"Not responding: {BUSY_MESSAGE}.",))

    def update_process(self, process: ServerProcess) -> None:
        """Take a fresher description of the same server (same URL: rss, argv...)."""
        self.process = process

    def _get(self, path: str) -> HttpResponse:
        headers = {"Accept": "application/json", "Connection": "close"}
        if self.process.api_key:
            # The key goes only to this server's own URL: paths are appended to it.
            headers["Authorization"] = f"Bearer {self.process.api_key}"
        return self._transport(self.process.url + path, headers, self.connect_timeout,
                               self.read_timeout)

    def poll(self) -> ServerState:
        """One round of ``/props``, ``/slots``, ``/metrics`` and ``/v1/models``.

        ``/health`` is not asked: ``/props`` answers 503 while loading and 401 without a
        key just as it does, and one request fewer per server keeps the poll cheap
        (``/v1/models`` is read once per loaded model). Use :meth:`check_health` for a
        key-less liveness probe.

        Returns:
            A :class:`ServerState`; a busy client answers at once with ``HEALTH_TIMEOUT``.
            Never raises.
        """
        if not self._lock.acquire(blocking=False):
            return self.busy_state()
        try:
            return self._poll()
        except Exception as e:  # noqa: BLE001 - a poll never raises
            return ServerState(process=self.process, timestamp=self._clock(),
                               health=HEALTH_ERROR,
                               errors=(f"Internal error while polling: {type(e).__name__}: {e}",))
        finally:
            self._lock.release()

    def _poll(self) -> ServerState:
        ts = self._clock()
        errors: list[str] = []
        state = ServerState(process=self.process, timestamp=ts, health=HEALTH_OK)
        try:
            props = self._read_props(errors)
            state = replace(state, props=props)
            if props.get("role") == "router":
                models = self._read_json("/models", parse_models, errors)
                return replace(state, health=HEALTH_ROUTER, router_models=models,
                               errors=tuple(errors))
            sleeping = props.get("is_sleeping") is True  # "no" is not a bool: unknown
            metrics = None
            if props.get("endpoint_metrics") is True:
                metrics = self._read_json("/metrics", parse_metrics, errors)
                state = replace(state, metrics=metrics)
            active = self._activity(metrics)
            if sleeping:
                state = replace(state, health=HEALTH_SLEEPING)
                self._idle_slots = None
            elif props.get("endpoint_slots", True) is not False:
                slots: tuple[SlotState, ...] | None
                if self._idle_slots is not None and not active and (
                    ts - self._idle_read_at < self._sleep_s() + SLEEP_REFRESH_MARGIN_S
                ):
                    slots = self._idle_slots  # reading them would keep the server awake
                else:
                    slots = self._read_json("/slots", lambda b: parse_slots(b, errors),
                                            errors)
                    keep = (slots is not None and self._sleep_s() > 0
                            and not any(sl.is_processing for sl in slots))
                    self._idle_slots = slots if keep else None
                    self._idle_read_at = ts
                state = replace(state, slots=slots)
            state = replace(state, model_meta=self._read_meta(props, errors))
        except _Stop as stop:
            if stop.message:
                errors.append(stop.message)
            state = replace(state, health=stop.health)
        return replace(state, errors=tuple(errors))

    def _sleep_s(self) -> float:
        """The server's --sleep-idle-seconds, 0 when it never sleeps (or is unknown)."""
        return sleep_idle_seconds(tuple(self.process.argv)) or 0.0

    def _activity(self, metrics: Mapping[str, float] | None) -> bool:
        """Whether the server worked since the last poll (its counters or CPU time moved)."""
        counters = None
        if metrics is not None:
            counters = tuple(metrics.get(name) for name in _ACTIVITY_METRICS)
        pid = self.process.pid
        cpu = self._cpu_seconds(pid) if pid is not None and self._sleep_s() > 0 else None
        (last_counters, last_cpu), self._mark = self._mark, (counters, cpu)
        if counters is not None and last_counters is not None and (
            counters != last_counters or (metrics or {}).get("requests_processing", 0) > 0
        ):
            return True
        if cpu is not None and last_cpu is not None and cpu - last_cpu >= CPU_ACTIVITY_S:
            return True
        return counters is None and cpu is None  # nothing tells: assume it may be working

    def _request(self, path: str) -> HttpResponse:
        try:
            return self._get(path)
        except TransportError as e:
            health = _HEALTH_BY_KIND.get(e.kind, HEALTH_ERROR)
            if health == HEALTH_UNREACHABLE:
                msg = f"Unreachable at {self.process.url}: {e}."
            elif health == HEALTH_TIMEOUT:
                msg = f"Not responding on {path}: {e}."
            else:
                msg = f"{path}: {e}."
            raise _Stop(health, msg) from None

    def check_health(self) -> Health:
        """``GET /health`` only (public even with an API key): one of the HEALTH_* values.

        Never raises.
        """
        if not self._lock.acquire(blocking=False):
            return HEALTH_TIMEOUT
        try:
            self._check_health()
        except _Stop as stop:
            return stop.health
        except Exception:  # noqa: BLE001
            return HEALTH_ERROR
        finally:
            self._lock.release()
        return HEALTH_OK

    def _check_health(self) -> None:
        resp = self._request("/health")
        if resp.status == 503:
            raise _Stop(HEALTH_LOADING, None)
        if resp.status == 401:
            raise _Stop(HEALTH_UNAUTHORIZED, self._unauthorized_msg())
        if resp.status != 200:
            raise _Stop(HEALTH_ERROR, f"/health answered HTTP {resp.status}: "
                                      f"{error_message(resp.body) or _snippet(resp.body)}.")
        try:
            parse_health(resp.body)
        except ResponseError as e:
            raise _Stop(HEALTH_ERROR, f"Garbage answer: {e}.") from None

    def _unauthorized_msg(self) -> str:
        if self.process.api_key:
            return "The server rejected the API key kvwall found for it (HTTP 401)."
        return ("The server needs an API key (HTTP 401): give kvwall its key for this URL "
                "(KVWALL_API_KEY=URL=KEY or --api-key-file URL=PATH for kvwall status, or "
                "the app's settings).")

    def _read_props(self, errors: list[str]) -> JSONObject:
        resp = self._request("/props")
        if resp.status == 503:
            raise _Stop(HEALTH_LOADING, None)
        if resp.status == 401:
            raise _Stop(HEALTH_UNAUTHORIZED, self._unauthorized_msg())
        if resp.status != 200:
            raise _Stop(HEALTH_ERROR, f"/props answered HTTP {resp.status}: "
                                      f"{error_message(resp.body) or _snippet(resp.body)}.")
        try:
            return parse_props(resp.body, errors)
        except ResponseError as e:
            raise _Stop(HEALTH_ERROR, f"Garbage answer: {e}.") from None

    def _read_json(
        self, path: str, parser: Callable[[bytes], _T], errors: list[str]
    ) -> _T | None:
        """A secondary endpoint: failures become notes, the poll goes on."""
        try:
            resp = self._get(path)
        except TransportError as e:
            if e.kind in ("refused", "closed"):
                raise _Stop(HEALTH_UNREACHABLE,
                            f"Unreachable at {self.process.url} during {path}: {e}.") from None
            errors.append(f"{path}: {e}.")
            return None
        if resp.status == 501:
            errors.append(f"{path} is disabled on this server "
                          f"({error_message(resp.body) or 'HTTP 501'}).")
            return None
        if resp.status == 503:
            raise _Stop(HEALTH_LOADING, None)
        if resp.status == 401:
            raise _Stop(HEALTH_UNAUTHORIZED, self._unauthorized_msg())
        if resp.status != 200:
            errors.append(f"{path} answered HTTP {resp.status}: "
                          f"{error_message(resp.body) or _snippet(resp.body)}.")
            return None
        try:
            return parser(resp.body)
        except ResponseError as e:
            errors.append(f"Garbage answer: {e}.")
            return None

    def _read_meta(self, props: JSONObject, errors: list[str]) -> JSONObject | None:
        # /v1/models is static for a loaded model: read it once per model path.
        ident = f"{props.get('model_path')}|{props.get('build_info')}"
        if self._meta_cache is not None and self._meta_cache[0] == ident:
            errors.extend(self._meta_cache[2])
            return self._meta_cache[1]
        items = self._read_json("/v1/models", parse_models, errors)
        if items is None:
            return None
        notes: list[str] = []
        meta = model_meta(items, notes)
        errors.extend(notes)
        self._meta_cache = (ident, meta, tuple(notes))
        return meta


__all__ = [
    "CONNECT_TIMEOUT_S",
    "LLAMA_MAX_SEQ",
    "READ_TIMEOUT_S",
    "HttpResponse",
    "LlamaClient",
    "ResponseError",
    "Transport",
    "TransportError",
    "error_message",
    "http_get",
    "model_meta",
    "parse_health",
    "parse_metrics",
    "parse_models",
    "parse_props",
    "parse_slots",
    "process_cpu_seconds",
    "props_n_ctx_slot",
    "sleep_idle_seconds",
]
