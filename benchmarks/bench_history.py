"""The history store's cost: one write per poll, and a one-shot ``kvwall status`` that
starts with 24 h of history (cold start: open, replay into the trackers, list stopped).

Builds 24 h of history for ``--servers`` servers (2 slots each, 2 memory pools) at one
poll every 2 s through the real :class:`~kvwall.budget.history.HistoryStore` (so the
downsampling runs as it does in the app), in a temporary state dir. Prints the write time
per poll (median and p99), the file size, the replay a starting app or one-shot status
does (in-process), and the wall time of ``kvwall status --json`` with that history and
with ``--no-history``, with tiny llama-servers running (so the engine and the replay run).

Run: ``python benchmarks/bench_history.py [--servers 8] [--hours 24]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import tiny_servers
from kvwall.budget.config import ServerConfig
from kvwall.budget.forecast import ContextTracker, PoolTracker
from kvwall.budget.history import (
    FILE_NAME,
    HistoryStore,
    seed_trackers,
    stored_reports,
)
from kvwall.budget.report import Forecast, ServerReport, SlotReport, StatusReport
from kvwall.monitors.snapshot import DeviceMemory

POLL_S = 2.0
GiB = 1 << 30


def _report(t: float, servers: int) -> StatusReport:
    step = int(t // 30)  # every 30 s a request adds 200 cells, a new conversation at 8000
    reports = []
    for n in range(servers):
        tokens = 500 + (step * 200 + n * 700) % 7500
        slots = tuple(SlotReport(i, 8192, tokens if i == 0 else 300, False, Forecast(),
                                 id_task=3 * step + i) for i in range(2))
        reports.append(ServerReport(
            key=f"pid:{1000 + n}", pid=1000 + n, url=f"http://127.0.0.1:{8080 + n}",
            name=f"model-{n}", model_path=None, health="ok", plan=None, memory=(),
            slots=slots, pool=None, max_ctx={}, more_servers_fit=None, advice=(), errors=(),
            config=ServerConfig(argv=("llama-server", "-m", f"/m/{n}.gguf", "-c", "16384"))))
    devices = (DeviceMemory("host", "host", "Host RAM", True, 64 * GiB, 20 * GiB, 44 * GiB),
               DeviceMemory("nvidia:0", "nvidia", "GPU", False, 24 * GiB,
                            12 * GiB + int(t) % GiB, 12 * GiB - int(t) % GiB))
    return StatusReport(t, t, devices, tuple(reports))


def build(path: Path, servers: int, hours: float, now: float) -> list[float]:
    """Write ``hours`` of polls ending at ``now``; the write times of the last hour."""
    clock = [now - hours * 3600]
    store = HistoryStore(path, clock=lambda: clock[0])
    times: list[float] = []
    t = clock[0]
    while t < now:
        report = _report(t, servers)
        t0 = time.perf_counter()
        store.record(report)
        if t >= now - 3600:
            times.append(time.perf_counter() - t0)
        t += POLL_S
        clock[0] = t
    store.close()
    return times


def replay(path: Path, now: float) -> tuple[float, float, int]:
    """(seconds to seed the trackers, seconds to read the plots' hour, reports read)."""
    store = HistoryStore(path, clock=lambda: now)
    t0 = time.perf_counter()
    seed_trackers(store, ContextTracker(), PoolTracker(), now_wall=now, now_monotonic=1e6)
    t1 = time.perf_counter()
    past = stored_reports(store, now - 3600, now_wall=now, now_monotonic=1e6)
    t2 = time.perf_counter()
    store.close()
    return t1 - t0, t2 - t1, len(past)


def one_shot(state: str, *extra: str, runs: int = 5) -> float:
    """Median wall seconds of ``kvwall status --json`` with ``XDG_STATE_HOME=state``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    env["XDG_STATE_HOME"] = state
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "kvwall.app", "status", "--json", *extra],
                              capture_output=True, env=env, timeout=120)
        walls.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(done.stderr.decode()[-500:])
    return statistics.median(walls)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=8)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--running", type=int, default=2, help="tiny llama-servers running")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvwall-bench-history-") as state:
        path = Path(state) / "kvwall" / FILE_NAME
        now = time.time()
        t0 = time.perf_counter()
        writes = build(path, args.servers, args.hours, now)
        built = time.perf_counter() - t0
        writes.sort()
        p99 = writes[min(len(writes) - 1, int(len(writes) * 0.99))]
        size = sum(f.stat().st_size for f in path.parent.iterdir())
        store = HistoryStore(path)
        rows = store.rows()
        store.close()
        print(f"history of {args.hours:.0f} h, {args.servers} servers x 2 slots, 2 pools, one "
              f"poll every {POLL_S:.0f} s: built in {built:.1f} s; {size / 2**20:.1f} MiB on "
              f"disk; rows {rows}")
        print(f"one write per poll: median {statistics.median(writes) * 1e3:.2f} ms, p99 "
              f"{p99 * 1e3:.2f} ms (downsampling included; a poll every {POLL_S:.0f} s: "
              f"{100 * statistics.fmean(writes) / POLL_S:.3f}% of one core)")
        seed_s, past_s, n = replay(path, now)
        print(f"replay: trackers seeded in {seed_s * 1e3:.0f} ms; the window's last hour "
              f"({n} polls) read in {past_s * 1e3:.0f} ms")
        with tiny_servers(args.running):
            with_history = one_shot(state)
            without = one_shot(state, "--no-history")
        print(f"one-shot `kvwall status --json`, {args.running} server(s) running: "
              f"{with_history * 1e3:.0f} ms with {args.hours:.0f} h of history, "
              f"{without * 1e3:.0f} ms with --no-history")
    print("note: other llama-servers running on this machine are found and polled too.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
