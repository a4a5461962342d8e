"""The app restarted keeps its history: the window's plots and the forecasts are seeded
from the per-user history store, and a server that stopped stays listed."""

from __future__ import annotations

import gui_factories as f
from kvwall.app.desktop.live import LiveSource
from kvwall.app.desktop.window import MainWindow
from kvwall.budget.engine import Engine
from kvwall.budget.history import HistoryStore
from kvwall.monitors.snapshot import (
    MemorySnapshot,
    ServerProcess,
    ServerState,
    SlotState,
    Snapshot,
)

WALL = 1_760_000_000.0
URL = "http://127.0.0.1:8080"
PROC = ServerProcess(URL, pid=4321, argv=("llama-server", "-m", "/nowhere/q.gguf", "-c", "4096"))


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class _Poller:
    """Scripted snapshots: an agent on one slot (``None``: the server is gone)."""

    def __init__(self, clock: _Clock, polls: list[tuple[int, int, bool] | None]) -> None:
        self.clock, self.polls = clock, list(polls)

    def poll(self) -> Snapshot:
        self.clock.t += 2.0
        t = self.clock.t - WALL  # the monotonic clock: epoch minus WALL
        step = self.polls.pop(0) if self.polls else None
        dev = f.device(total=24 * f.GiB, used=8 * f.GiB)
        servers: tuple[ServerState, ...] = ()
        if step is not None:
            tokens, task, busy = step
            servers = (ServerState(PROC, t, "ok",
                                   slots=(SlotState(0, 4096, tokens, busy, task),)),)
        return Snapshot(t, MemorySnapshot(t, (dev,)), servers)

    def close(self) -> None:
        pass


def _agent(turns: int) -> list[tuple[int, int, bool]]:
    polls, tokens, task = [(500, 1, False)], 500, 1
    for _ in range(turns):
        task += 3
        polls.append((tokens + 5, task, True))
        tokens += 300
        polls.append((tokens, task, False))
    return polls


def _source(tmp_path, clock: _Clock, polls) -> LiveSource:
    return LiveSource(poller=_Poller(clock, polls), engine=Engine(clock=clock),
                      history=HistoryStore(tmp_path / "history.sqlite3", clock=clock),
                      clock=clock, monotonic=lambda: clock.t - WALL)


def test_the_app_restarted_keeps_its_plots_and_forecasts(qtbot, tmp_path, monkeypatch):
    from kvwall.app.desktop import live

    monkeypatch.setattr(live, "PAST_STEP_S", 0.0)  # every stored poll (they are 2 s apart)
    clock = _Clock(WALL)
    first = _source(tmp_path, clock, _agent(4))
    window = MainWindow()
    qtbot.addWidget(window)
    for _ in range(9):
        result = first()
        window.set_result(result)
    before = result.report.servers[0].slots[0].forecast
    assert before.turns_left is not None
    first.close()
    window.close()

    # The app starts again 10 s later; the agent goes on with one more request.
    clock.t += 10
    again = _source(tmp_path, clock, [(1700, 16, False), (2000, 19, False)])
    window2 = MainWindow()
    qtbot.addWidget(window2)
    result = again()
    assert len(result.past) == 9
    window2.set_result(result)
    ids, series = window2.history.slot_series("pid:4321")
    assert ids == (0, -1)  # the slot and the shared pool (-np auto: unified)
    assert len(series) == 10  # nine stored polls and this one
    assert list(series[-2:, 1]) == [1700.0, 1700.0]
    # The forecast goes on from the stored turns, not from scratch.
    forecast = result.report.servers[0].slots[0].forecast
    assert forecast.turns_seen == before.turns_seen
    assert forecast.turns_left == before.turns_left
    result = again()
    assert result.past == ()
    assert result.report.servers[0].slots[0].forecast.turns_seen == before.turns_seen + 1
    again.close()


def test_a_stopped_server_stays_listed_with_its_last_fill(tmp_path):
    clock = _Clock(WALL)
    source = _source(tmp_path, clock, [*_agent(2), None])
    for _ in range(5):
        source()
    result = source()
    assert result.report.servers == ()
    (gone,) = result.report.stopped_servers
    assert gone.key == "pid:4321" and gone.url == URL
    assert gone.command == "llama-server -m /nowhere/q.gguf -c 4096"
    assert gone.last_fill == 1100 / 4096
    assert gone.stopped_time == WALL + 10
    source.close()
