"""Run by test_tray_e2e.py: kvwall starts where no tray exists (a normal window), then a
tray host appears (as at login) and kvwall moves into it. Writes OUT/ready when it runs
trayless, and OUT/result.json at the end. Usage: ``python late_tray.py OUT``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication


def spin(seconds: float) -> None:
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def main(out: Path) -> dict:
    from kvwall.app.desktop.gui import KvwallApp
    from kvwall.app.desktop.settings import SettingsStore
    from kvwall.budget.report import StatusReport
    from kvwall.monitors.snapshot import DeviceMemory

    app = QApplication(["kvwall"])
    app.setQuitOnLastWindowClosed(False)
    report = StatusReport(0.0, time.time(), (DeviceMemory(
        "host", "host", "Host RAM", True, 16 << 30, 8 << 30, 8 << 30),), ())
    kv = KvwallApp(lambda resumed: report, SettingsStore(out / "settings.json"))
    r: dict = {}
    try:
        kv.start()
        spin(0.5)
        r["tray_at_start"] = kv.tray is not None
        r["window_visible_at_start"] = kv.window.isVisible()
        r["close_quits_at_start"] = not kv.window.hide_on_close
        (out / "ready").write_text("1")
        end = time.monotonic() + 60
        while time.monotonic() < end and not (kv.tray and kv.tray.icon.isVisible()
                                              and kv.tray.icon.geometry().width() > 0):
            spin(0.2)
        r["tray_later"] = kv.tray is not None and kv.tray.icon.isVisible()
        r["close_hides_later"] = kv.window.hide_on_close
        kv.window.close()
        spin(0.3)
        r["still_running_after_close"] = not kv._stopped
    finally:
        kv.stop()
    return r


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    res = main(out)
    (out / "result.json").write_text(json.dumps(res))
