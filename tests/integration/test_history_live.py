"""Against real llama-servers driven by a scripted agent: a refused request is counted,
and a one-shot ``kvwall status`` after a ``--watch`` forecasts within one turn (the
history store carries the watch's observations over)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from agent import ScriptedAgent
from kvwall.budget.engine import Engine
from kvwall.monitors.devices import MemorySources
from kvwall.monitors.poller import Poller
from test_status import CLI_TIMEOUT_S, only, run_cli


def test_a_refused_request_is_counted(llama_server, tiny_model):
    srv = llama_server(tiny_model("llama"), "-c", "512", "-np", "1")
    engine = Engine()
    with Poller(MemorySources(), discover_fn=only([srv.pid])) as poller:

        def observe():
            (server,) = engine.analyse(poller.poll()).servers
            return server

        assert observe().refused_requests.count == 0
        assert ScriptedAgent(srv.url).turn().ok
        server = observe()
        assert server.refused_requests.count == 0
        assert server.refused_requests.last_time is None
        long_prompt = ScriptedAgent(srv.url, message_words=600)
        for expected in (1, 2):
            turn = long_prompt.turn()
            assert turn.hit_wall and turn.status == 400, turn
            server = observe()
            assert server.refused_requests.count == expected
        assert server.refused_requests.last_time is not None
        # A request that works again is a turn, not a refusal.
        assert ScriptedAgent(srv.url, seed=3).turn().ok
        assert observe().refused_requests.count == 2


def _watch(url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kvwall.app", "status", "--json", "--watch", "0.25", "--url", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _watched_after(watch: subprocess.Popen, since: float, pid: int) -> dict:
    """The server ``pid`` in the watch's second object stamped after ``since`` (epoch
    seconds; the pipe holds older objects printed while the agent ran, and the first
    one stamped after ``since`` may hold slots read just before it)."""
    after = 0
    while True:
        line = watch.stdout.readline()
        assert line, watch.stderr.read()
        obj = json.loads(line)
        after += obj["time"] > since
        if after == 2:
            return next(s for s in obj["servers"] if s["pid"] == pid)


def test_one_shot_status_after_a_watch_forecasts_within_one_turn(llama_server, tiny_model):
    srv = llama_server(tiny_model("qwen3"), "-c", "1024", "-np", "1")
    agent = ScriptedAgent(srv.url, id_slot=0)
    watch = _watch(srv.url)
    try:
        _watched_after(watch, time.time(), srv.pid)
        for _ in range(4):
            assert agent.turn().ok
            _watched_after(watch, time.time(), srv.pid)  # the watch saw the request end
    finally:
        watch.send_signal(signal.SIGINT)
        watch.communicate(timeout=CLI_TIMEOUT_S)
    assert watch.returncode == 0

    done = run_cli("status", "--json", "--url", srv.url)
    assert done.returncode == 0, done.stderr
    (server,) = [s for s in json.loads(done.stdout)["servers"] if s["pid"] == srv.pid]
    forecast = server["slots"][0]["forecast"]
    assert forecast["turns_seen"] >= 3, forecast
    one_shot = forecast["turns_left"]
    assert one_shot is not None, forecast
    # Without the history, a one-shot status knows nothing of the growth.
    bare = run_cli("status", "--json", "--no-history", "--url", srv.url)
    (cold,) = [s for s in json.loads(bare.stdout)["servers"] if s["pid"] == srv.pid]
    assert cold["slots"][0]["forecast"]["turns_left"] is None

    done_turns = len(agent.turns)
    wall = agent.run_until_wall(max_turns=40)
    assert wall and wall[-1].hit_wall, "the agent never filled the slot"
    truth = len(agent.turns) - done_turns  # requests from here until (and including) the wall
    assert abs(one_shot - truth) <= 1, (one_shot, truth)
