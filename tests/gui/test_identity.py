"""Servers are told apart everywhere (alias, else name:port), the selection follows the
server the user chose, refused requests and stopped servers show in the table, and
"Copy" says that it copied."""

from __future__ import annotations

import dataclasses

import gui_factories as f
from kvwall.app.desktop.poll_worker import PollResult
from kvwall.app.desktop.tray import Tray
from kvwall.app.desktop.window import MainWindow
from kvwall.budget.alerts import server_label
from kvwall.budget.report import RefusedRequests, StoppedServer
from kvwall.widgets.empty_state import SAMPLE_COMMAND, EmptyState
from kvwall.widgets.servers_table import LEVEL_COLORS, table_rows
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication


def _three_same_named():
    # Labelled as the engine labels them: the alias, else name:port.
    return [f.server(key=f"pid:{100 + i}", name="llama_gqa_f16",
                     url=f"http://127.0.0.1:{8080 + i}", slots=[f.slot(0, 4096, 100 * (i + 1))],
                     label=f"llama_gqa_f16:{8080 + i}")
            for i in range(3)]


def test_views_use_the_reports_label_else_the_name():
    assert server_label(f.server(label="coder")) == "coder"
    assert server_label(f.server()) == "qwen3-32b"  # a report built without a label


def test_tray_menu_tells_same_named_servers_apart(qtbot):
    tray = Tray(dark=False)
    tray.set_report(f.report(_three_same_named()))
    tray.rebuild_menu()
    lines = [a.text() for a in tray.menu.actions()[:3]]
    assert [line.split("  ·  ")[0] for line in lines] == [
        "llama_gqa_f16:8080", "llama_gqa_f16:8081", "llama_gqa_f16:8082"]
    opened = []
    tray.open_server.connect(opened.append)
    tray.menu.actions()[1].trigger()
    assert opened == ["pid:101"]


def test_table_and_selection_follow_the_chosen_server(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    servers = _three_same_named()
    w.set_result(PollResult(f.report(servers)))
    names = [r.cells[0] for r in w.table_model.rows() if r.is_server]
    assert names == ["llama_gqa_f16:8080", "llama_gqa_f16:8081", "llama_gqa_f16:8082"]
    assert w.select_server("pid:102")  # a notification about the third one, clicked
    w.set_result(PollResult(f.report(servers)))
    assert w.selected_server() == "pid:102"
    # It restarts (a new pid, the same port): still the one selected, not the first.
    restarted = dataclasses.replace(servers[2], key="pid:300", pid=300)
    w.set_result(PollResult(f.report([servers[0], servers[1], restarted])))
    assert w.selected_server() == "pid:300"
    assert "llama_gqa_f16:8082" in w.whatif_box.title() or w.whatif_box.title() == "What if"


def test_at_start_the_most_urgent_server_is_selected(qtbot):
    calm = f.server(key="pid:100", slots=[f.slot(0, 16384, 1000, per_turn=100.0,
                                                 turns_left=150)])
    urgent = f.server(key="pid:200", url="http://127.0.0.1:8081",
                      slots=[f.slot(0, 16384, 15000, per_turn=700.0, turns_left=2,
                                    seconds_left=60.0)])
    w = MainWindow()
    qtbot.addWidget(w)
    w.set_result(PollResult(f.report([calm, urgent])))
    assert w.selected_server() == "pid:200"
    demo = f.server(key="pid:300", name="kvwall-demo", url="http://127.0.0.1:8090",
                    slots=[f.slot(0, 4096, 10)])
    w2 = MainWindow()
    qtbot.addWidget(w2)
    w2.set_result(PollResult(f.report([f.server(slots=[f.slot(0, 16384, 10)]), demo])))
    assert w2.selected_server() == "pid:300"


def test_refused_requests_mark_the_server_and_its_full_slot():
    srv = f.server(slots=[f.slot(0, 4096, 4090), f.slot(1, 4096, 100)])
    srv = dataclasses.replace(srv, refused_requests=RefusedRequests(3, 1_760_000_000.0))
    rows = table_rows(f.report([srv]))
    assert rows[0].cells[-1] == "ok · 3 refused" and rows[0].level == "critical"
    assert "3 requests refused (context exceeded), last at" in rows[0].tooltip
    assert rows[1].cells[-1] == "idle · refused" and rows[1].level == "critical"
    assert rows[2].cells[-1] == "idle" and rows[2].level == "ok"


def test_stopped_servers_are_listed_greyed(qtbot):
    import time

    gone = StoppedServer("pid:7", "llama_gqa_f16:8085", "http://127.0.0.1:8085",
                         "llama-server -m m.gguf --port 8085", 1_760_000_000.0, 0.71)
    report = dataclasses.replace(f.report([f.server()]), stopped_servers=(gone,))
    w = MainWindow()
    qtbot.addWidget(w)
    w.set_result(PollResult(report))
    rows = w.table_model.rows()
    assert [r.server_key for r in rows] == ["pid:100", "pid:7"]
    at = time.strftime("%H:%M", time.localtime(gone.stopped_time))
    assert rows[1].cells[0] == "llama_gqa_f16:8085" and rows[1].cells[3] == "71%"
    assert rows[1].cells[-1] == f"stopped {at}" and rows[1].level == "stopped"
    assert "restart with: llama-server -m m.gguf --port 8085" in rows[1].tooltip
    grey = w.table_model.index(1, 0).data(Qt.ItemDataRole.ForegroundRole).color()
    assert grey == LEVEL_COLORS["stopped"]


def test_copy_sample_command_says_copied_then_reverts(qtbot):
    page = EmptyState()
    qtbot.addWidget(page)
    qtbot.mouseClick(page.copy_sample_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == SAMPLE_COMMAND
    assert page.copy_sample_button.text() == "Copied ✓"
    qtbot.waitUntil(lambda: page.copy_sample_button.text() == "Copy", timeout=5000)
