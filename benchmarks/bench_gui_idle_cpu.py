"""Idle CPU of the desktop app with one real llama-server polled each second
(goal: under 2% of one core).

Starts a tiny real llama-server, then the real app (process scan, NVML/host memory, HTTP
to the server, Engine, window/tray updates) with a 1 s poll interval, only this server
kept from the scan. After a warm-up it measures the app's own CPU time (all its threads)
over a window, once with the window hidden (the tray case: polling and notifications go
on, plots are not repainted) and once with the window shown. Runs offscreen.

    python benchmarks/bench_gui_idle_cpu.py [--seconds 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    args = ap.parse_args()

    import psutil
    from kvwall.app.demo.session import Demo
    from kvwall.app.desktop.gui import KvwallApp
    from kvwall.app.desktop.live import LiveSource
    from kvwall.app.desktop.settings import SettingsStore
    from kvwall.monitors.devices import MemorySources
    from kvwall.monitors.discovery import Discovery, scan
    from kvwall.monitors.poller import Poller
    from kvwall.widgets.viewmodels.settings_model import defaults
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    _app = QApplication(["kvwall"])  # kept alive for the whole run
    work = Path(tempfile.mkdtemp())
    demo = Demo(work / "demo")
    demo.start()
    for agent in demo.agents:  # idle: a server nobody is talking to
        agent.stop(timeout=30)
    pid = demo.proc.pid

    def only_ours(**kw):
        found = scan(**kw)
        return Discovery(tuple(s for s in found.servers if s.pid == pid), found.notes,
                         found.errors)

    memory = MemorySources()
    source = LiveSource(poller=Poller(memory_sources=memory, discover_fn=only_ours))
    store = SettingsStore(work / "settings.json")
    store.save(defaults().replace(poll_interval_s=1.0))
    kv = KvwallApp(source, store, use_tray=False)
    kv.window.hide_on_close = True
    me = psutil.Process()

    def spin(seconds: float) -> None:
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()

    import threading

    gui_tid = threading.main_thread().native_id

    def gui_cpu() -> float:
        for t in me.threads():
            if t.id == gui_tid:
                return t.user_time + t.system_time
        return 0.0

    def measure(label: str) -> None:
        spin(args.warmup)
        polls0 = kv.results
        c0, g0, t0 = me.cpu_times(), gui_cpu(), time.monotonic()
        spin(args.seconds)
        c1, g1, t1 = me.cpu_times(), gui_cpu(), time.monotonic()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        gui = g1 - g0
        n = max(1, kv.results - polls0)
        print(f"  {label:22s} whole app {100 * cpu / (t1 - t0):5.2f} % of a core "
              f"({1000 * cpu / n:5.1f} ms/poll); GUI thread {100 * gui / (t1 - t0):5.2f} % "
              f"({1000 * gui / n:4.1f} ms/poll); the rest is the poll itself "
              f"(process scan, HTTP, engine) on the poll threads; {n} polls in {t1 - t0:.0f} s")

    try:
        kv.start(show_window=False)
        print(f"idle CPU, one llama-server (pid {pid}) polled every 1 s (goal < 2% of a core)")
        measure("window hidden (tray)")
        kv.show_window()
        measure("window shown")
    finally:
        kv.stop()
        source.close()
        demo.stop()
        memory.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
