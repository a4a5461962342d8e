"""Problem-first advice (issue 9) on real tiny GGUF models and the real memory model: the
problems in view, only the fixes that solve them, cheapest first, and the turns each buys."""

from __future__ import annotations

import shlex

import pytest
from kvwall.app.demo.tinymodels import write_model
from kvwall.budget.advice import (
    ServerView,
    advice_in_view,
    advice_options,
    context_options,
    pool_bytes,
    problems_in_view,
)
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import plan_memory
from kvwall.budget.report import Forecast, PoolForecast, RefusedRequests, SlotReport
from kvwall.budget.whatif import simulate, what_if_table
from kvwall.monitors.gguf import read_model
from kvwall.monitors.snapshot import DeviceMemory
from kvwall.widgets.viewmodels.whatif_inputs import quick_changes

GIB = 1024**3


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return read_model(str(write_model("qwen3", root / "qwen3.gguf", n_ctx_train=16384)))


def setup(model, *flags):
    config = parse_command_line(["llama-server", "-m", model.path, *flags])
    return config, plan_memory(model, config)


def slot(i, n_ctx, tokens, per_turn=None, turns_left=None, confidence=1.0):
    fc = Forecast(tokens_per_turn=per_turn, turns_left=turns_left, confidence=confidence,
                  turns_seen=4 if per_turn else 0)
    return SlotReport(i, n_ctx, tokens, False, fc)


def host(total=64 * GIB, free=32 * GIB):
    return DeviceMemory(id="host", kind="host", name="Host RAM", unified=False,
                        total_bytes=total,
                        free_bytes=free, used_bytes=total - free)


def view(plan, slots, *, budget=8 * GIB, pools=(), forecasts=(), refused=None,
         host_ram=None, cache_ram_on=False):
    return ServerView(tuple(slots), None, refused, pool_bytes(plan), budget, tuple(pools),
                      tuple(forecasts), host_ram, cache_ram_on)


def test_nothing_in_view_means_no_advice(qwen3):
    config, plan = setup(qwen3, "-c", "4096", "-np", "2", "-fa", "off")
    options = advice_options(qwen3, config, plan, budget_bytes=8 * GIB)
    assert options.memory and options.context  # the options exist...
    idle = view(plan, [slot(0, 2048, 300, 100.0, 18), slot(1, 2048, 0)], pools=(host(),))
    assert problems_in_view(idle) == ()
    assert advice_in_view(options, problems_in_view(idle)) == ()  # ...but none is shown


def test_a_filling_slot_gets_context_fixes_cheapest_first_with_the_turns_they_buy(qwen3):
    config, plan = setup(qwen3, "-c", "4096", "-np", "2")
    slots = [slot(0, 2048, 1800, 100.0, 3), slot(1, 2048, 0)]
    problems = problems_in_view(view(plan, slots, pools=(host(),)))
    assert [p.solves for p in problems] == ["context"] and "slot 0" in problems[0].text
    options = advice_options(qwen3, config, plan, budget_bytes=8 * GIB)
    advice = advice_in_view(options, problems, slots)
    actions = [a.action for a in advice]
    assert actions[0] == "larger-context"  # costs only memory: first
    assert actions == sorted(actions, key=["larger-context", "cache-q8_0-larger-context",
                                           "fewer-slots-more-context", "kv-unified"].index)
    for a in advice:
        assert a.solves == "context"
        new = plan_memory(qwen3, parse_command_line(shlex.split(a.command)))
        assert not new.errors and pool_bytes(new) <= 8 * GIB
        reach = new.n_ctx if new.kv_unified else new.n_ctx_slot
        assert reach > 2048, a  # each slot (or the shared pool) gets more context
        assert a.turns_left is not None and a.turns_left > 3  # it buys turns
    assert advice[0].n_ctx_slot > 2048
    # Same memory: q8_0 with a larger -c holds more cells without costing more.
    q8 = next(a for a in advice if a.action == "cache-q8_0-larger-context")
    assert q8.saves_bytes >= 0


