"""Problem-first advice against real llama-servers driven by a scripted agent (issue 9)."""

from __future__ import annotations

import shlex

from agent import ScriptedAgent
from kvwall.budget.engine import Engine
from kvwall.monitors.devices import MemorySources
from kvwall.monitors.poller import Poller
from test_status import only

# Flags the test harness sets itself on every server it starts (a new port each time).
_HARNESS_FLAGS = ("--host", "--port", "-m")


def _own_args(command: str) -> list[str]:
    """An advised command's flags without the binary and the harness's model/host/port."""
    words = shlex.split(command)[1:]
    out: list[str] = []
    i = 0
    while i < len(words):
        if words[i] in _HARNESS_FLAGS:
            i += 2
            continue
        out.append(words[i])
        i += 1
    return out


def test_first_advice_for_a_filling_slot_gives_each_slot_more_context(llama_server, tiny_model):
    model = tiny_model("qwen3")
    srv = llama_server(model, "-c", "1024", "-np", "2")
    agent = ScriptedAgent(srv.url, id_slot=0)
    engine = Engine()
    first = None
    with Poller(MemorySources(), discover_fn=only([srv.pid])) as poller:
        (server,) = engine.analyse(poller.poll()).servers
        assert server.advice == ()  # idle, memory to spare: nothing in view
        for _ in range(60):
            turn = agent.turn()
            (server,) = engine.analyse(poller.poll()).servers
            if server.advice or turn.hit_wall:
                break
            assert turn.ok, turn
        assert server.advice, "a filling slot got no advice"
        first = server.advice[0]
    assert first.solves == "context"
    assert first.command.split()[0] == srv.argv[0]  # the whole command line, pasteable
    assert first.n_ctx_slot is not None and first.n_ctx_slot > 512
    assert first.turns_left is not None
    srv.stop()
    again = llama_server(model, *_own_args(first.command))  # started for real: it fits
    slots = again.get_json("/slots")
    assert len(slots) >= 1
    assert all(s["n_ctx"] > 512 for s in slots), slots
    assert all(s["n_ctx"] == first.n_ctx_slot for s in slots), (slots, first)


def test_idle_server_with_memory_to_spare_gets_no_advice(llama_server, tiny_model):
    srv = llama_server(tiny_model("llama"), "-c", "2048", "-np", "1", "-fa", "off")
    assert ScriptedAgent(srv.url).turn().ok
    engine = Engine()
    with Poller(MemorySources(), discover_fn=only([srv.pid])) as poller:
        (server,) = engine.analyse(poller.poll()).servers
    assert server.health == "ok", server.errors
    assert server.advice == ()
