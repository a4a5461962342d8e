"""One poll cycle: memory + server discovery + every server queried concurrently, on a deadline."""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from typing import ParamSpec, Protocol, TypeVar

from kvwall.monitors.discovery import Discovery, Scanner, server_key
from kvwall.monitors.llama_http import LlamaClient
from kvwall.monitors.snapshot import (
    HEALTH_ERROR,
    HEALTH_TIMEOUT,
    MemorySnapshot,
    ServerProcess,
    ServerState,
    Snapshot,
)

log = logging.getLogger(__name__)

POLL_DEADLINE_S = 2.0
MAX_WORKERS = 16

_P = ParamSpec("_P")
_R = TypeVar("_R")


class DaemonPool:
    """Runs tasks on daemon threads, at most ``max_workers`` at once.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter
    exits, so one request stuck in a hostile server would keep ``kvwall status`` (or the
    app) from ever ending. A daemon thread is abandoned at exit instead. A worker waits
    up to ``idle_s`` for the next task before it ends, so a poll each second reuses its
    threads instead of starting one per request. Tasks beyond ``max_workers`` wait in a
    queue; :meth:`shutdown` cancels those.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str, idle_s: float = 30.0) -> None:
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._running = 0
        self._idle = 0
        self._queue: list[tuple[Future[object], Callable[[], object]]] = []
        self._closed = False
        self._count = 0

    def submit(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> Future[_R]:
        """Run ``fn(*args, **kwargs)`` on a daemon thread; its future carries the result."""
        future: Future[_R] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit after shutdown")
            self._queue.append((future, lambda: fn(*args, **kwargs)))  # type: ignore[arg-type]
            # Each waiting worker takes one queued task; start another for the rest, so
            # one hung request never holds up the next (tasks run side by side).
            start = len(self._queue) > self._idle and self._running < self._max_workers
            if start:
                self._running += 1
                self._count += 1
                name = f"{self._prefix}_{self._count}"
            else:
                self._wake.notify()
        if start:
            threading.Thread(target=self._work, name=name, daemon=True).start()
        return future

    def _next(self) -> tuple[Future[object], Callable[[], object]] | None:
        """The next queued task, waiting up to ``idle_s`` for one; None: end the worker."""
        with self._lock:
            while not self._queue:
                if self._closed:
                    self._running -= 1
                    return None
                self._idle += 1
                woken = self._wake.wait(self._idle_s)
                self._idle -= 1
                if not woken and not self._queue:
                    self._running -= 1
                    return None
            return self._queue.pop(0)

    def _work(self) -> None:
        while (item := self._next()) is not None:
            future, task = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = task()
            except BaseException as e:  # noqa: BLE001 - the future carries it to the caller
                future.set_exception(e)
            else:
                future.set_result(result)

    def shutdown(self, cancel_futures: bool = True) -> None:
        """Take no more tasks; cancel the queued ones (running ones end on their own)."""
        with self._lock:
            self._closed = True
            queued, self._queue = (self._queue, []) if cancel_futures else ([], self._queue)
            self._wake.notify_all()
        for future, _ in queued:
            future.cancel()


@dataclass(frozen=True)
class _Request:
    """One server's request of this poll; ``future`` None when its client is still busy."""

    process: ServerProcess
    client: LlamaClient
    future: Future[ServerState] | None


class MemorySource(Protocol):
    """Anything with ``poll() -> MemorySnapshot`` (``kvwall.monitors.devices.MemorySources``).

    A ``poll(pids=...)`` that accepts the servers' pids is given them: AMD's per-process
    figures then read only those processes' fdinfo instead of every process's.
    """

    def poll(self) -> MemorySnapshot: ...


def _accepts_pids(source: object) -> bool:
    try:
        return "pids" in inspect.signature(source.poll).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False


