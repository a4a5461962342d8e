"""End-to-end scenario run by test_tray_e2e.py in its own process (Qt's xcb platform on the
Xvfb display that pytest-xvfb started, with ``trayer`` as the tray host).

It starts a real tiny llama-server with a growing agent (``kvwall.app.demo.session``), runs the real
app against the real machine (``LiveSource``), observes what a user would see, takes the
screenshots and writes everything to ``OUT/result.json``. It asserts nothing itself: the
test reads the JSON and asserts. Usage: ``python scenario.py OUT [SCREENSHOT_DIR]``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

from PySide6.QtCore import QEventLoop, QPoint, QRect, QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QSystemTrayIcon

DEADLINE_S = 150.0


def spin(app: QApplication, seconds: float) -> None:
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def wait_for(app: QApplication, what: str, predicate, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        spin(app, 0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for: {what}")


def main(out: Path, shots: Path | None) -> dict:
    from kvwall.app.demo.session import Demo
    from kvwall.app.desktop.gui import KvwallApp
    from kvwall.app.desktop.live import LiveSource
    from kvwall.app.desktop.settings import SettingsStore
    from kvwall.widgets.viewmodels.settings_model import defaults

    result: dict = {"steps": []}
    app = QApplication(["kvwall"])
    app.setApplicationName("kvwall")
    app.setDesktopFileName("kvwall")
    app.setQuitOnLastWindowClosed(False)
    wait_for(app, "a system tray", QSystemTrayIcon.isSystemTrayAvailable, 20)
    result["tray_available"] = True

    demo = Demo(out / "demo", agent_pause_s=1.5)
    demo.start()
    result["server_pid"] = demo.proc.pid
    result["server_log"] = str(demo.log_path)
    key = f"pid:{demo.proc.pid}"

    store = SettingsStore(out / "settings.json")
    store.save(defaults().replace(poll_interval_s=1.0, slot_warn_turns=5, slot_critical_turns=2))
    source = LiveSource()
    kv = KvwallApp(source, store, use_tray=True)
    shown_messages: list[dict] = []
    real_show = kv.tray.icon.showMessage

    def recording_show(title, message, *args):
        shown_messages.append({"title": title, "message": message})
        return real_show(title, message, *args)

    kv.tray.icon.showMessage = recording_show  # what NotificationCenter calls
    notified: list = []
    kv.notifications.notified.connect(notified.append)
    try:
        kv.start(show_window=True)
        kv.window.resize(1280, 880)
        wait_for(app, "the tray icon to be embedded",
                 lambda: kv.tray.icon.isVisible() and kv.tray.icon.geometry().isValid()
                 and kv.tray.icon.geometry().width() > 0, 20)
        g = kv.tray.icon.geometry()
        result["tray_geometry"] = [g.x(), g.y(), g.width(), g.height()]

        def ours():
            report = kv.window.report()
            return None if report is None else next(
                (s for s in report.servers if s.key == key), None)

        wait_for(app, "the window to list the demo server", lambda: ours() is not None, 30)
        kv.window.select_server(key)
        model = kv.window.table_model
        rows = [[model.index(r, c).data() for c in range(model.columnCount())]
                for r in range(model.rowCount()) if model.rows()[r].server_key == key]
        result["table_rows"] = rows

        def forecast_known():
            s = ours()
            return bool(s and any(sl.forecast.turns_left for sl in s.slots))

        wait_for(app, "a forecast", forecast_known, 60)
        s = ours()
        result["forecast"] = [
            {"slot": sl.id, "tokens": sl.tokens, "n_ctx": sl.n_ctx,
             "turns_left": sl.forecast.turns_left, "seconds_left": sl.forecast.seconds_left}
            for sl in s.slots]
        result["tray_tooltip"] = kv.tray.icon.toolTip()
        rows = [[model.index(r, c).data() for c in range(model.columnCount())]
                for r in range(model.rowCount()) if model.rows()[r].server_key == key]
        result["table_rows_with_forecast"] = rows

        wait_for(app, "a notification about the demo slot",
                 lambda: any(n.server_key == key and n.kind in ("slot_forecast", "slot_full")
                             for n in notified), 90)
        result["notifications"] = [
            {"kind": n.kind, "level": n.level, "server_key": n.server_key, "title": n.title,
             "message": n.message} for n in notified]
        result["shown_messages"] = shown_messages

        # What-if: one click on "q8_0 cache" for the demo server.
        from PySide6.QtCore import Qt
        from PySide6.QtTest import QTest

        kv.window.select_server(key)
        wait_for(app, "what-if inputs", lambda: kv.window.whatif.buttons["q8_0"].isEnabled(), 10)  # noqa: PLW0108 - look the button up at each check
        QTest.mouseClick(kv.window.whatif.buttons["q8_0"], Qt.MouseButton.LeftButton)
        wi = kv.window.whatif.result().what_if
        result["what_if"] = {"label": wi.label, "command": wi.command,
                             "kv_bytes": wi.plan.kv_bytes, "n_ctx": wi.plan.n_ctx,
                             "refused": wi.refused,
                             "shown_command": kv.window.whatif.command_view.toPlainText()}
        QTest.mouseClick(kv.window.whatif.copy_button, Qt.MouseButton.LeftButton)
        result["clipboard"] = QGuiApplication.clipboard().text()

        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)

            def filled():  # a fuller slot makes a more telling picture
                s = ours()
                return bool(s and any((sl.tokens or 0) >= 0.5 * sl.n_ctx for sl in s.slots))

            try:
                wait_for(app, "a half-full slot for the screenshot", filled, 60)
            except TimeoutError:
                pass
            kv.window.select_server(key)
            QTest.mouseClick(kv.window.whatif.buttons["q8_0"], Qt.MouseButton.LeftButton)
            kv.window.history.tabs.setCurrentIndex(1)
            spin(app, 0.5)
            kv.window.grab().save(str(shots / "main-window.png"))
            kv.window.history.tabs.setCurrentIndex(0)
            spin(app, 0.3)
            kv.window.grab().save(str(shots / "main-window-memory.png"))
            # The tray menu, opened at the icon, with the panel around it.
            kv.window.hide()
            kv.tray.rebuild_menu()
            g = kv.tray.icon.geometry()
            kv.tray.menu.popup(QPoint(g.left(), g.bottom() + 2))
            spin(app, 0.8)
            screen = QGuiApplication.primaryScreen()
            shot = screen.grabWindow(0)
            menu = kv.tray.menu.geometry()
            left = min(menu.left(), g.left()) - 16
            area = QRect(left, 0, max(menu.right(), g.right()) + 16 - left, menu.bottom() + 16)
            shot.copy(area.intersected(shot.rect())).save(str(shots / "tray-menu.png"))
            kv.tray.menu.hide()
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - the scenario reports any failure to the test
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    finally:
        kv.stop()
        source.close()
        demo.stop()
        app.processEvents()
    return result


if __name__ == "__main__":
    out = Path(sys.argv[1])
    shots = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    out.mkdir(parents=True, exist_ok=True)
    res = main(out, shots)
    (out / "result.json").write_text(json.dumps(res, indent=2, default=str))
    sys.exit(0 if res.get("ok") else 1)
