"""``kvwall status`` with an injected poller: output shapes, the watch loop, secrets."""

from __future__ import annotations

import io
import json

import pytest
from kvwall.app.demo.tinymodels import write_model
from kvwall.app.headless.status import main
from kvwall.monitors.snapshot import (
    HEALTH_OK,
    DeviceMemory,
    MemorySnapshot,
    ServerProcess,
    ServerState,
    SlotState,
    Snapshot,
)

GIB = 1024**3
SECRET = "hunter2-secret-key"


class FakePoller:
    """Returns the given snapshots in turn (the last one repeats); records close()."""

    def __init__(self, *snapshots, clock=None):
        self.snapshots = list(snapshots)
        self.polls = 0
        self.closed = False
        self.clock = clock

    def poll(self):
        if self.clock is not None:
            self.clock.t += 0.25  # a poll takes a while
        snap = self.snapshots[min(self.polls, len(self.snapshots) - 1)]
        self.polls += 1
        return snap

    def close(self):
        self.closed = True


class FakeClock:
    """Monotonic time that moves only when slept on (and by 0.25 s per FakePoller poll)."""

    def __init__(self):
        self.t = 100.0
        self.delays = []

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.delays.append(seconds)
        self.t += seconds


def host():
    return DeviceMemory("host", "host", "Host RAM", True, 16 * GIB, 6 * GIB, 10 * GIB)


def empty(ts=0.0):
    return Snapshot(ts, MemorySnapshot(ts, (host(),)), ())


@pytest.fixture
def server_snapshot(tmp_path):
    model = str(write_model("qwen3", tmp_path / "m.gguf"))
    proc = ServerProcess(url="http://127.0.0.1:8081", pid=4321,
                         argv=("llama-server", "-m", model, "-c", "1024", "-np", "1",
                               "--api-key", SECRET),
                         api_key=SECRET, rss_bytes=90 * 1024**2)

    def make(ts, tokens, task):
        state = ServerState(proc, ts, HEALTH_OK, props={"total_slots": 1},
                            slots=(SlotState(0, 1024, tokens, False, task),),
                            errors=(f"a monitor that leaked {SECRET} by mistake",))
        return Snapshot(ts, MemorySnapshot(ts, (host(),)), (state,))

    return make


def test_json_without_servers_is_the_documented_object():
    out = io.StringIO()
    poller = FakePoller(empty())
    assert main(["--json"], poller=poller, out=out) == 0
    obj = json.loads(out.getvalue())
    assert obj["schema_version"] == 1
    assert obj["servers"] == []
    (dev,) = obj["devices"]
    assert dev["total_bytes"] == 16 * GIB and dev["free_bytes"] == 10 * GIB
    assert poller.closed


def test_text_without_servers_says_so():
    out = io.StringIO()
    assert main([], poller=FakePoller(empty()), out=out) == 0
    assert "No llama.cpp server found" in out.getvalue()
    assert "Host RAM" in out.getvalue()


