"""What a memory pool holds, as the gauge and the tray show it (Qt-free view model).

Every byte figure comes from the StatusReport (measured by monitors/, attributed by
budget/); this module only places them side by side. "Other processes" is what the pool
uses beyond the servers kvwall attributes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvwall.budget.alerts import slot_fill
from kvwall.budget.report import Attribution, ServerReport, SlotReport, StatusReport
from kvwall.monitors.snapshot import DeviceMemory

# Segment kinds, in drawing order within a server.
OTHER = "other"
OVERHEAD = "overhead"
WEIGHTS = "weights"
KV = "kv"
RECURRENT = "recurrent"
COMPUTE = "compute"
UNATTRIBUTED = "unattributed"
FREE = "free"

MEANING = {
    OTHER: "memory used by everything else on this pool (other programs, the desktop, "
           "servers kvwall cannot see)",
    OVERHEAD: "runtime overhead: what the process holds beyond what llama.cpp's buffers "
              "explain (CUDA context, allocator slack, prompt cache)",
    WEIGHTS: "model weights loaded on this pool",
    KV: "the KV cache: the context every slot can hold, allocated up front",
    RECURRENT: "recurrent/SSM state of the model's recurrent layers",
    COMPUTE: "compute buffers llama.cpp reserves for a micro-batch",
    UNATTRIBUTED: "measured memory the model cannot explain (see the server's note)",
    FREE: "free memory a new server or a larger context could use",
}

LABEL = {
    OTHER: "Other processes",
    OVERHEAD: "Overhead",
    WEIGHTS: "Weights",
    KV: "KV cache",
    RECURRENT: "Recurrent state",
    COMPUTE: "Compute",
    UNATTRIBUTED: "Unattributed",
    FREE: "Free",
}


@dataclass(frozen=True)
class Segment:
    """One part of a pool's stacked bar."""

    kind: str
    bytes: int
    server_key: str | None = None
    server_name: str | None = None

    @property
    def label(self) -> str:
        base = LABEL[self.kind]
        return f"{self.server_name}: {base}" if self.server_name else base


@dataclass(frozen=True)
class PoolView:
    """A pool and its segments, in drawing order (their bytes sum to the pool's total when
    the report is consistent)."""

    device: DeviceMemory
    segments: tuple[Segment, ...]

    @property
    def total_bytes(self) -> int:
        return self.device.total_bytes or sum(s.bytes for s in self.segments)

    @property
    def used_fraction(self) -> float | None:
        d = self.device
        if not d.total_bytes or d.used_bytes is None:
            return None
        return d.used_bytes / d.total_bytes

    def bytes_of(self, kind: str, server_key: str | None = None) -> int:
        return sum(s.bytes for s in self.segments
                   if s.kind == kind and (server_key is None or s.server_key == server_key))


def _attribution_total(a: Attribution) -> int:
    if a.measured_bytes is not None:
        return a.measured_bytes
    return a.weights_bytes + a.kv_bytes + a.recurrent_bytes + a.compute_bytes + a.overhead_bytes


def server_segments(server: ServerReport, a: Attribution) -> list[Segment]:
    parts = [
        (OVERHEAD, a.overhead_bytes),
        (WEIGHTS, a.weights_bytes),
        (KV, a.kv_bytes),
        (RECURRENT, a.recurrent_bytes),
        (COMPUTE, a.compute_bytes),
        (UNATTRIBUTED, a.unattributed_bytes),
    ]
    return [Segment(kind, int(b), server.key, server.name) for kind, b in parts if b > 0]


def other_process_bytes(device: DeviceMemory, servers: Iterable[ServerReport]) -> int | None:
    """Used bytes of the pool not held by the servers (None when ``used`` is unknown)."""
    if device.used_bytes is None:
        return None
    ours = sum(_attribution_total(a) for s in servers for a in s.memory if a.device_id == device.id)
    return max(0, device.used_bytes - ours)


def pool_view(report: StatusReport, device: DeviceMemory) -> PoolView:
    segs: list[Segment] = []
    other = other_process_bytes(device, report.servers)
    if other:
        segs.append(Segment(OTHER, other))
    for server in report.servers:
        for a in server.memory:
            if a.device_id == device.id:
                segs.extend(server_segments(server, a))
    if device.free_bytes:
        segs.append(Segment(FREE, device.free_bytes))
    return PoolView(device, tuple(segs))


def pool_views(report: StatusReport) -> tuple[PoolView, ...]:
    return tuple(pool_view(report, d) for d in report.devices)


def tightest_pool(report: StatusReport) -> PoolView | None:
    """The pool with the smallest free share among those that hold a server (else all)."""
    views = [v for v in pool_views(report) if v.used_fraction is not None]
    if not views:
        return None
    with_servers = [v for v in views if any(s.server_key for s in v.segments)]
    return max(with_servers or views, key=lambda v: v.used_fraction or 0.0)



def nearest_forecast(report: StatusReport) -> tuple[ServerReport, SlotReport] | None:
    """The slot (or unified pool) that fills first: fewest seconds, then fewest turns."""
    best = None
    best_key = None
    for server in report.servers:
        candidates = list(server.slots) + ([server.pool] if server.pool else [])
        for slot in candidates:
            f = slot.forecast
            if f.turns_left is None and f.seconds_left is None:
                continue
            key = (f.seconds_left if f.seconds_left is not None else float("inf"),
                   f.turns_left if f.turns_left is not None else float("inf"))
            if best_key is None or key < best_key:
                best, best_key = (server, slot), key
    return best


def requests_left(turns_left: int | None) -> str:
    """A forecast's ``turns_left`` in words, for a table cell: ``~6 requests``.

    ``turns_left`` counts the request that hits the wall, so 1 is ``next request``.
    """
    if turns_left is None:
        return "–"
    if turns_left <= 0:
        return "full"
    return "next request" if turns_left == 1 else f"~{turns_left} requests"



DEMO_NAME = "kvwall-demo"  # the alias and model name of kvwall --demo's server (app/demo uses it)


def most_urgent_server(report: StatusReport) -> str | None:
    """The key of the server to show first: the one whose slot fills first (refused
    requests count as already full), else the demo server, else the fullest one."""
    if not report.servers:
        return None
    refused = [s for s in report.servers if s.refused_requests and s.refused_requests.count]
    if refused:
        return refused[0].key
    nearest = nearest_forecast(report)
    if nearest is not None:
        return nearest[0].key
    demo = next((s for s in report.servers if s.name == DEMO_NAME), None)
    if demo is not None:
        return demo.key

    def fullest(server: ServerReport) -> float:
        fills = [slot_fill(s) for s in (*server.slots, *([server.pool] if server.pool else []))]
        return max((f for f in fills if f is not None), default=0.0)

    return max(report.servers, key=fullest).key


