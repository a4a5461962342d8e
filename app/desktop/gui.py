"""The desktop app: ``kvwall`` with no command (``--demo`` for a guided live example).

:class:`KvwallApp` wires the poll thread, the window, the tray, notifications and
settings; :func:`main` is the entry point.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, cast

from kvwall.app.desktop.demo_launcher import DemoLauncher, DemoLike, real_demo
from kvwall.app.desktop.notifications import NotificationCenter
from kvwall.app.desktop.poll_worker import PollResult, PollThread, PollWorker
from kvwall.app.desktop.settings import SettingsStore, set_autostart
from kvwall.app.desktop.tray import Tray
from kvwall.app.desktop.window import MainWindow, app_icon
from kvwall.budget.alerts import NotificationRules, Thresholds
from kvwall.widgets.viewmodels.settings_model import Settings
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QApplication, QMessageBox, QSystemTrayIcon

if TYPE_CHECKING:
    from kvwall.app.demo.session import Demo
    from kvwall.app.desktop.single_instance import SingleInstance
    from kvwall.budget.whatif import WhatIf
    from kvwall.widgets.settings_dialog import SettingsDialog

log = logging.getLogger(__name__)

PAUSE_SECONDS = 3600.0
TRAY_WAIT_TRIES = 30  # x 2 s: how long to wait for a tray that is not there at start
# Beside the settings file: present once kvwall has said, on a first start, where it lives.
TRAY_HINT_MARKER = "tray-hint-shown"
TRAY_HINT = ("kvwall is in the tray", "It watches your llama.cpp servers from here. Click "
             "the icon to open the window.")


class KvwallApp(QObject):
    """The running app.

    Args:
        poll_fn: ``(resumed) -> PollResult | StatusReport``, called on the poll thread.
        store: where settings live.
        use_tray: None = use a tray when the desktop has one.
        on_servers_changed: told the configured server URLs and keys when they change.
        on_settings_applied: told the new settings each time the user applies them
            (the poll source's own thresholds, such as the GPU-grab share, follow them).
        simulate: the what-if function (default ``kvwall.budget.whatif.simulate``).
        make_demo: builds the demo "Start demo" starts (default ``kvwall --demo``'s).

    Signals:
        result_shown(PollResult): a poll result reached the window and tray.
        quitting(): the app is shutting down.
    """

    result_shown = Signal(object)
    quitting = Signal()

    def __init__(self, poll_fn: Callable[[bool], object], store: SettingsStore | None = None, *,
                 use_tray: bool | None = None,
                 on_servers_changed: Callable[[Sequence[str], dict[str, str]], None] | None = None,
                 on_settings_applied: Callable[[Settings], None] | None = None,
                 simulate: Callable[..., WhatIf] | None = None,
                 autostart_home: Path | None = None,
                 make_demo: Callable[[], DemoLike] | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store = store or SettingsStore()
        loaded = self.store.load()
        self.settings: Settings = loaded.settings
        self.startup_message = loaded.message
        self._on_servers_changed = on_servers_changed
        self._on_settings_applied = on_settings_applied
        self._autostart_home = autostart_home
        self.thresholds = Thresholds.from_settings(self.settings.values)
        self.rules = NotificationRules(self.thresholds)

        self.window = MainWindow(simulate=simulate)
        self._window_thresholds()
        self.window.setWindowIcon(app_icon())
        # At login the panel's tray may come up after kvwall: wait for it a while.
        self._tray_wait = QTimer(self)
        self._tray_wait.setInterval(2000)
        self._tray_wait.timeout.connect(self._look_for_tray)
        self._tray_deadline = 0
        if use_tray is None:
            use_tray = QSystemTrayIcon.isSystemTrayAvailable()
            self._tray_deadline = 0 if use_tray else TRAY_WAIT_TRIES
        self.tray: Tray | None = None
        self.notifications = NotificationCenter(self.rules, None, self)
        self.notifications.open_server.connect(self.show_server)
        self.window.close_requested.connect(self._window_closed)
        self.window.url_added.connect(self.add_server_url)
        self.demo_launcher = DemoLauncher(make_demo or real_demo, self)
        self.window.demo_requested.connect(self.start_demo)
        self.demo_launcher.started.connect(self._demo_started)
        self.demo_launcher.failed.connect(self._demo_failed)
        if use_tray:
            self._make_tray()
        self.window.hide_on_close = self.tray is not None

        self.worker = PollWorker(poll_fn, self.settings["poll_interval_s"])
        self.worker.polled.connect(self._on_result, Qt.ConnectionType.QueuedConnection)
        self.worker.failed.connect(self._on_failure, Qt.ConnectionType.QueuedConnection)
        self.poll_thread = PollThread(self.worker, self)
        self._pause_timer = QTimer(self)
        self._pause_timer.setSingleShot(True)
        self._pause_timer.timeout.connect(lambda: self.set_paused(False))
        self._stopped = False
        self.results = 0
        self._settings_dialog: SettingsDialog | None = None
        self._told_still_running = False

    def _window_thresholds(self) -> None:
        self.window.slot_full_percent = self.thresholds.slot_full_percent
        self.window.slot_warn_turns = self.thresholds.slot_warn_turns
        self.window.slot_critical_turns = self.thresholds.slot_critical_turns

    def _make_tray(self) -> Tray:
        self.tray = tray = Tray(self.thresholds, self)
        tray.open_window.connect(self.show_window)
        tray.open_server.connect(self.show_server)
        tray.settings_requested.connect(self.open_settings)
        tray.quit_requested.connect(self.quit)
        tray.pause_toggled.connect(self.set_paused)
        self.notifications.set_tray(tray.icon)
        report = self.window.report()
        if report is not None:
            tray.set_report(report)
        return tray

    def _look_for_tray(self) -> None:
        self._tray_deadline -= 1
        if QSystemTrayIcon.isSystemTrayAvailable():
            self._tray_wait.stop()
            tray = self._make_tray()
            self.window.hide_on_close = True
            tray.show()
            log.info("a system tray appeared; kvwall now lives there")
        elif self._tray_deadline <= 0:
            self._tray_wait.stop()
            log.info("no system tray: kvwall runs as a normal window")

    # -- lifecycle -----------------------------------------------------------------
    def start(self, show_window: bool | None = None) -> None:
        if self.tray is not None:
            self.tray.show()
        elif self._tray_deadline > 0:
            self._tray_wait.start()
        if show_window or (show_window is None and self.tray is None):
            self.show_window()
        elif self.tray is not None:
            self._first_start_hint()
        if self.startup_message:
            self.window.statusBar().showMessage(self.startup_message, 30000)
            if self.tray is not None:
                self.tray.icon.showMessage("kvwall settings recovered", self.startup_message,
                                           QSystemTrayIcon.MessageIcon.Information, 15000)
        self.poll_thread.start()

    def _first_start_hint(self) -> None:
        """Once per user: started into the tray with no window, say where kvwall is."""
        marker = self.store.path.with_name(TRAY_HINT_MARKER)
        if marker.exists() or self.tray is None:
            return
        self.tray.icon.showMessage(*TRAY_HINT, QSystemTrayIcon.MessageIcon.Information, 10000)
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError as exc:  # said again next start: better than never
            log.warning("cannot remember the tray hint: %s", exc.strerror)

    def stop(self) -> None:
        """Stop polling and hide the tray (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self.quitting.emit()
        self._pause_timer.stop()
        self._tray_wait.stop()
        self.poll_thread.stop()
        self.demo_launcher.stop()
        if self.tray is not None:
            self.tray.hide()
        self.window.hide_on_close = False
        self.window.close()

    def quit(self) -> None:
        self.stop()
        app = QApplication.instance()
        if app is not None:
            app.quit()

    # -- results -------------------------------------------------------------------
    def _on_result(self, result: PollResult) -> None:
        if self._stopped:
            return
        self.results += 1
        self.window.set_result(result)
        if self.tray is not None:
            self.tray.set_report(result.report)
        self.notifications.handle(result.report)
        self.result_shown.emit(result)

    def _on_failure(self, message: str) -> None:
        self.window.statusBar().showMessage(f"Poll failed: {message}", 10000)

    # -- user actions --------------------------------------------------------------
    def show_window(self) -> None:
        self.window.bring_to_front()

    def show_server(self, key: str) -> None:
        self.show_window()
        if key:
            self.window.select_server(key)

    def start_demo(self) -> None:
        """Start the demo server and agent in the background ("Start demo")."""
        if not self.demo_launcher.start():
            self.window.empty.set_demo_message("The demo is already running.")

    def _demo_started(self, url: str) -> None:
        self.window.empty.set_demo_message(f"Demo server running at {url}: it appears "
                                           "here within a poll.")
        self.worker.request_poll()

    def _demo_failed(self, message: str) -> None:
        self.window.empty.set_demo_message(f"The demo could not start: {message}")

    def set_paused(self, paused: bool) -> None:
        if paused:
            self.rules.pause(PAUSE_SECONDS)
            self._pause_timer.start(int(PAUSE_SECONDS * 1000))
            self.window.statusBar().showMessage("Notifications paused for an hour", 10000)
        else:
            self.rules.resume()
            self._pause_timer.stop()
        if self.tray is not None:
            self.tray.set_paused(paused, time.time() + PAUSE_SECONDS if paused else None)

    def _window_closed(self) -> None:
        if not self.window.hide_on_close and not self._stopped:
            self.quit()
        elif self.tray is not None and not self._told_still_running and not self._stopped:
            # Once per run: closing the window is not quitting, say where kvwall went.
            self._told_still_running = True
            self.tray.icon.showMessage(
                "kvwall is still running",
                "It keeps watching your servers from the tray. Quit it from the tray menu.",
                QSystemTrayIcon.MessageIcon.Information, 8000)

    def add_server_url(self, url: str) -> None:
        """Watch ``url`` from now on (saved; a URL already watched is not added twice)."""
        if url not in {s.url for s in self.settings.servers}:
            servers = [*self.settings.servers, {"url": url}]
            self.apply_settings(self.settings.replace(servers=servers))
        self.worker.request_poll()

    def open_settings(self) -> None:
        """Open the settings dialog (or raise the one already open)."""
        import shiboken6
        from kvwall.widgets.settings_dialog import SettingsDialog

        open_one = self._settings_dialog
        if open_one is not None and shiboken6.isValid(open_one) and open_one.isVisible():
            open_one.raise_()
            open_one.activateWindow()
            return
        dialog = SettingsDialog(self.settings, self.window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self.apply_settings(dialog.new_settings))
        dialog.open()
        self._settings_dialog = dialog

    def apply_settings(self, settings: Settings | None) -> None:
        if settings is None:
            return
        old = self.settings
        self.settings = settings
        try:
            self.store.save(settings)
        except OSError as exc:
            QMessageBox.warning(self.window, "kvwall", f"Settings could not be saved: {exc}")
        self.thresholds = Thresholds.from_settings(settings.values)
        self.rules.set_thresholds(self.thresholds)
        if self.tray is not None:
            self.tray.thresholds = self.thresholds
        self._window_thresholds()
        if settings["poll_interval_s"] != old["poll_interval_s"]:
            self.worker.request_interval(settings["poll_interval_s"])
        if self._on_settings_applied is not None:
            self._on_settings_applied(settings)
        if settings.servers != old.servers and self._on_servers_changed is not None:
            self._on_servers_changed([s.url for s in settings.servers],
                                     {s.url: s.api_key for s in settings.servers if s.api_key})
        if settings["start_on_login"] != old["start_on_login"]:
            try:
                set_autostart(settings["start_on_login"], self._autostart_home)
            except OSError as exc:
                self.window.statusBar().showMessage(f"Start on login: {exc.strerror}", 10000)


def display_problem(environ: Mapping[str, str] = os.environ, platform: str = sys.platform,
                    find_library: Callable[[str], str | None] | None = None) -> str | None:
    """Why Qt would abort at start here, with what to do; None when it should start.

    Qt aborts the process (no exception) without a display or without the xcb platform's
    libraries, so this is checked first and said once, in words.
    """
    if not platform.startswith("linux"):
        return None
    qpa = environ.get("QT_QPA_PLATFORM", "")
    if qpa and not qpa.startswith("xcb"):
        return None  # wayland, offscreen...: Qt reports its own errors
    if not environ.get("DISPLAY") and not environ.get("WAYLAND_DISPLAY"):
        return ("no desktop session (DISPLAY is not set). The tray app needs one; on a "
                "headless machine use `kvwall status` or `kvwall plan`.")
    if not environ.get("DISPLAY"):
        return None  # Wayland: Qt picks its wayland platform
    if find_library is None:
        from ctypes.util import find_library as ctypes_find_library

        find_library = ctypes_find_library
    if find_library("xcb-cursor") is None:
        return ("Qt's X11 platform needs libxcb-cursor (Debian/Ubuntu: sudo apt-get install "
                "libxcb-cursor0; ./bootstrap.sh run installs everything).")
    return None


class QuitSignals(QObject):
    """SIGTERM, SIGINT and SIGHUP as a Qt signal on the GUI thread.

    Python runs signal handlers only between bytecodes, never while Qt's event loop
    waits, so the signal number is also written to a socket that Qt watches (no polling
    timer). Without this, ``kill <pid>``, a logout or Ctrl+C would end kvwall without its
    cleanup and leave the ``--demo`` llama-server running. :attr:`received` stays True
    once one arrived (also before the event loop runs); :meth:`restore` puts the previous
    handlers back.

    Signals:
        requested(): a quit signal arrived.
    """

    requested = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        import signal
        import socket

        from PySide6.QtCore import QSocketNotifier

        super().__init__(parent)
        self.received = False
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._writer.fileno())
        names = [n for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n)]
        self._old = {n: signal.signal(getattr(signal, n), self._handler) for n in names}
        self._notifier = QSocketNotifier(self._reader.fileno(), QSocketNotifier.Type.Read,
                                         self)
        self._notifier.activated.connect(self._readable)

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self.received = True

    def _readable(self) -> None:
        try:
            got = self._reader.recv(64)
        except OSError:
            return
        if got:
            log.info("signal %d received: quitting", got[0])
            self.requested.emit()

    def restore(self) -> None:
        import signal

        self._notifier.setEnabled(False)
        signal.set_wakeup_fd(self._old_fd)
        for name, handler in self._old.items():
            signal.signal(getattr(signal, name), handler)
        self._reader.close()
        self._writer.close()


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvwall", description="kvwall desktop app")
    parser.add_argument("--demo", action="store_true",
                        help="start a tiny llama-server and a growing agent to show kvwall")
    parser.add_argument("--show", action="store_true", help="open the window at start")
    parser.add_argument("--quit-after", type=float, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the desktop app; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = _parse(args)
    except SystemExit as exc:  # argparse printed the problem
        return int(exc.code or 0)

    os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")
    log_path = _start_logging()
    problem = display_problem()
    if problem:
        log.error("cannot start the desktop app: %s", problem)
        print(f"kvwall: {problem}", file=sys.stderr)
        return 2
    app = _application()
    quit_signals = QuitSignals(app)
    log.info("kvwall starting (log: %s)", log_path)

    from kvwall.app.desktop.single_instance import SingleInstance

    instance = SingleInstance()
    if not instance.claim():
        print("kvwall is already running; its window was raised.")
        if opts.demo:
            print("kvwall --demo: the demo starts with kvwall itself: quit the running "
                  "kvwall (tray menu > Quit kvwall) and run kvwall --demo again.",
                  file=sys.stderr)
            return 2
        return 0
    try:
        from kvwall.app.desktop.settings import install_desktop_entry

        install_desktop_entry()
    except OSError as exc:
        log.warning("cannot install the desktop entry: %s", exc.strerror)

    demo = None
    if opts.demo:
        from kvwall.app.demo.session import Demo, DemoUnavailable

        demo = Demo()
        try:
            demo.start()
        except (DemoUnavailable, OSError) as exc:
            demo.stop()
            print(f"kvwall --demo: {exc}", file=sys.stderr)
            log.error("demo unavailable: %s", exc)
            instance.release()
            return 2
    return _run(app, opts, instance, quit_signals, demo)


def _start_logging() -> Path | None:
    """The rotating log file; None when no log file can be written."""
    from kvwall.app.desktop.logging_setup import setup_logging

    try:
        return setup_logging()
    except OSError as exc:
        print(f"kvwall: cannot write logs ({exc}); continuing without a log file",
              file=sys.stderr)
        return None


def _application() -> QApplication:
    """The QApplication, named and iconed, with Qt's own messages routed into logging."""
    from kvwall.app.desktop.logging_setup import install_qt_message_handler

    app = cast(QApplication, QApplication.instance() or QApplication(["kvwall"]))
    app.setApplicationName("kvwall")
    app.setApplicationDisplayName("kvwall")
    app.setOrganizationName("kvwall")
    app.setDesktopFileName("kvwall")
    app.setWindowIcon(app_icon())
    app.setQuitOnLastWindowClosed(False)
    install_qt_message_handler()
    return app


def _run(app: QApplication, opts: argparse.Namespace, instance: SingleInstance,
         quit_signals: QuitSignals, demo: Demo | None) -> int:
    """Watch, show and run the event loop; stop everything whatever happens."""
    from kvwall.app.desktop.live import LiveSource
    from kvwall.budget.history import open_store

    source = kv = None
    try:
        history, history_message = open_store()  # None (and why) when history is off
        # The demo server is found like any other process.
        source = LiveSource(history=history)
        kv = KvwallApp(source, SettingsStore(), on_servers_changed=source.set_servers,
                       on_settings_applied=source.apply_settings)
        # Settings are read once, by the app (so a recovery message is shown, not lost).
        source.set_servers([s.url for s in kv.settings.servers],
                           {s.url: s.api_key for s in kv.settings.servers if s.api_key})
        source.apply_settings(kv.settings)
        instance.activated.connect(kv.show_window)
        quit_signals.requested.connect(kv.quit)
        kv.start(show_window=opts.show or opts.demo or None)
        if history_message:  # a damaged history moved aside, or history off
            kv.window.statusBar().showMessage(history_message, 30000)
        if opts.quit_after is not None:
            QTimer.singleShot(int(opts.quit_after * 1000), kv.quit)
        if quit_signals.received:  # asked to quit while starting: no event loop at all
            log.info("quit signal received while starting: quitting")
            code = 0
        else:
            code = app.exec()
    finally:  # whatever happened, the demo server and the poll thread do not outlive us
        quit_signals.restore()
        if kv is not None:
            kv.stop()
        if source is not None:
            source.close()
        if demo is not None:
            demo.stop()
        instance.release()
        log.info("kvwall stopped")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
