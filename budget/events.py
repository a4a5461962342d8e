"""Memory events: another process suddenly took a large share of a pool (pure, clock-free)."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable
from typing import Final

from kvwall.budget.report import MemoryEvent, MemoryEventKind
from kvwall.monitors.snapshot import DeviceMemory

PROCESS_GRAB: Final[MemoryEventKind] = "process_grab"

# Defaults: a process that grew by 10% of the pool, or by 4 GiB, within 60 seconds.
GRAB_SHARE = 0.10
GRAB_BYTES = 4 * 1024**3
GRAB_WINDOW_S = 60.0


class GrabDetector:
    """Watches ``DeviceMemory.processes`` poll after poll for a sudden grab.

    A process that is not a known server and whose used bytes on one pool grew by at least
    ``share`` of the pool's total or ``grown_bytes`` within ``window_s`` seconds is reported
    at every poll while that growth is within the window (so a rule reading the events sees
    the condition hold, then clear once the new level is the normal one). A process that
    appears with memory already in use counts as grown from zero, except at the first poll
    a pool is seen (nothing is known before it). Host RAM is skipped. Memory is bounded: the
    samples of the last ``window_s`` seconds per (pool, process); vanished ones are dropped.

    Args:
        share: fraction of the pool's total (0..1).
        grown_bytes: absolute growth in bytes.
        window_s: seconds.

    Raises:
        ValueError: a non-positive threshold or window.
    """

    def __init__(self, *, share: float = GRAB_SHARE, grown_bytes: int = GRAB_BYTES,
                 window_s: float = GRAB_WINDOW_S) -> None:
        if share <= 0 or grown_bytes <= 0 or window_s <= 0:
            raise ValueError("share, grown_bytes and window_s must be positive")
        self.share = share
        self.grown_bytes = grown_bytes
        self.window_s = window_s
        self._history: dict[tuple[str, int], deque[tuple[float, int]]] = {}
        self._seen_devices: dict[str, float] = {}

    def observe(self, devices: Iterable[DeviceMemory], timestamp: float,
                server_pids: Collection[int] = ()) -> tuple[MemoryEvent, ...]:
        """Feed one poll; return the grabs in progress, largest first.

        Args:
            devices: the pools as measured, with their per-process use.
            timestamp: the poll's monotonic time (seconds).
            server_pids: pids of the llama.cpp servers in the report (never a grab).
        """
        events: list[MemoryEvent] = []
        alive: set[tuple[str, int]] = set()
        for d in devices:
            if d.kind == "host":
                continue
            first = d.id not in self._seen_devices or (
                timestamp - self._seen_devices[d.id] > self.window_s)
            self._seen_devices[d.id] = timestamp
            for p in d.processes:
                key = (d.id, p.pid)
                alive.add(key)
                hist = self._history.get(key)
                if hist is None or (hist and timestamp < hist[-1][0]):
                    hist = deque()
                    self._history[key] = hist
                    if not first:
                        hist.append((timestamp, 0))  # appeared since the last poll
                hist.append((timestamp, int(p.used_bytes)))
                while len(hist) > 1 and timestamp - hist[0][0] > self.window_s:
                    hist.popleft()
                if p.pid in server_pids:
                    continue
                low_t, low = min(hist, key=lambda x: x[1])
                grown = int(p.used_bytes) - low
                if grown <= 0:
                    continue
                share = grown / d.total_bytes if d.total_bytes else 0.0
                if share >= self.share or grown >= self.grown_bytes:
                    events.append(MemoryEvent(PROCESS_GRAB, d.id, p.pid, p.name, grown,
                                              int(p.used_bytes), round(share, 4),
                                              timestamp - low_t, timestamp))
        for key in [k for k in self._history if k not in alive]:
            del self._history[key]
        for dev in [k for k, t in self._seen_devices.items() if timestamp - t > self.window_s]:
            del self._seen_devices[dev]
        events.sort(key=lambda e: -e.grown_bytes)
        return tuple(events)

    def forget(self) -> None:
        """Drop every history (after a sleep/resume: growth across it is not sudden)."""
        self._history.clear()
        self._seen_devices.clear()

    def __len__(self) -> int:
        """(pool, process) pairs followed."""
        return len(self._history)