def test_watch_keeps_one_engine_so_the_forecast_builds_up(server_snapshot):
    snaps = [server_snapshot(float(i), 100 + 200 * i, 10 + 5 * i) for i in range(5)]
    clock = FakeClock()
    out = io.StringIO()
    poller = FakePoller(*snaps, clock=clock)
    code = main(["--json", "--watch", "2", "--count", "5"], poller=poller, out=out,
                sleep=clock.sleep, monotonic=clock.now)
    assert code == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    last = json.loads(lines[-1])
    (server,) = last["servers"]
    forecast = server["slots"][0]["forecast"]
    assert forecast["tokens_per_turn"] == 200
    assert forecast["turns_left"] == -(-(1024 - 900) // 200)
    assert clock.delays == [1.75] * 4  # every 2 s, not every 2 s plus the poll


def test_keys_never_printed(server_snapshot):
    for args in (["--json"], []):
        out = io.StringIO()
        # A full slot: a problem in view, so the advice (with its commands) is printed.
        assert main(args, poller=FakePoller(server_snapshot(0.0, 1000, 1)), out=out) == 0
        text = out.getvalue()
        assert SECRET not in text
        assert "<redacted>" in text
        assert '"$LLAMA_API_KEY"' in text or "$LLAMA_API_KEY" in text


def test_interrupt_during_watch_exits_cleanly():
    poller = FakePoller(empty())

    def interrupt(_delay):
        raise KeyboardInterrupt

    out = io.StringIO()
    assert main(["--watch", "1"], poller=poller, out=out, sleep=interrupt) == 0
    assert poller.closed and poller.polls == 1


@pytest.mark.parametrize("args", [["--watch", "0"], ["--watch", "nan"], ["--deadline", "-1"],
                                  ["--api-key", "http://h:1"], ["--url", "localhost:8080"]])
def test_bad_values_exit_2_with_one_line(args, capsys):
    assert main(args, poller=FakePoller(empty()), out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvwall status: ") and err.count("\n") == 1


def test_text_forecast_says_when_the_next_request_fills_the_slot(server_snapshot):
    # 200 cells per request; the last poll holds 900 of 1024 (the next request fills it)
    # and, one poll earlier, 700 (two requests: the second hits the wall).
    snaps = [server_snapshot(float(i), 100 + 200 * i, 10 + 5 * i) for i in range(5)]
    clock = FakeClock()
    out = io.StringIO()
    code = main(["--watch", "2", "--count", "5"], poller=FakePoller(*snaps, clock=clock),
                out=out, sleep=clock.sleep, monotonic=clock.now)
    assert code == 0
    screens = out.getvalue().split("kvwall status  ")
    assert "full in ~2 requests" in screens[-2]
    assert "the next request fills it" in screens[-1]


def shrinking_host(i, rate_per_min=512 * 1024**2, step=10.0):
    """Poll ``i``: host RAM losing ``rate_per_min`` bytes a minute, one poll per ``step`` s."""
    free = 10 * GIB - int(rate_per_min * i * step / 60)
    dev = DeviceMemory("host", "host", "Host RAM", True, 16 * GIB, 16 * GIB - free, free)
    return Snapshot(i * step, MemorySnapshot(i * step, (dev,)), ())


def test_watch_forecasts_when_host_ram_runs_out_in_json_and_text():
    snaps = [shrinking_host(i) for i in range(31)]  # five minutes, 512 MiB a minute
    clock = FakeClock()
    out = io.StringIO()
    assert main(["--json", "--watch", "10", "--count", "31"], poller=FakePoller(*snaps),
                out=out, sleep=clock.sleep, monotonic=clock.now) == 0
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    # A single poll has no trend: the forecast is there, empty.
    assert objs[0]["pool_forecasts"] == [{
        "device_id": "host", "free_bytes": 10 * GIB, "bytes_per_minute": None,
        "seconds_left": None, "confidence": 0.0, "span_s": 0.0, "floor_bytes": 0}]
    (last,) = objs[-1]["pool_forecasts"]
    free = objs[-1]["devices"][0]["free_bytes"]
    assert last["free_bytes"] == free
    assert last["bytes_per_minute"] == pytest.approx(512 * 1024**2, rel=0.02)
    assert last["seconds_left"] == pytest.approx(free / (512 * 1024**2) * 60, rel=0.05)
    assert last["confidence"] > 0.8

    text = io.StringIO()
    assert main(["--watch", "10", "--count", "31"], poller=FakePoller(*snaps), out=text,
                sleep=clock.sleep, monotonic=clock.now) == 0
    screens = text.getvalue().split("kvwall status  ")
    assert "trend:" not in screens[1]
    minutes = round(free / (512 * 1024**2))
    assert "trend: +512 MiB/min used over the last" in screens[-1]
    assert f"full in ~{minutes} min" in screens[-1]


def test_a_grab_by_another_process_shows_under_its_gpu(server_snapshot):
    from dataclasses import replace

    from kvwall.monitors.snapshot import ProcessMemory

    base = server_snapshot(0.0, 50, 1)

    def with_gpu(ts, other):
        gpu = DeviceMemory("nvidia:0", "nvidia", "GPU 0", False, 24 * GIB, other,
                           24 * GIB - other, (ProcessMemory(999, other, "python"),))
        return Snapshot(ts, MemorySnapshot(ts, (host(), gpu)),
                        tuple(replace(s, timestamp=ts) for s in base.servers))

    out = io.StringIO()
    clock = FakeClock()
    assert main(["--watch", "5", "--count", "2"], poller=FakePoller(
        with_gpu(0.0, 1 * GIB), with_gpu(5.0, 9 * GIB)), out=out, sleep=clock.sleep,
        monotonic=clock.now) == 0
    screens = out.getvalue().split("kvwall status  ")
    assert "took" not in screens[1]
    assert "! python (pid 999) took 8.0 GiB (33% of the pool) within 5 s" in screens[-1]
