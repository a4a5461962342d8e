"""The per-user history store: two writers lose nothing, damage is moved aside, stopped
servers stay listed, stored polls seed the forecasts, the file stays bounded (no Qt)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from kvwall.budget import history
from kvwall.budget.config import ServerConfig
from kvwall.budget.forecast import ContextTracker, PoolTracker
from kvwall.budget.history import (
    HistoryStore,
    HistoryUnavailable,
    open_store,
    seed_trackers,
    stored_reports,
)
from kvwall.budget.report import Forecast, ServerReport, SlotReport, StatusReport
from kvwall.monitors.snapshot import DeviceMemory

WALL = 1_760_000_000.0
ARGV = ("/usr/bin/llama-server", "-m", "/models/q.gguf", "-c", "8192")


def server(key="pid:100", tokens=1000, id_task=1, processing=False, argv=ARGV,
           url="http://127.0.0.1:8080") -> ServerReport:
    slot = SlotReport(0, 8192, tokens, processing, Forecast(), id_task=id_task)
    return ServerReport(key=key, pid=100, url=url, name="qwen3", model_path=None,
                        health="ok", plan=None, memory=(), slots=(slot,), pool=None,
                        max_ctx={}, more_servers_fit=None, advice=(), errors=(),
                        config=ServerConfig(argv=argv))


def report(t: float, *servers: ServerReport, free: int = 10 << 30) -> StatusReport:
    dev = DeviceMemory("nvidia:0", "nvidia", "GPU", False, 24 << 30, (24 << 30) - free, free)
    return StatusReport(t, WALL + t, (dev,), tuple(servers))


def test_reports_round_trip_and_the_schema_is_versioned(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3", clock=lambda: WALL)
    store.record(report(0.0, server()))
    store.record(report(2.0, server(tokens=1200, id_task=4)))
    samples = store.slot_samples(WALL - 10)
    assert [(s.time - WALL, s.tokens, s.id_task) for s in samples] == [(0.0, 1000, 1),
                                                                      (2.0, 1200, 4)]
    assert [p.free_bytes for p in store.pool_samples(WALL - 10)] == [10 << 30, 10 << 30]
    store.close()
    conn = sqlite3.connect(tmp_path / "h.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_writer_processes_at_once_lose_nothing(tmp_path):
    path = tmp_path / "h.sqlite3"
    HistoryStore(path).close()  # the schema exists before the race starts
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_history import report, server
        from kvwall.budget.history import HistoryStore
        store = HistoryStore({str(path)!r})
        name = sys.argv[1]
        for i in range(150):
            store.record(report(float(i), server(key=name, id_task=i)))
        store.close()
    """)
    writers = [subprocess.Popen([sys.executable, "-c", code, f"pid:{n}"]) for n in (1, 2)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    store = HistoryStore(path)
    samples = store.slot_samples(0.0)
    assert sum(s.key == "pid:1" for s in samples) == 150
    assert sum(s.key == "pid:2" for s in samples) == 150
    assert store.rows()["pool_samples"] == 300


def test_a_damaged_database_is_moved_aside_with_a_message(tmp_path):
    path = tmp_path / "h.sqlite3"
    path.write_bytes(b"this is not a database, " * 100)
    store, message = open_store(path)
    assert store is not None and message is not None
    assert "damaged" in message and "moved aside" in message
    moved = list(tmp_path.glob("h.sqlite3.damaged-*"))
    assert len(moved) == 1 and moved[0].read_bytes().startswith(b"this is not")
    store.record(report(0.0, server()))
    assert store.rows()["slot_samples"] == 1


def test_a_newer_schema_is_left_alone(tmp_path):
    path = tmp_path / "h.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={history.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(HistoryUnavailable, match="newer kvwall"):
        HistoryStore(path)
    assert open_store(path)[0] is None
    assert not list(tmp_path.glob("*.damaged-*"))


def test_stopped_servers_stay_listed_with_their_last_fill_and_command(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    a, b = server("pid:1", tokens=5816), server("pid:2", url="http://127.0.0.1:8081",
                                                 argv=(*ARGV, "--port", "8081"))
    store.record(report(0.0, a, b))
    store.record(report(2.0, b))
    (gone,) = store.stopped([b], WALL + 60)
    assert (gone.key, gone.stopped_time, gone.command) == ("pid:1", WALL, " ".join(ARGV))
    assert gone.last_fill == pytest.approx(5816 / 8192)
    # The same command at the same URL again (a new pid): running, not stopped.
    assert store.stopped([b, server("pid:3")], WALL + 60) == ()
    # Forgotten after a day.
    assert store.stopped([b], WALL + 2 * 86400) == ()


def test_stored_polls_seed_a_fresh_tracker_like_a_long_running_one(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    live = ContextTracker()
    t, tokens, task = 0.0, 1000, 1
    for _ in range(5):  # an agent: a busy poll, then an idle one with 400 more cells
        for busy in (True, False):
            t += 2.0
            if not busy:
                tokens += 400
            else:
                task += 3
            srv = server(tokens=tokens, id_task=task, processing=busy)
            store.record(report(t, srv))
            live.observe("pid:100", [_state(srv)], 500.0 + t)
    fresh, pools = ContextTracker(), PoolTracker()
    polls = seed_trackers(store, fresh, pools, now_wall=WALL + t + 1, now_monotonic=500.0 + t + 1)
    assert polls == 10
    state = _state(srv)
    assert fresh.slot_forecast("pid:100", state) == live.slot_forecast("pid:100", state)
    assert fresh.slot_forecast("pid:100", state).turns_left == 13  # (8192 - 3000) / 400
    assert pools.forecast("nvidia:0") is not None


def _state(srv: ServerReport):
    from kvwall.monitors.snapshot import SlotState

    s = srv.slots[0]
    return SlotState(s.id, s.n_ctx, s.tokens, s.is_processing, s.id_task)


def test_old_samples_are_downsampled_and_expire(tmp_path, monkeypatch):
    store = HistoryStore(tmp_path / "h.sqlite3")
    for i in range(600):  # 20 minutes at one poll every 2 s
        store.record(report(i * 2.0, server(id_task=i)))
    assert store.rows()["slot_samples"] == 600
    store.compact(WALL + 1200 + history.RAW_S)  # all of it older than RAW_S now
    assert store.rows()["slot_samples"] in (20, 21)  # one per minute bucket
    store.compact(WALL + history.KEEP_S + 2000)
    assert store.rows() == {"servers": 0, "slot_samples": 0, "pool_samples": 0}
    monkeypatch.setattr(history, "MAX_ROWS", 50)
    for i in range(100):
        store.record(report(5000.0 + i, replace(server(), key=f"pid:{i % 3}")))
    store.compact(WALL + 5100)
    assert store.rows()["slot_samples"] == 50


def test_stored_polls_replay_as_reports_thinned_for_a_view(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    for i in range(30):  # a minute at one poll every 2 s
        store.record(report(i * 2.0, server(tokens=1000 + i)))
    every = stored_reports(store, WALL - 1, now_wall=WALL + 60, now_monotonic=560.0)
    assert len(every) == 30
    assert every[0].timestamp == 500.0 and every[0].wall_time == WALL
    assert [s.name for s in every[-1].servers] == ["qwen3"]
    assert every[-1].servers[0].slots[0].tokens == 1029
    assert every[-1].devices[0].free_bytes == 10 << 30
    thin = stored_reports(store, WALL - 1, now_wall=WALL + 60, now_monotonic=560.0, step_s=10)
    assert [r.wall_time - WALL for r in thin] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
