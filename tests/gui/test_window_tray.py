"""The window lists servers and slots, keeps bounded history, and the tray shows the
tightest pool and the nearest forecast; its menu is rebuilt from the latest report."""

from __future__ import annotations

import gui_factories as f
import numpy as np
from kvwall.app.desktop.poll_worker import PollResult
from kvwall.app.desktop.tray import LEVEL_COLORS, Tray, gauge_pixmap, tray_state
from kvwall.app.desktop.window import MainWindow
from kvwall.budget.alerts import CRITICAL, OK, WARNING, Thresholds
from kvwall.widgets.history import HistoryView, RingBuffer
from PySide6.QtCore import Qt


def _report(t=1000.0, wall=1_760_000_000.0, tokens=12000, seconds_left=840.0, turns_left=6):
    s0 = f.slot(0, 16384, 3000, per_turn=500.0, turns_left=27)
    s1 = f.slot(1, 16384, tokens, per_turn=700.0, turns_left=turns_left,
                seconds_left=seconds_left, processing=True)
    srv = f.server(slots=[s0, s1], advice=(f.advice(),))
    return f.report([srv], [f.device(total=24 * f.GiB, used=20 * f.GiB)], t=t, wall=wall)


def test_table_lists_server_and_slots(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.set_result(PollResult(_report()))
    m = w.table_model
    assert m.rowCount() == 3
    cells = [[m.index(r, c).data() for c in range(m.columnCount())] for r in range(3)]
    assert cells[0][0] == "qwen3-32b" and cells[0][2].startswith("16,384 × 2")
    assert cells[0][7] == "ok"
    assert cells[2][0].strip() == "slot 1"
    assert cells[2][3].startswith("73%") and "12,000" in cells[2][3]
    assert cells[2][4] == "700" and cells[2][5] == "~6 requests" and cells[2][6] == "14 min"
    assert cells[2][7] == "busy"
    assert w.selected_server() == "pid:100"
    assert w.stack.currentWidget() is w.content


def test_table_updates_only_changed_rows(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.set_result(PollResult(_report()))
    changed = []
    w.table_model.dataChanged.connect(lambda a, b: changed.append(a.row()))
    resets = []
    w.table_model.modelReset.connect(lambda: resets.append(1))
    w.set_result(PollResult(_report(tokens=12800, turns_left=5, seconds_left=700.0)))
    assert changed == [2] and resets == []


def test_history_ring_buffers_are_bounded_and_pause_while_hidden(qtbot):
    h = HistoryView(capacity=600)
    qtbot.addWidget(h)

    for i in range(2000):
        h.add_report(_report(t=1000.0 + i, wall=1_760_000_000.0 + i, tokens=4000 + i))
    grown = h.nbytes()
    for i in range(2000, 4000):
        h.add_report(_report(t=1000.0 + i, wall=1_760_000_000.0 + i, tokens=4000 + i))
    assert h.nbytes() == grown
    series = h.memory_series("nvidia:0")
    assert len(series) == 600
    assert series[-1, 0] == 1_760_000_000.0 + 3999 and np.all(np.diff(series[:, 0]) == 1)
    ids, slots = h.slot_series("pid:100")
    assert ids == (0, 1) and slots[-1, 2] == 4000 + 3999
    # Hidden: recorded but not redrawn; shown: one catch-up redraw.
    assert h.redraws == 0
    h.show()
    qtbot.waitExposed(h)
    assert h.redraws == 1
    # New data is painted by the repaint timer, not once per report.
    for i in range(5):
        h.add_report(_report(t=9000 + i, wall=1_760_009_000.0 + i))
    assert h.redraws == 1
    qtbot.waitUntil(lambda: h.redraws == 2, timeout=15000)
    h.hide()
    assert not h._repaint_timer.isActive()
    h.add_report(_report(t=9010, wall=1_760_009_010.0))
    assert h.redraws == 2 and not h._repaint_timer.isActive()


def test_ring_buffer_order_after_wrap():
    rb = RingBuffer(4, 1)
    for i in range(10):
        rb.append(float(i), [i * 10])
    assert rb.view()[:, 0].tolist() == [6.0, 7.0, 8.0, 9.0]
    assert rb.view()[:, 1].tolist() == [60.0, 70.0, 80.0, 90.0]


def test_forecast_line_reaches_the_limit(qtbot):
    h = HistoryView(capacity=100)
    qtbot.addWidget(h)
    h.show()
    qtbot.waitExposed(h)
    h.add_report(_report())
    h.tabs.setCurrentIndex(1)  # opening the context tab draws it
    x, y = h._forecast_curves[1].getData()
    assert list(y) == [12000, 16384]
    assert x[1] - x[0] == 840.0
    assert "slot 1 full in 14 min" in h._forecast_label.toPlainText()


def test_tray_state_colour_and_tooltip():
    th = Thresholds()
    st = tray_state(_report(turns_left=6), th)
    assert st.level == OK
    assert st.fill == 20 / 24
    assert "NVIDIA RTX 4090: 4.00 GiB free (17%)" in st.tooltip
    assert "slot 1 of qwen3-32b full in ~6 requests / 14 min" in st.tooltip
    # turns_left counts the request that hits the wall: 1 is the very next one.
    assert "slot 1 of qwen3-32b: the next request fills it" in tray_state(
        _report(turns_left=1), th).tooltip
    assert tray_state(_report(turns_left=4), th).level == WARNING
    locked = f.report([f.server(health="needs API key", slots=[f.slot(0, 16384, 100)])],
                      [f.device(total=24 * f.GiB, used=2 * f.GiB)])
    st_locked = tray_state(locked, th)
    assert st_locked.level == WARNING and "qwen3-32b: needs API key" in st_locked.tooltip
    assert tray_state(_report(tokens=16000, turns_left=1), th).level == CRITICAL
    full = f.report([f.server()], [f.device(total=24 * f.GiB, used=23 * f.GiB)])
    assert tray_state(full, th).level == CRITICAL


def test_tray_icon_paints_the_fill_in_the_level_colour(qapp):
    pm = gauge_pixmap(0.5, WARNING, 64).toImage()
    low = pm.pixelColor(32, 52)  # inside the lower half of the gauge
    high = pm.pixelColor(32, 16)
    assert low.name() == LEVEL_COLORS[WARNING].name()
    assert high.name() != LEVEL_COLORS[WARNING].name()


def test_tray_menu_is_rebuilt_from_the_latest_report(qtbot):
    tray = Tray(dark=False)
    tray.set_report(_report())
    tray.rebuild_menu()
    texts = [a.text() for a in tray.menu.actions() if not a.isSeparator()]
    assert texts[0].startswith("qwen3-32b") and "fullest slot 73%" in texts[0]
    assert texts[1:] == ["Open kvwall", "Pause notifications for an hour", "Settings…",
                         "Quit kvwall"]
    with qtbot.waitSignal(tray.open_server) as sig:
        tray.menu.actions()[0].trigger()
    assert sig.args == ["pid:100"]
    with qtbot.waitSignal(tray.pause_toggled) as sig:
        next(a for a in tray.menu.actions() if a.isCheckable()).trigger()
    assert sig.args == [True]
    import time

    until = time.time() + 3600  # the app answers the toggle with the end of the pause
    tray.set_paused(True, until)
    tray.rebuild_menu()
    pause = next(a for a in tray.menu.actions() if a.isCheckable())
    assert pause.isChecked()
    assert pause.text() == (f"Notifications paused until "
                            f"{time.strftime('%H:%M', time.localtime(until))} (click to resume)")
    tray.set_report(f.report([]))
    tray.rebuild_menu()
    assert tray.menu.actions()[0].text() == "No llama.cpp server running"


def test_select_server_from_a_notification(qtbot):
    a = f.server("pid:1", "a", slots=[f.slot()])
    b = f.server("pid:2", "b", slots=[f.slot()])
    w = MainWindow()
    qtbot.addWidget(w)
    w.set_result(PollResult(f.report([a, b])))
    assert w.selected_server() == "pid:1"
    assert w.select_server("pid:2")
    rows = w.table.selectionModel().selectedRows()
    assert w.table_model.rows()[rows[0].row()].server_key == "pid:2"
    assert not w.select_server("pid:999")


def test_table_colours_slots_with_the_users_thresholds(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.set_result(PollResult(_report(turns_left=6)))
    assert w.table_model.rows()[2].level == "ok"  # 6 requests left, default warning at 5
    w.slot_warn_turns = 8  # the user warns earlier (Settings)
    w.set_result(PollResult(_report(turns_left=6, t=1001.0, wall=1_760_000_001.0)))
    assert w.table_model.rows()[2].level == "warning"
    assert w.table_model.index(2, 5).data(Qt.ItemDataRole.ForegroundRole) is not None


def test_tray_icon_is_redrawn_only_when_the_gauge_changes(qtbot):
    tray = Tray(dark=False)
    used = 20 * f.GiB
    tray.set_report(f.report([], [f.device(total=24 * f.GiB, used=used)]))
    before = tray.icon_updates
    for i in range(1, 30):  # a few MiB up and down every poll: same picture
        tray.set_report(f.report([], [f.device(total=24 * f.GiB, used=used + i * f.MiB)]))
    assert tray.icon_updates == before
    tray.set_report(f.report([], [f.device(total=24 * f.GiB, used=23 * f.GiB)]))
    assert tray.icon_updates == before + 1  # fuller, and now critical
    assert tray.state().fill == 23 / 24
