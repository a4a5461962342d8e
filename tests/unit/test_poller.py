"""The poller composes a Snapshot from memory, discovery and clients, and never raises."""

from __future__ import annotations

from kvwall.monitors.discovery import Discovery, server_key
from kvwall.monitors.llama_http import HttpResponse, LlamaClient, TransportError
from kvwall.monitors.poller import ClientPool, Poller
from kvwall.monitors.snapshot import (
    HEALTH_LOADING,
    HEALTH_UNREACHABLE,
    MemorySnapshot,
    ServerProcess,
)

A = ServerProcess(url="http://127.0.0.1:9001", pid=1)
B = ServerProcess(url="http://127.0.0.1:9002", pid=2)


def refused(url, headers, ct, rt):
    raise TransportError("refused", "connection refused")


def loading(url, headers, ct, rt):
    return HttpResponse(503, b'{"error":{"message":"Loading model","code":503}}')


def pool(transport):
    return ClientPool(lambda p: LlamaClient(p, transport=transport, clock=lambda: 5.0))


def test_snapshot_has_every_server_with_discovery_notes():
    found = Discovery(servers=(A, B), notes={server_key(B): ("Its environment is not readable.",)},
                      errors=("skipped a unix-socket server",))
    with Poller(discover_fn=lambda **kw: found, clients=pool(loading), clock=lambda: 7.0) as p:
        snap = p.poll()
    assert snap.timestamp == 7.0
    assert [s.process.pid for s in snap.servers] == [1, 2]
    assert all(s.health == HEALTH_LOADING for s in snap.servers)
    assert snap.servers[1].errors == ("Its environment is not readable.",)
    assert snap.errors == ("skipped a unix-socket server",)
    assert snap.memory.devices == ()


def test_discovery_failure_keeps_last_servers_and_says_so():
    calls = []

    def flaky(**kw):
        calls.append(1)
        if len(calls) > 1:
            raise PermissionError("process table denied")
        return [A]

    with Poller(discover_fn=flaky, clients=pool(refused)) as p:
        first = p.poll()
        second = p.poll()
    assert [s.process for s in first.servers] == [A]
    assert [s.process for s in second.servers] == [A]
    assert second.servers[0].health == HEALTH_UNREACHABLE
    assert any("process table denied" in e for e in second.errors)


def test_memory_source_failure_is_reported_not_raised():
    class Broken:
        def poll(self):
            raise RuntimeError("NVML exploded")

    with Poller(Broken(), discover_fn=lambda **kw: []) as p:
        snap = p.poll()
    assert snap.servers == ()
    assert snap.memory.errors and "NVML exploded" in snap.memory.errors[0]


def test_memory_snapshot_passes_through():
    mem = MemorySnapshot(timestamp=3.0, devices=())

    class Fixed:
        def poll(self):
            return mem

    with Poller(Fixed(), discover_fn=lambda **kw: []) as p:
        assert p.poll().memory is mem


def test_clients_are_kept_per_server_and_dropped_when_gone():
    servers = [A, B]
    clients = pool(refused)
    with Poller(discover_fn=lambda **kw: list(servers), clients=clients) as p:
        p.poll()
        first = clients.get(A)
        p.poll()
        assert clients.get(A) is first
        servers.remove(B)
        p.poll()
    assert len(clients) == 1


def test_closed_poller_still_returns_a_snapshot():
    p = Poller(discover_fn=lambda **kw: [A], clients=pool(refused))
    p.close()
    snap = p.poll()
    assert snap.servers == () and "closed" in snap.errors[0]


def test_memory_sources_are_told_the_servers_pids():
    # AMD per-process figures read only the servers' fdinfo when the source accepts pids.
    seen = []

    class Sources:
        def poll(self, pids=None):
            seen.append(pids)
            return MemorySnapshot(timestamp=1.0, devices=())

    remote = ServerProcess(url="http://10.0.0.5:8080")
    with Poller(Sources(), discover_fn=lambda **kw: [A, B, remote],
                clients=pool(refused)) as p:
        p.poll()
    assert seen == [(1, 2)]


def test_daemon_pool_runs_tasks_side_by_side_when_a_worker_waits_idle():
    # A poll after the first: a worker idles between polls. Three requests that each wait
    # for the others must still run at once (serialised, one hung server would hold up
    # every other server's request until the poll's deadline).
    import threading
    import time as _time

    from kvwall.monitors.poller import DaemonPool

    pool = DaemonPool(4, "test-pool", idle_s=30.0)
    pool.submit(lambda: None).result(timeout=5)
    deadline = _time.monotonic() + 5
    while pool._idle != 1 and _time.monotonic() < deadline:  # the worker went idle
        threading.Event().wait(0.01)  # polling with a deadline, not a sleep-and-hope
    assert pool._idle == 1
    barrier = threading.Barrier(3, timeout=5)
    futures = [pool.submit(barrier.wait) for _ in range(3)]
    assert sorted(f.result(timeout=10) for f in futures) == [0, 1, 2]
    pool.shutdown()
