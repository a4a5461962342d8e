"""A first start into the tray says where kvwall is (once); the empty state starts the
demo without blocking the window; "Copy command" confirms that it copied."""

from __future__ import annotations

import threading

import gui_factories as f
import pytest
from kvwall.app.demo.session import DemoUnavailable
from kvwall.app.desktop.gui import TRAY_HINT, KvwallApp
from kvwall.app.desktop.settings import SettingsStore
from kvwall.widgets.whatif import COPIED_TEXT, COPY_TEXT, WhatIfPanel
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

TRAY_NOISE = ("systemTrayWindowChanged", "does not support raise",
              "does not support propagateSizeHints")


class _Demo:
    """Stands in for kvwall.app.demo.session.Demo: ``start`` blocks until released (as
    the real one waits for the server to load), then answers or raises what the real one
    raises."""

    def __init__(self, error: str | None = None) -> None:
        self.error = error
        self.release = threading.Event()
        self.started = self.stopped = False

    @property
    def url(self) -> str:
        return "http://127.0.0.1:18080"

    def start(self) -> None:
        assert self.release.wait(10)
        if self.error:
            raise DemoUnavailable(self.error)
        self.started = True

    def stop(self) -> None:
        self.release.set()
        self.stopped = True


@pytest.mark.qt_log_ignore(*TRAY_NOISE)
def test_first_start_into_the_tray_says_so_once(qtbot, tmp_path):
    shown = []
    for _run in range(2):
        app = KvwallApp(lambda resumed: f.report(), SettingsStore(tmp_path / "s.json"),
                        use_tray=True)
        qtbot.addWidget(app.window)
        app.tray.icon.showMessage = lambda title, *rest: shown.append(title)
        try:
            app.start(show_window=False)
            assert not app.window.isVisible()
        finally:
            app.stop()
    assert shown == [TRAY_HINT[0]]


def test_without_a_tray_the_window_shows(qtbot, tmp_path):
    app = KvwallApp(lambda resumed: f.report(), SettingsStore(tmp_path / "s.json"),
                    use_tray=False)
    qtbot.addWidget(app.window)
    try:
        app.start()
        assert app.window.isVisible()
    finally:
        app.stop()


@pytest.mark.parametrize("error", [None, "the demo needs a llama-server binary"])
def test_start_demo_runs_off_the_gui_thread(qtbot, tmp_path, error):
    demo = _Demo(error)
    app = KvwallApp(lambda resumed: f.report(), SettingsStore(tmp_path / "s.json"),
                    use_tray=False, make_demo=lambda: demo)
    qtbot.addWidget(app.window)
    try:
        app.start()
        page = app.window.empty
        assert app.window.stack.currentWidget() is page
        qtbot.mouseClick(page.demo_button, Qt.MouseButton.LeftButton)
        # The server is still "loading": the window answers and says so.
        assert page.demo_message.text() == "Starting the demo server…"
        assert not page.demo_button.isEnabled()
        signal = app.demo_launcher.failed if error else app.demo_launcher.started
        with qtbot.waitSignal(signal, timeout=5000):
            demo.release.set()
        if error:
            assert page.demo_message.text() == f"The demo could not start: {error}"
            assert page.demo_button.isEnabled()
        else:
            assert demo.started and "http://127.0.0.1:18080" in page.demo_message.text()
    finally:
        app.stop()
    assert demo.stopped  # quitting kvwall stops the demo it started


def test_copy_command_says_copied_then_reverts(qtbot, tmp_path):
    from kvwall.app.demo.tinymodels import write_model

    path = str(write_model("llama", tmp_path / "tiny.gguf", n_ctx_train=16384))
    srv, inputs = f.whatif_result(path)
    panel = WhatIfPanel()
    qtbot.addWidget(panel)
    panel.set_server(srv, inputs)
    with qtbot.waitSignal(panel.simulated, timeout=3000):
        qtbot.mouseClick(panel.buttons["q8_0"], Qt.MouseButton.LeftButton)
    qtbot.mouseClick(panel.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == panel.result().what_if.command
    assert panel.copy_button.text() == COPIED_TEXT
    qtbot.waitUntil(lambda: panel.copy_button.text() == COPY_TEXT, timeout=5000)
