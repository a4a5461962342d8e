"""Alerts reach the desktop: the tray message and its click, the live source's grab share."""

from __future__ import annotations

import gui_factories as f
from kvwall.app.desktop.notifications import NotificationCenter
from kvwall.budget.alerts import NotificationRules, Thresholds


def test_center_emits_and_click_opens_the_server(qtbot):
    from PySide6.QtWidgets import QSystemTrayIcon

    clock = f.FakeClock()
    tray = QSystemTrayIcon()
    center = NotificationCenter(NotificationRules(Thresholds(), clock=clock), tray)
    with qtbot.waitSignal(center.notified, timeout=1000) as blocker:
        center.handle(f.one_slot_report(3))
    assert blocker.args[0].kind == "slot_forecast"
    with qtbot.waitSignal(center.open_server, timeout=1000) as clicked:
        tray.messageClicked.emit()  # what the desktop sends when the message is clicked
    assert clicked.args == ["pid:100"]


class _Poller:
    """Returns the given snapshots in turn (what monitors/poller.py would have seen)."""

    def __init__(self, snapshots):
        self.snapshots = list(snapshots)

    def poll(self):
        return self.snapshots.pop(0)

    def close(self):
        pass


def _gpu_snapshot(t, other_bytes):
    from kvwall.monitors.snapshot import MemorySnapshot, Snapshot

    dev = f.gpu_used_by({555: other_bytes})
    return Snapshot(t, MemorySnapshot(t, (dev,)), ())


def test_the_users_grab_share_reaches_the_engine_through_the_live_source():
    from kvwall.app.desktop.live import LiveSource
    from kvwall.budget.engine import Engine

    # A 2 GiB grab on a 24 GiB GPU (8%): under the engine's default 10% and 4 GiB.
    def run(grab_percent):
        source = LiveSource(poller=_Poller([_gpu_snapshot(0, f.GiB),
                                            _gpu_snapshot(5, 3 * f.GiB)]), engine=Engine())
        source.set_grab_share(grab_percent / 100)
        rules = NotificationRules(Thresholds(grab_percent=grab_percent), clock=f.FakeClock())
        fired = []
        for _ in range(2):
            result = source()
            fired += rules.evaluate(result.report)
        return result.report.memory_events, [n.kind for n in fired]

    events, kinds = run(5.0)
    assert [e.pid for e in events] == [555] and kinds == ["process_grab"]
    events, kinds = run(20.0)
    assert events == () and kinds == []
