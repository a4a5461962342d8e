"""Resident memory of the desktop app after hours of simulated history (goal: under
200 MB, flat).

Builds the real main window (shown, offscreen) and feeds it one StatusReport per
simulated second: one server with four slots whose contexts grow and reset, on a GPU
pool and the host pool. Prints RSS every simulated 15 minutes for 2 hours, and the time
one report takes to reach the window.

    python benchmarks/bench_gui_memory.py [--hours 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

GiB, MiB = 1024**3, 1024**2


def make_report(i: int, wall0: float):
    from kvwall.budget.memory import DeviceBudget, MemoryPlan
    from kvwall.budget.report import (
        Advice,
        Attribution,
        Forecast,
        ServerReport,
        SlotReport,
        StatusReport,
    )
    from kvwall.monitors.snapshot import DeviceMemory

    kv, w, c = 4 * GiB, 18 * GiB, 600 * MiB
    plan = MemoryPlan(65536, 16384, 16384, 4, 4, False, "f16", "f16", "auto", 512, w, kv,
                      kv // 2, kv // 2, 0, 0, c, 0, 8 * GiB, w + kv + c, kv / 65536,
                      (DeviceBudget("CUDA0", False, w, kv, 0, c, 0, w + kv + c),), (), ())
    slots = []
    for s in range(4):
        tokens = ((i * (37 + 11 * s)) // 3) % 16384
        left = 16384 - tokens
        slots.append(SlotReport(s, 16384, tokens, i % 7 == s,
                                Forecast(300.0 + s, 900.0, left // 300, left / 15.0, 0.8, 5)))
    measured = w + kv + c + 700 * MiB + (i % 50) * MiB
    server = ServerReport(
        "pid:4242", 4242, "http://127.0.0.1:8080", "qwen3-32b", "/models/qwen3-32b.gguf", "ok",
        plan, (Attribution("nvidia:0", measured, w, kv, c, measured - w - kv - c),), tuple(slots),
        None, {"f16": 65536}, 0,
        (Advice("cache-q8_0", "q8_0 KV cache", 2 * GiB, 98304, "llama-server ...", "small"),), ())
    gpu = DeviceMemory("nvidia:0", "nvidia", "NVIDIA RTX 4090", False, 24 * GiB,
                       measured + 800 * MiB + (i % 30) * MiB, 0)
    gpu = DeviceMemory(gpu.id, gpu.kind, gpu.name, False, gpu.total_bytes, gpu.used_bytes,
                       gpu.total_bytes - gpu.used_bytes)
    host = DeviceMemory("host", "host", "Host RAM", True, 64 * GiB, 20 * GiB + (i % 100) * MiB,
                        44 * GiB - (i % 100) * MiB)
    return StatusReport(1000.0 + i, wall0 + i, (gpu, host), (server,))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=2.0)
    args = ap.parse_args()
    import psutil
    from kvwall.app.desktop.poll_worker import PollResult
    from kvwall.app.desktop.tray import Tray
    from kvwall.app.desktop.window import MainWindow
    from kvwall.budget.alerts import NotificationRules
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QApplication

    _app = QApplication(["kvwall"])  # kept alive for the whole run
    win = MainWindow()
    win.resize(1280, 880)
    win.show()
    tray = Tray()
    rules = NotificationRules()
    me = psutil.Process()
    wall0 = time.time() - args.hours * 3600
    print(f"RSS with {args.hours:g} h of simulated history, one report per second "
          "(goal < 200 MB, flat)")
    print(f"  start                 {me.memory_info().rss / MiB:7.1f} MiB")
    total = int(args.hours * 3600)
    spent = 0.0
    for i in range(total):
        r = make_report(i, wall0)
        t0 = time.perf_counter()
        win.set_result(PollResult(r))
        tray.set_report(r)
        rules.evaluate(r)
        spent += time.perf_counter() - t0
        if i % 60 == 0:  # let the window paint now and then, as it would
            win.history._redraw()
            QCoreApplication.processEvents()
        if (i + 1) % 900 == 0:
            print(f"  after {(i + 1) / 3600:4.2f} h         {me.memory_info().rss / MiB:7.1f} MiB"
                  f"   (history buffers {win.history.nbytes() / MiB:.1f} MiB)")
    print(f"  {1000 * spent / total:.2f} ms per report into window + tray + notification rules "
          "(painting excluded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
