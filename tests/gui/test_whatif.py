"""What-if clicks show the simulated allocation beside the current one, the bytes saved,
the largest context, the turns left, and the exact command line to copy."""

from __future__ import annotations

import gui_factories as f
import pytest
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.memory import plan_memory
from kvwall.budget.units import format_bytes
from kvwall.monitors.gguf import read_model
from kvwall.widgets.viewmodels import pools
from kvwall.widgets.viewmodels.whatif_inputs import WhatIfInputs
from kvwall.widgets.whatif import WhatIfPanel, plan_segments
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

BUDGET = 64 * f.MiB


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from kvwall.app.demo.tinymodels import write_model

    path = write_model("llama", tmp_path_factory.mktemp("m") / "tiny.gguf", n_ctx_train=16384)
    return read_model(path), str(path)


def _panel(qtbot, tiny, *flags, tokens=1500, per_turn=100.0):
    model, path = tiny
    config = parse_command_line(["llama-server", "-m", path, "-c", "8192", "-np", "4", *flags])
    plan = plan_memory(model, config)
    assert plan.ok
    slots = [f.slot(i, plan.n_ctx_seq, tokens if i == 0 else 100, per_turn=per_turn,
                    turns_left=5) for i in range(plan.n_seq)]
    srv = f.server(slots=slots, the_plan=plan, weights=plan.weights_bytes, kv=plan.kv_bytes,
                   compute=plan.compute_bytes, measured=plan.total_bytes + f.MiB,
                   device="host")
    inputs = WhatIfInputs(srv.key, model, config, BUDGET)
    panel = WhatIfPanel()
    qtbot.addWidget(panel)
    panel.resize(480, 640)
    panel.set_server(srv, inputs)
    return panel, plan, path


def _kv(segs):
    return sum(s.bytes for s in segs if s.kind == pools.KV)


