"""Alerts reach the desktop: the tray message and its click, the live source's grab share."""

from __future__ import annotations

import gui_factories as f
from kvwall.app.desktop.notifications import NotificationCenter
from kvwall.budget.alerts import NotificationRules, Thresholds
from kvwall.monitors.snapshot import DeviceMemory, ProcessMemory


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _slot_report(turns_left, tokens=10000, t=0.0, health="ok", advice=()):
    s = f.slot(0, n_ctx=16384, tokens=tokens, turns_left=turns_left, per_turn=800.0)
    srv = f.server(slots=[s], health=health, advice=advice)
    dev = f.device(total=24 * f.GiB, used=12 * f.GiB)
    return f.report([srv], [dev], t=t)


def _gpu(used_by: dict[int, int], total=24 * f.GiB):
    """A GPU whose per-process use is ``used_by`` (pid -> bytes); pid 100 is the server."""
    procs = tuple(ProcessMemory(pid, b, "llama-server" if pid == 100 else "python")
                  for pid, b in used_by.items())
    used = sum(used_by.values())
    return DeviceMemory("nvidia:0", "nvidia", "NVIDIA RTX 4090", False, total, used,
                        total - used, procs)


def test_center_emits_and_click_opens_the_server(qtbot):
    from PySide6.QtWidgets import QSystemTrayIcon

    clock = FakeClock()
    tray = QSystemTrayIcon()
    center = NotificationCenter(NotificationRules(Thresholds(), clock=clock), tray)
    with qtbot.waitSignal(center.notified, timeout=1000) as blocker:
        center.handle(_slot_report(3))
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

    dev = _gpu({555: other_bytes})
    return Snapshot(t, MemorySnapshot(t, (dev,)), ())


def test_the_users_grab_share_reaches_the_engine_through_the_live_source():
    from kvwall.app.desktop.live import LiveSource
    from kvwall.budget.engine import Engine

    # A 2 GiB grab on a 24 GiB GPU (8%): under the engine's default 10% and 4 GiB.
    def run(grab_percent):
        source = LiveSource(poller=_Poller([_gpu_snapshot(0, f.GiB),
                                            _gpu_snapshot(5, 3 * f.GiB)]), engine=Engine())
        source.set_grab_share(grab_percent / 100)
        rules = NotificationRules(Thresholds(grab_percent=grab_percent), clock=FakeClock())
        fired = []
        for _ in range(2):
            result = source()
            fired += rules.evaluate(result.report)
        return result.report.memory_events, [n.kind for n in fired]

    events, kinds = run(5.0)
    assert [e.pid for e in events] == [555] and kinds == ["process_grab"]
    events, kinds = run(20.0)
    assert events == () and kinds == []
