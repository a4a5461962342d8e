"""Polling runs on its own thread, one poll at a time; the window stays responsive while
a server hangs; failures are reported once per cause; sleep/resume is detected."""

from __future__ import annotations

import logging
import threading

import gui_factories as f
from kvwall.app.desktop.gui import KvwallApp
from kvwall.app.desktop.poll_worker import PollResult, PollThread, PollWorker
from kvwall.app.desktop.settings import SettingsStore
from kvwall.widgets.viewmodels.settings_model import defaults
from PySide6.QtCore import QTimer


def _store(tmp_path, **values):
    store = SettingsStore(tmp_path / "settings.json")
    store.save(defaults().replace(**values))
    return store


def test_window_stays_responsive_while_a_poll_hangs(qtbot, tmp_path):
    gate = threading.Event()
    hanging = threading.Event()
    calls = []
    gui_thread = threading.get_ident()

    def poll_fn(resumed):
        calls.append(threading.get_ident())
        if len(calls) == 2:  # the second poll hangs like a server that stopped answering
            hanging.set()
            gate.wait(60)
        return f.report([f.server(slots=[f.slot()])])

    app = KvwallApp(poll_fn, _store(tmp_path, poll_interval_s=0.5), use_tray=False)
    qtbot.addWidget(app.window)
    try:
        app.start(show_window=True)
        qtbot.waitUntil(lambda: app.results >= 1, timeout=5000)
        qtbot.waitUntil(hanging.is_set, timeout=5000)
        # The GUI thread is free: timers fire, clicks are handled, the table answers.
        ticks = []
        timer = QTimer()
        timer.timeout.connect(lambda: ticks.append(1))
        timer.start(100)
        qtbot.waitUntil(lambda: len(ticks) >= 15, timeout=10000)  # 1.5 s = 3 intervals
        timer.stop()
        app.window.history.set_window_seconds(3600)
        assert app.window.history.window_seconds() == 3600
        assert app.window.table_model.rowCount() == 2
        # One poll at a time: the hanging one was not joined by others.
        assert len(calls) == 2 and app.results == 1
        assert gui_thread not in calls
        gate.set()
        qtbot.waitUntil(lambda: app.results >= 2, timeout=5000)
    finally:
        gate.set()
        app.stop()
    assert not app.poll_thread.thread.isRunning()


def test_failures_are_reported_and_logged_once_per_cause(qtbot, caplog):
    caplog.set_level(logging.INFO, logger="kvwall")
    n = []

    def poll_fn(resumed):
        n.append(1)
        if len(n) <= 4:
            raise TimeoutError("server 127.0.0.1:9 did not answer")
        return f.report()

    worker = PollWorker(poll_fn, interval_s=0.05)
    failures, results = [], []
    worker.failed.connect(failures.append)
    worker.polled.connect(results.append)
    thread = PollThread(worker)
    thread.start()
    try:
        qtbot.waitUntil(lambda: bool(results), timeout=5000)
    finally:
        assert thread.stop()
    assert len(failures) == 4 and "did not answer" in failures[0]
    logged = [r for r in caplog.records if "poll failed" in r.getMessage()]
    assert len(logged) == 1
    assert any("polling works again" in r.getMessage() for r in caplog.records)
    assert isinstance(results[0], PollResult)


def test_sleep_and_resume_is_detected_from_the_clock_gap(qtbot):
    clocks = {"mono": 100.0, "wall": 1_760_000_000.0}
    seen = []

    def poll_fn(resumed):
        seen.append(resumed)
        clocks["mono"] += 1.0
        clocks["wall"] += 1.0
        if len(seen) == 2:
            clocks["wall"] += 3600.0  # suspended for an hour: wall moved, monotonic did not
        return f.report()

    worker = PollWorker(poll_fn, interval_s=0.05, clock=lambda: clocks["mono"],
                        wall_clock=lambda: clocks["wall"])
    resumed, results = [], []
    worker.resumed.connect(resumed.append)
    worker.polled.connect(results.append)
    thread = PollThread(worker)
    thread.start()
    try:
        qtbot.waitUntil(lambda: len(results) >= 4, timeout=5000)
    finally:
        assert thread.stop()
    assert seen[:4] == [False, False, True, False]
    assert len(resumed) == 1 and 3590 < resumed[0] < 3610
    assert results[2].resumed_after_s == resumed[0]
    assert results[1].resumed_after_s is None


def test_no_server_shows_the_empty_state_and_a_vanished_server_goes(qtbot, tmp_path):
    current = {"report": f.report([f.server(slots=[f.slot()])])}

    def poll_fn(resumed):
        return current["report"]

    app = KvwallApp(poll_fn, _store(tmp_path, poll_interval_s=0.5), use_tray=False)
    qtbot.addWidget(app.window)
    try:
        app.start(show_window=True)
        qtbot.waitUntil(lambda: app.results >= 1, timeout=5000)
        assert app.window.stack.currentWidget() is app.window.content
        assert app.window.selected_server() == "pid:100"
        current["report"] = f.report([])  # the server exited
        qtbot.waitUntil(lambda: app.window.stack.currentWidget() is app.window.empty,
                        timeout=5000)
        assert app.window.table_model.rowCount() == 0
        # The memory gauge still works without servers.
        assert list(app.window.gauges.gauges()) == ["nvidia:0"]
    finally:
        app.stop()


def test_quitting_while_a_poll_is_stuck_ends_the_thread_at_once(qtbot):
    stuck = threading.Event()
    gate = threading.Event()

    def poll_fn(resumed):
        stuck.set()
        gate.wait(60)  # a server (or a FIFO) that never answers
        return f.report()

    worker = PollWorker(poll_fn, interval_s=0.05)
    results = []
    worker.polled.connect(results.append)
    thread = PollThread(worker)
    thread.start()
    try:
        qtbot.waitUntil(stuck.is_set, timeout=5000)
        assert thread.stop(timeout_s=2.0)  # the stuck poll is abandoned, not waited for
        assert not thread.thread.isRunning()
    finally:
        gate.set()
    assert results == []


def test_the_app_quits_while_a_poll_is_stuck(qtbot, tmp_path):
    stuck = threading.Event()
    gate = threading.Event()

    def poll_fn(resumed):
        stuck.set()
        gate.wait(60)
        return f.report()

    app = KvwallApp(poll_fn, _store(tmp_path, poll_interval_s=0.5), use_tray=False)
    qtbot.addWidget(app.window)
    try:
        app.start(show_window=True)
        qtbot.waitUntil(stuck.is_set, timeout=5000)
        app.stop()
        assert not app.poll_thread.thread.isRunning()
        assert app.results == 0
    finally:
        gate.set()
