"""The empty state's "Start demo" starts the real demo server from the running app (off
the GUI thread); the app finds it like any other server, and quitting stops it."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

import pytest
from kvwall.app.demo.llamabin import find_llama_server
from kvwall.app.demo.session import healthy
from kvwall.budget.alerts import server_label

pytestmark = pytest.mark.skipif(find_llama_server() is None, reason="no llama-server")


@pytest.mark.qt_log_ignore("does not support raise", "does not support propagateSizeHints")
def test_start_demo_from_the_window(qtbot, tmp_path):
    from kvwall.app.desktop.gui import KvwallApp
    from kvwall.app.desktop.live import LiveSource
    from kvwall.app.desktop.settings import SettingsStore
    from PySide6.QtCore import Qt

    source = LiveSource()
    app = KvwallApp(source, SettingsStore(tmp_path / "s.json"), use_tray=False,
                    on_servers_changed=source.set_servers)
    qtbot.addWidget(app.window)
    try:
        app.start()
        page = app.window.empty
        with qtbot.waitSignal(app.demo_launcher.started, timeout=90_000) as started:
            qtbot.mouseClick(page.demo_button, Qt.MouseButton.LeftButton)
            assert page.demo_message.text() == "Starting the demo server…"
        url = started.args[0]
        assert healthy(url, timeout=15)  # the agent keeps it busy: a patient probe

        def listed():
            report = app.window.report()
            return report is not None and any(
                server_label(s) == "kvwall-demo" for s in report.servers)

        qtbot.waitUntil(listed, timeout=30_000)
        labels = [r.cells[0] for r in app.window.table_model.rows() if r.is_server]
        assert "kvwall-demo" in labels
    finally:
        app.stop()
        source.close()
    assert not healthy(url)  # quitting kvwall stopped the demo it started
