"""Remote machines in the app: a real exporter's servers reach the report and notifications."""

from __future__ import annotations

import threading

from kvwall.app.desktop.live import LiveSource
from kvwall.app.headless.exporter import ExporterConfig, SharedPoll, build_registry, make_server
from kvwall.budget.alerts import NotificationRules, Thresholds
from kvwall.budget.engine import Engine
from kvwall.monitors.snapshot import DeviceMemory, MemorySnapshot, Snapshot
from kvwall.widgets.viewmodels.settings_model import defaults

TOKEN = "remote-token-5e1f0a"
REMOTE = {
    "schema_version": 1, "time": 1.0,
    "devices": [{"id": "nvidia:0", "kind": "nvidia", "name": "GB10", "unified": True,
                 "total_bytes": 128 << 30, "used_bytes": 100 << 30, "free_bytes": 28 << 30}],
    "servers": [{"key": "pid:7", "url": "http://127.0.0.1:8080", "name": "gpt-oss",
                 "health": "ok", "memory": {"devices": []}, "pool": None,
                 "slots": [{"id": 0, "n_ctx": 4096, "tokens": 3900, "is_processing": True,
                            "forecast": {"turns_left": 4, "seconds_left": 60.0,
                                         "confidence": 0.9, "turns_seen": 5}}]}],
    "pool_forecasts": [], "errors": [],
}


class FakeClock:
    def __call__(self) -> float:
        return 0.0


class Session:
    def poll(self):
        return REMOTE, "", set()

    def close(self):
        pass


class EmptyPoller:
    def poll(self):
        host = DeviceMemory("host", "host", "Host RAM", True, 100, 50, 50)
        return Snapshot(0.0, MemorySnapshot(0.0, (host,)), ())

    def close(self):
        pass


def test_remote_machines_setting_exists():
    assert defaults()["remotes"] == ()


def test_a_remote_exporter_feeds_the_report_and_notifications():
    shared = SharedPoll(Session())
    shared.poll_once()
    server = make_server(ExporterConfig(shared, build_registry(shared), TOKEN), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        source = LiveSource(poller=EmptyPoller(), engine=Engine())
        url = f"http://127.0.0.1:{server.server_address[1]}"
        source.set_remotes([(url, TOKEN), ("http://127.0.0.1:9", None)])
        report = source().report
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert [d.id for d in report.devices] == ["host", "127.0.0.1/nvidia:0"]
    names = [s.name for s in report.servers]
    assert names == ["127.0.0.1: gpt-oss", "127.0.0.1 (remote kvwall)"]
    assert report.servers[1].health == "unreachable"  # down, shown as down
    rules = NotificationRules(Thresholds(slot_warn_turns=5, slot_critical_turns=2),
                              clock=FakeClock())
    fired = rules.evaluate(report)
    kinds = {n.kind for n in fired}
    assert {"slot_forecast", "server_unreachable"} <= kinds
    assert {n.server_key for n in fired if n.kind == "slot_forecast"} == {"127.0.0.1/pid:7"}
    assert TOKEN not in repr(report)