def test_q8_0_click_halves_the_kv_bar_and_gives_the_command(qtbot, tiny):
    panel, plan, path = _panel(qtbot, tiny)
    assert panel.current_bar.segments() == plan_segments(plan)
    with qtbot.waitSignal(panel.simulated, timeout=2000) as sig:
        qtbot.mouseClick(panel.buttons["q8_0"], Qt.MouseButton.LeftButton)
    result = sig.args[0]
    wi = result.what_if
    assert not wi.refused
    # q8_0 stores 32 values in 34 bytes where f16 needs 64: KV shrinks to 34/64.
    assert _kv(panel.new_bar.segments()) == plan.kv_bytes * 34 // 64
    assert _kv(panel.current_bar.segments()) == plan.kv_bytes
    # Both bars share one scale, so the new one is drawn shorter.
    assert panel.new_bar.scale_bytes() == panel.current_bar.scale_bytes()
    assert panel.saved_label.text() == format_bytes(plan.kv_bytes - plan.kv_bytes * 34 // 64)
    cmd = panel.command_view.toPlainText()
    assert cmd.split() == ["llama-server", "-m", path, "-c", "8192", "-np", "4",
                           "-ctk", "q8_0", "-ctv", "q8_0"]
    assert f"{wi.max_ctx:,}" in panel.max_ctx_label.text()
    assert wi.caveat and wi.caveat in panel.caveat_label.text()
    qtbot.mouseClick(panel.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == cmd


def test_slot_buttons_and_turns_left(qtbot, tiny):
    panel, plan, _ = _panel(qtbot, tiny, tokens=1500, per_turn=100.0)
    assert plan.n_ctx_seq == 2048
    half = panel.try_quick("half_slots")
    # Issue 9: fewer slots keep each slot's context (-c 4096 -np 2), as the CLI's table.
    assert "-np 2" in half.what_if.command and "-c 4096" in half.what_if.command
    assert half.what_if.plan.n_ctx_seq == 2048
    assert half.turns_left_after == 6  # (2048 - 1500) / 100, rounded up
    # Two slots of 4096 cells: the fullest slot (1500 cells, +100 a turn) has 26 turns.
    two = panel.try_changes({"n_parallel": 2}, "2 slots, same -c")
    assert two.what_if.plan.n_ctx_seq == 4096
    assert two.turns_left_after == 26
    assert "~26" in panel.turns_label.text()
    fewer = panel.try_quick("one_fewer_slot")
    assert "-np 3" in fewer.what_if.command and fewer.what_if.plan.n_seq == 3
    fa = panel.try_quick("fa_on")
    assert fa.what_if.command.endswith("-fa on")


def test_refused_configuration_is_shown_with_its_reason(qtbot, tiny):
    panel, _plan, _ = _panel(qtbot, tiny, "-fa", "off")
    panel.ctv.setCurrentText("q4_0")
    with qtbot.waitSignal(panel.simulated, timeout=2000):
        qtbot.mouseClick(panel.custom_button, Qt.MouseButton.LeftButton)
    assert panel.result().what_if.refused
    assert "refuse" in panel.refused_label.text() and "flash" in panel.refused_label.text()
    assert panel.new_bar.segments() == ()
    assert not panel.copy_button.isEnabled()
    # With -fa off the one-click q4_0 turns flash attention on, so it is accepted.
    ok = panel.try_quick("q4_0")
    assert not ok.what_if.refused and "-fa on" in ok.what_if.command


def test_free_choice_of_context(qtbot, tiny):
    panel, plan, _ = _panel(qtbot, tiny)
    panel.ctx_box.setValue(16384)
    result = panel.try_custom()
    assert "-c 16384" in result.what_if.command
    assert _kv(panel.new_bar.segments()) == 2 * plan.kv_bytes
    assert "costs" in panel.saved_label.text()


def test_panel_without_inputs_explains_why(qtbot):
    srv = f.server(url="http://10.0.0.5:8080", key="http://10.0.0.5:8080")
    panel = WhatIfPanel()
    qtbot.addWidget(panel)
    panel.set_server(srv, None)
    assert "command line" in panel.heading.text()
    assert not any(b.isEnabled() for b in panel.buttons.values())
    assert panel.try_quick("q8_0") is None


def test_a_server_that_cannot_be_simulated_shows_no_bar_of_the_previous_one(qtbot, tiny):
    panel, _plan, _ = _panel(qtbot, tiny)
    qtbot.mouseClick(panel.buttons["q8_0"], Qt.MouseButton.LeftButton)
    assert panel.command_view.isVisibleTo(panel)
    url_only = f.server(key="url:http://10.0.0.5:8080", name="10.0.0.5:8080", the_plan=None)
    panel.set_server(url_only, None)
    assert panel.current_bar.segments() == ()
    assert not panel.result_frame.isVisibleTo(panel)
    assert "cannot be simulated" in panel.heading.text()
    assert not any(b.isEnabled() for b in panel.buttons.values())


def test_turns_left_follow_the_next_polls(qtbot, tiny):
    panel, plan, _ = _panel(qtbot, tiny, tokens=1500, per_turn=100.0)
    # Two slots sharing the same -c (issue 9: the "half the slots" button keeps each
    # slot's context instead).
    half = panel.try_changes({"n_parallel": 2}, "2 slots, same -c")
    assert half.turns_left_after == 26  # (4096 - 1500) / 100, rounded up
    # The next poll: the slot grew by 1000 cells and now has 2 requests left.
    srv = panel._server
    grown = f.slot(0, plan.n_ctx_seq, 2500, per_turn=100.0, turns_left=2)
    from dataclasses import replace

    panel.set_server(replace(srv, slots=(grown, *srv.slots[1:])), panel._inputs)
    assert panel.result().what_if is half.what_if  # the same simulation, not redone
    assert panel.result().turns_left_after == 16 and panel.result().turns_left_now == 2
    assert panel.turns_label.text() == "~16 requests (now ~2 requests)"


def test_half_the_slots_is_hidden_where_it_equals_one_fewer(qtbot, tiny):
    panel, plan, _ = _panel(qtbot, tiny, "-np", "2")
    assert plan.n_seq == 2
    assert panel.buttons["half_slots"].isHidden()
    assert not panel.buttons["one_fewer_slot"].isHidden()
    four, _plan, _ = _panel(qtbot, tiny)
    assert not four.buttons["half_slots"].isHidden()


def test_costs_more_is_not_memory_saved_and_the_trained_context_cap_is_named(qtbot, tiny):
    panel, _plan, _ = _panel(qtbot, tiny, "-np", "1")
    panel.ctx_box.setValue(16384)
    panel.try_custom()
    row = panel._facts.labelForField(panel.saved_label)
    assert row.text() == "Memory" and panel.saved_label.text().startswith("costs")
    # One slot, 64 MiB: the largest context is the model's trained 16,384, not memory.
    assert "trained context" in panel.max_ctx_label.text()
    panel.try_quick("q8_0")
    assert row.text() == "Memory saved"


# ---------------------------------------------------------------------------------------
# offload rows for a server on a GPU (issue 8): the same rows as `kvwall plan`


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    from kvwall.app.demo.tinymodels import write_model

    path = write_model("qwen3moe", tmp_path_factory.mktemp("m") / "moe.gguf", n_layer=8, n_embd=256,
                       n_expert=16, n_expert_used=2, n_ff_exp=256, n_ctx_train=8192)
    return read_model(path), str(path)


def _gpu_panel(qtbot, tiny_moe):
    from kvwall.budget.whatif import offload_table

    model, path = tiny_moe
    # -fitt 0: the tiny model is smaller than --fit's default 1 GiB margin
    config = parse_command_line(["llama-server", "-m", path, "-c", "8192", "-np", "1", "-fitt", "0"])
    full = plan_memory(model, config.replace(fit=False), gpu_names=("CUDA0",))
    free = {"CUDA0": int(sum(d.total_bytes for d in full.devices if not d.is_host) * 0.7)}
    plan = plan_memory(model, config, gpu_names=("CUDA0",), device_free=free)
    srv = f.server(slots=[f.slot(0, plan.n_ctx_seq, 3000, per_turn=500.0, turns_left=11)], the_plan=plan,
                   weights=plan.weights_bytes, kv=plan.kv_bytes, compute=plan.compute_bytes,
                   measured=plan.total_bytes)
    inputs = WhatIfInputs(srv.key, model, config, free["CUDA0"], ("CUDA0",), free)
    table = offload_table(model, config, memory_bytes=free["CUDA0"], gpu_names=("CUDA0",), device_free=free)
    panel = WhatIfPanel()
    qtbot.addWidget(panel)
    panel.resize(480, 640)
    with qtbot.waitSignal(panel.offload_listed, timeout=20000) as sig:
        panel.set_server(srv, inputs)
    return panel, plan, table, sig.args[0]


def test_a_gpu_server_lists_the_offload_rows_of_kvwall_plan(qtbot, tiny_moe):
    panel, plan, table, rows = _gpu_panel(qtbot, tiny_moe)
    assert panel.offload_bar.isVisibleTo(panel) and panel.offload_box.isEnabled()
    # the same rows, in the same order, as the CLI's offload table
    assert [r.result.what_if.command for r in rows] == [w.command for w in table if not w.refused]
    items = [panel.offload_box.itemText(i) for i in range(1, panel.offload_box.count())]
    assert items == [r.text for r in rows] and any(t.startswith("-ncmoe ") for t in items)
    ot = next(i for i, r in enumerate(rows, 1) if r.result.what_if.label == "-ot exps=CPU")
    with qtbot.waitSignal(panel.simulated, timeout=2000) as sig:
        panel.offload_box.activated.emit(ot)
    wi = sig.args[0].what_if
    assert panel.command_view.toPlainText() == wi.command and wi.command.endswith(
        "-ot '\\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU'")
    assert "experts" in panel.caveat_label.text() and "host memory" in panel.caveat_label.text()
    # the bars show what the GPU holds: the experts moved off it make the new one shorter
    gpu_now = sum(d.total_bytes for d in plan.devices if not d.is_host)
    assert sum(s.bytes for s in panel.current_bar.segments()) == gpu_now - sum(
        d.output_bytes for d in plan.devices if not d.is_host)
    assert sum(s.bytes for s in panel.new_bar.segments()) < sum(s.bytes for s in panel.current_bar.segments())
    assert panel._facts.labelForField(panel.saved_label).text() == "GPU memory saved"
    assert panel.saved_label.text() == format_bytes(wi.saves_bytes)


def test_a_cpu_server_has_no_offload_list(qtbot, tiny):
    panel, _plan, _ = _panel(qtbot, tiny)
    assert not panel.offload_bar.isVisibleTo(panel) and panel.offload() == ()
