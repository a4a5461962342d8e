"""Another machine's kvwall: read its exporter's ``/status.json`` within a deadline.

A remote that is down, slow, refuses the token or answers garbage becomes a
:class:`RemoteStatus` with ``up`` False and a sentence in ``error``; reading never raises.
The whole request (connect, headers, body) is bounded by one deadline, and the bearer
token is sent only to that remote and never appears in errors, reprs or logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from kvwall.monitors.llama_http import HttpResponse, Transport, TransportError, http_get

DEFAULT_DEADLINE_S = 3.0
STATUS_PATH = "/status.json"
SCHEMA_VERSION = 1
# A status object of a busy machine is tens of KiB; a bound keeps a wrong URL cheap.
MAX_BODY_BYTES = 16 << 20


@dataclass(frozen=True)
class RemoteStatus:
    """One read of a remote kvwall exporter.

    Attributes:
        url: the exporter's base URL (``http://gpu-box:9766``).
        host: the label to show (the URL's host name).
        up: True when a valid status object came back.
        status: that object (``kvwall status --json``'s shape), None when down.
        error: why it is down (a sentence), None when up.
        timestamp: ``time.monotonic()`` of the read.
    """

    url: str
    host: str
    up: bool
    status: Mapping[str, Any] | None = field(default=None, repr=False)
    error: str | None = None
    timestamp: float = 0.0


def remote_base(url: str) -> str:
    """The base URL for a remote given as ``host:port``, a base URL or its status URL.

    Raises:
        ValueError: not an http(s) URL with a host.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    path = parts.path.rstrip("/")
    if path.endswith(STATUS_PATH):
        path = path[: -len(STATUS_PATH)]
    return f"{parts.scheme}://{parts.netloc}{path}"


def _valid(obj: object) -> Mapping[str, Any] | None:
    if not isinstance(obj, dict) or obj.get("schema_version") != SCHEMA_VERSION:
        return None
    if not isinstance(obj.get("devices"), list) or not isinstance(obj.get("servers"), list):
        return None
    return obj


def _answer_error(resp: HttpResponse) -> str | None:
    if resp.status in (401, 403):
        return "refused the token (check --remote-token-file)"
    if resp.status != 200:
        return f"answered HTTP {resp.status}"
    if len(resp.body) > MAX_BODY_BYTES:
        return "answered more than 16 MiB: not a kvwall exporter"
    return None


class RemoteReader:
    """Reads one remote exporter's status object.

    Args:
        url: the exporter (see :func:`remote_base` for the accepted forms).
        token: bearer token for it (``--token-file`` on the remote), or None.
        deadline_s: seconds for the whole request.
        transport: the HTTP GET (injectable; ``llama_http.http_get`` by default).
        monotonic: clock (injectable).

    Raises:
        ValueError: ``url`` is not an http(s) URL.
    """

    def __init__(self, url: str, token: str | None = None, *,
                 deadline_s: float = DEFAULT_DEADLINE_S, transport: Transport = http_get,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.url = remote_base(url)
        self.host = urlsplit(self.url).hostname or self.url
        self._token = token
        self.deadline_s = deadline_s
        self._transport = transport
        self._monotonic = monotonic

    def __repr__(self) -> str:  # never the token
        return f"RemoteReader({self.url!r})"

    def _down(self, error: str, started: float) -> RemoteStatus:
        text = error.replace(self._token, "<redacted>") if self._token else error
        return RemoteStatus(self.url, self.host, False, None, text, started)

    def read(self) -> RemoteStatus:
        """One read; never raises."""
        started = self._monotonic()
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            # http_get's read deadline starts before it connects: one deadline in all.
            resp = self._transport(self.url + STATUS_PATH, headers, self.deadline_s,
                                   self.deadline_s)
        except TransportError as e:
            what = {"timeout": f"did not answer within {self.deadline_s:g} s",
                    "refused": f"is down ({e})"}.get(e.kind, f"failed ({e})")
            return self._down(what, started)
        except Exception as e:  # noqa: BLE001 - a remote never breaks the caller
            return self._down(f"failed ({type(e).__name__}: {e})", started)
        error = _answer_error(resp)
        if error is not None:
            return self._down(error, started)
        try:
            obj = _valid(json.loads(resp.body))
        except ValueError:
            obj = None
        if obj is None:
            return self._down("answered something that is not a kvwall status object "
                              f"(schema_version {SCHEMA_VERSION})", started)
        return RemoteStatus(self.url, self.host, True, obj, None, started)


class RemoteGroup:
    """Several remotes read together: one thread each, so all within one deadline.

    Args:
        entries: (URL, bearer token or None) per remote.
        deadline_s: seconds per read.

    Raises:
        ValueError: a URL is not an http(s) URL.
    """

    def __init__(self, entries: Sequence[tuple[str, str | None]],
                 deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self.readers = [RemoteReader(url, token, deadline_s=deadline_s)
                        for url, token in entries]

    def __repr__(self) -> str:  # never the tokens
        return f"RemoteGroup({[r.url for r in self.readers]!r})"

    def read(self) -> list[RemoteStatus]:
        """Read every remote; never raises."""
        if not self.readers:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(self.readers))) as pool:
            return list(pool.map(lambda r: r.read(), self.readers))


__all__ = ["DEFAULT_DEADLINE_S", "RemoteGroup", "RemoteReader", "RemoteStatus", "remote_base"]