class ClientPool:
    """One :class:`LlamaClient` per server, kept across polls (keyed by pid and URL).

    Args:
        factory: builds a client for a server (default :class:`LlamaClient` with its
            default transport and timeouts).
    """

    def __init__(self, factory: Callable[[ServerProcess], LlamaClient] | None = None) -> None:
        self._factory = factory or (LlamaClient)
        self._clients: dict[str, LlamaClient] = {}
        self._lock = threading.Lock()

    def get(self, process: ServerProcess) -> LlamaClient:
        """The client for ``process`` (created on first sight, refreshed afterwards)."""
        key = server_key(process)
        with self._lock:
            client = self._clients.get(key)
            if client is None or client.process.api_key != process.api_key:
                if client is not None and client.busy:
                    client.update_process(process)
                else:
                    client = self._factory(process)
                    self._clients[key] = client
            else:
                client.update_process(process)
            return client

    def retain(self, processes: Iterable[ServerProcess]) -> None:
        """Forget clients of servers that are gone (a busy one finishes in the background)."""
        keep = {server_key(p) for p in processes}
        with self._lock:
            for key in list(self._clients):
                if key not in keep:
                    del self._clients[key]

    def __len__(self) -> int:
        return len(self._clients)


class Poller:
    """Composes one full :class:`Snapshot` per :meth:`poll`.

    Args:
        memory_sources: object with ``poll() -> MemorySnapshot``; None: no memory figures.
        discover_fn: ``(extra_urls=..., api_keys=...) -> Discovery`` or a list of
            :class:`ServerProcess` (default a :class:`kvwall.monitors.discovery.Scanner`,
            which caches what each process runs between polls).
        clients: the per-server clients (default a fresh :class:`ClientPool`).
        clock: monotonic seconds, for timestamps.
        extra_urls: user-configured server URLs.
        api_keys: user-configured URL -> API key.
        deadline_s: a whole poll returns within about this many seconds; servers that have
            not answered by then are reported "not responding" while their request
            finishes in the background.
        max_workers: threads for concurrent requests.
    """

    def __init__(
        self,
        memory_sources: MemorySource | None = None,
        discover_fn: Callable[..., Discovery | Iterable[ServerProcess]] | None = None,
        clients: ClientPool | None = None,
        clock: Callable[[], float] = time.monotonic,
        extra_urls: Iterable[str] = (),
        api_keys: Mapping[str, str] | None = None,
        *,
        deadline_s: float = POLL_DEADLINE_S,
        max_workers: int = MAX_WORKERS,
    ) -> None:
        self.memory_sources = memory_sources
        self._memory_takes_pids = _accepts_pids(memory_sources)
        self.discover_fn = discover_fn if discover_fn is not None else Scanner()
        self.clients = clients if clients is not None else ClientPool()
        self.clock = clock
        self.extra_urls = tuple(extra_urls)
        self.api_keys = dict(api_keys or {})
        self.deadline_s = deadline_s
        self._pool = DaemonPool(max_workers=max(2, max_workers), thread_name_prefix="kvwall-poll")
        self._last_discovery = Discovery()
        self._mem_future: Future[MemorySnapshot] | None = None
        self._disc_future: Future[Discovery] | None = None
        self._closed = False

    def close(self) -> None:
        """Stop the worker threads (requests still running finish on their own timeouts)."""
        self._closed = True
        self._pool.shutdown(cancel_futures=True)

    def __enter__(self) -> Poller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ parts

    def _poll_memory(self, pids: tuple[int, ...]) -> MemorySnapshot:
        if self.memory_sources is None:
            return MemorySnapshot(timestamp=self.clock(), devices=())
        if self._memory_takes_pids:
            return self.memory_sources.poll(pids=pids)  # type: ignore[call-arg]
        return self.memory_sources.poll()

    def _discover(self) -> Discovery:
        found = self.discover_fn(extra_urls=self.extra_urls, api_keys=self.api_keys)
        if isinstance(found, Discovery):
            return found
        return Discovery(servers=tuple(found))

    # ------------------------------------------------------------------ poll

    def poll(self) -> Snapshot:
        """Poll memory and every server once, within ``deadline_s``.

        Returns:
            A :class:`Snapshot`; what failed is described in its ``errors`` and in each
            server's state. Never raises.
        """
        ts = self.clock()
        try:
            return self._poll(ts)
        except Exception as e:  # a poll never raises
            log.exception("poll failed")
            return Snapshot(timestamp=ts, memory=MemorySnapshot(timestamp=ts, devices=()),
                            servers=(), errors=(f"Poll failed: {type(e).__name__}: {e}",))

    def _poll(self, ts: float) -> Snapshot:
        if self._closed:
            raise RuntimeError("poller is closed")
        deadline = time.monotonic() + self.deadline_s
        discovery, errors = self._discovery_until(deadline)
        errors.extend(discovery.errors)
        servers = discovery.servers
        self.clients.retain(servers)
        # A source still stuck from a previous poll is not asked again (no pile-up).
        if self._mem_future is None or self._mem_future.done():
            pids = tuple(s.pid for s in servers if s.pid is not None)
            self._mem_future = self._pool.submit(self._poll_memory, pids)
        mem_future = self._mem_future
        requests = [self._request(proc) for proc in servers]
        wait_futures([r.future for r in requests if r.future is not None],
                     timeout=max(0.0, deadline - time.monotonic()))
        wait_futures([mem_future], timeout=max(0.0, deadline - time.monotonic()))
        states = [self._state(r, discovery.notes_for(r.process)) for r in requests]
        return Snapshot(timestamp=ts, memory=self._memory_result(mem_future, ts),
                        servers=tuple(states), errors=tuple(errors))

    def _discovery_until(self, deadline: float) -> tuple[Discovery, list[str]]:
        """This poll's discovery (or the last one, with why) by ``deadline``."""
        if self._disc_future is None or self._disc_future.done():
            self._disc_future = self._pool.submit(self._discover)
        disc_future = self._disc_future
        wait_futures([disc_future], timeout=max(0.0, deadline - time.monotonic()))
        if disc_future.done() and disc_future.exception() is None:
            self._last_discovery = disc_future.result()
            return self._last_discovery, []
        if disc_future.done():
            error = (f"Server discovery failed: {disc_future.exception()}; "
                     "showing the servers found last time.")
        else:
            error = ("Server discovery did not finish in time; "
                     "showing the servers found last time.")
        return self._last_discovery, [error]

    def _request(self, proc: ServerProcess) -> _Request:
        """Start polling one server, unless its previous request is still running."""
        client = self.clients.get(proc)
        if client.busy:
            return _Request(proc, client, None)  # do not pile up requests
        return _Request(proc, client, self._pool.submit(client.poll))

    def _state(self, r: _Request, notes: tuple[str, ...]) -> ServerState:
        """A server's state from its request, whatever became of it by the deadline."""
        proc, fut = r.process, r.future
        if fut is None:
            state = r.client.busy_state()
        elif not fut.done():
            state = ServerState(
                process=proc, timestamp=self.clock(), health=HEALTH_TIMEOUT,
                errors=(f"Not responding: no answer within {self.deadline_s:g} s.",))
        elif fut.exception() is not None:
            state = ServerState(process=proc, timestamp=self.clock(), health=HEALTH_ERROR,
                                errors=(f"Poll failed: {fut.exception()}",))
        else:
            state = fut.result()
        if state.process is not proc:
            state = replace(state, process=proc)
        if notes:
            state = replace(state, errors=tuple(state.errors) + notes)
        return state

    def _memory_result(self, mem_future: Future[MemorySnapshot], ts: float) -> MemorySnapshot:
        if mem_future.done() and mem_future.exception() is None:
            return mem_future.result()
        reason = (f"failed: {mem_future.exception()}" if mem_future.done()
                  else f"did not answer within {self.deadline_s:g} s")
        return MemorySnapshot(timestamp=ts, devices=(), errors=(f"Memory sources {reason}.",))