def test_no_room_no_larger_context_but_same_memory_fixes_remain(qwen3):
    config, plan = setup(qwen3, "-c", "4096", "-np", "2")
    tight = int(pool_bytes(plan) * 1.01)  # next to nothing free beyond what it holds
    fixes = context_options(qwen3, config, plan, budget_bytes=tight)
    assert "larger-context" not in {a.action for a in fixes}
    assert "cache-q8_0-larger-context" in {a.action for a in fixes}
    for a in fixes:  # every fix offered fits (a longer slot needs a bigger compute buffer)
        new = plan_memory(qwen3, parse_command_line(shlex.split(a.command)))
        assert pool_bytes(new) <= tight, a.action


def test_trained_context_caps_the_context_fixes(qwen3):
    config, plan = setup(qwen3, "-c", "16384", "-np", "1")
    assert context_options(qwen3, config, plan, budget_bytes=8 * GIB) == ()


def test_refused_requests_are_a_context_problem(qwen3):
    _config, plan = setup(qwen3, "-c", "4096", "-np", "1")
    problems = problems_in_view(view(plan, [slot(0, 4096, 100)],
                                     refused=RefusedRequests(2, 1.0e9)))
    assert [p.solves for p in problems] == ["context"] and "refused" in problems[0].text


def test_short_or_running_out_memory_is_a_memory_problem(qwen3):
    config, plan = setup(qwen3, "-c", "4096", "-np", "2", "-fa", "off")
    short = host(free=2 * GIB)  # 3% of 64 GiB
    problems = problems_in_view(view(plan, [slot(0, 2048, 10)], pools=(short,)))
    assert [p.solves for p in problems] == ["memory"]
    soon = PoolForecast("host", 20 * GIB, bytes_per_minute=GIB, seconds_left=120.0,
                        confidence=0.9)
    problems = problems_in_view(view(plan, [slot(0, 2048, 10)], pools=(host(),),
                                     forecasts=(soon,)))
    assert [p.solves for p in problems] == ["memory"]
    options = advice_options(qwen3, config, plan, budget_bytes=8 * GIB)
    advice = advice_in_view(options, problems)
    assert advice and all(a.solves == "memory" and a.saves_bytes > 0 for a in advice)
    assert advice[0].action == "flash-attn-on"  # cheaper for the user than a quantized cache
    # Host RAM short while the prompt cache is on: on a GPU server, a host-RAM problem.
    problems = problems_in_view(view(plan, [], pools=(), host_ram=short, cache_ram_on=True))
    assert [p.solves for p in problems] == ["host-ram"]


def test_fewer_slots_agree_between_the_cli_table_and_the_gui_buttons(qwen3):
    config, plan = setup(qwen3, "-c", "8192", "-np", "2")
    table = what_if_table(qwen3, config, memory_bytes=8 * GIB)
    cli = next(r for r in table if r.label == "1 slot")
    gui = simulate(qwen3, config, quick_changes("one_fewer_slot", plan, config),
                   memory_bytes=8 * GIB)
    assert cli.command == gui.command
    assert "-c 4096 -np 1" in cli.command  # each slot keeps its context
    assert quick_changes("half_slots", plan, config) is None  # two slots: half == one fewer


def test_labels_are_unique_alias_else_name_and_port(tmp_path):
    from kvwall.budget.engine import Engine
    from kvwall.monitors.snapshot import MemorySnapshot, ServerProcess, ServerState, Snapshot

    path = str(write_model("qwen3", tmp_path / "llama_gqa_f16.gguf"))

    def server(pid, port, *flags):
        proc = ServerProcess(url=f"http://127.0.0.1:{port}", pid=pid,
                             argv=("llama-server", "-m", path, *flags), rss_bytes=1 << 20,
                             name="llama-server")
        return ServerState(proc, 0.0, "ok", props={"model_alias": path})

    snap = Snapshot(0.0, MemorySnapshot(0.0, (host(),)), (
        server(1, 8081), server(2, 8082), server(3, 8083, "--alias", "coder")))
    labels = [s.label for s in Engine().analyse(snap).servers]
    assert labels == ["llama_gqa_f16:8081", "llama_gqa_f16:8082", "coder"]
