"""The memory gauge shows exactly the report's bytes, in proportion, with hover help."""

from __future__ import annotations

import gui_factories as f
import pytest
from kvwall.widgets.gauge import GaugePanel, tooltip_text
from kvwall.widgets.viewmodels import pools


def _two_server_report():
    a = f.server("pid:100", "qwen3-32b", measured=9 * f.GiB, weights=5 * f.GiB, kv=2 * f.GiB,
                 compute=512 * f.MiB)
    b = f.server("pid:200", "llama-8b", measured=3 * f.GiB, weights=2 * f.GiB, kv=512 * f.MiB,
                 compute=128 * f.MiB, unattributed=100 * f.MiB)
    dev = f.device(total=24 * f.GiB, used=20 * f.GiB)
    return f.report([a, b], [dev])


def test_segments_equal_the_reports_bytes(qtbot):
    report = _two_server_report()
    panel = GaugePanel()
    qtbot.addWidget(panel)
    panel.resize(800, 120)
    panel.set_report(report)
    gauge = panel.gauges()["nvidia:0"]
    segs = gauge.segments()
    by = {(s.kind, s.server_key): s.bytes for s in segs}

    dev = report.devices[0]
    a, b = report.servers
    # Other processes = what the pool uses beyond both servers' measured bytes.
    assert by[(pools.OTHER, None)] == dev.used_bytes - 9 * f.GiB - 3 * f.GiB
    for srv in (a, b):
        att = srv.memory[0]
        assert by[(pools.WEIGHTS, srv.key)] == att.weights_bytes
        assert by[(pools.KV, srv.key)] == att.kv_bytes
        assert by[(pools.COMPUTE, srv.key)] == att.compute_bytes
        assert by[(pools.OVERHEAD, srv.key)] == att.overhead_bytes
    assert by[(pools.UNATTRIBUTED, "pid:200")] == 100 * f.MiB
    assert by[(pools.FREE, None)] == dev.free_bytes
    # Everything on the pool is accounted for: the bar is the whole device.
    assert sum(s.bytes for s in segs) == dev.total_bytes
    # Drawing order: other processes first, free last.
    assert segs[0].kind == pools.OTHER and segs[-1].kind == pools.FREE


def test_segments_are_drawn_in_proportion(qtbot):
    panel = GaugePanel()
    qtbot.addWidget(panel)
    panel.resize(1002, 120)
    panel.show()
    qtbot.waitExposed(panel)
    panel.set_report(_two_server_report())
    bar = panel.gauges()["nvidia:0"].bar
    rects = bar.segment_rects()
    width = sum(r.width() for r, _ in rects)
    assert width == pytest.approx(bar.width() - 2, abs=0.5)
    for rect, seg in rects:
        assert rect.width() / width == pytest.approx(seg.bytes / (24 * f.GiB), abs=1e-6)
    # Hovering the KV cache segment of the first server names it with its bytes.
    kv_rect, kv_seg = next((r, s) for r, s in rects if s.kind == pools.KV)
    assert bar.segment_at(kv_rect.center().x()) == kv_seg
    text = tooltip_text(kv_seg, bar.scale_bytes())
    assert "qwen3-32b: KV cache" in text and f"{2 * f.GiB:,} bytes" in text
    assert "KV cache" in text and "context" in text


def test_gauge_repaints_only_on_change(qtbot):
    panel = GaugePanel()
    qtbot.addWidget(panel)
    report = _two_server_report()
    panel.set_report(report)
    gauge = panel.gauges()["nvidia:0"]
    view = pools.pool_view(report, report.devices[0])
    assert gauge.set_view(view) is False  # same figures: no repaint
    changed = f.report(report.servers, [f.device(total=24 * f.GiB, used=21 * f.GiB)])
    assert gauge.set_view(pools.pool_view(changed, changed.devices[0])) is True


def test_one_gauge_per_pool_and_unknown_used(qtbot):
    host = f.device("host", total=64 * f.GiB, used=None, name="Host RAM", kind="host")
    gpu = f.device()
    panel = GaugePanel()
    qtbot.addWidget(panel)
    panel.set_report(f.report([], [gpu, host]))
    assert list(panel.gauges()) == ["nvidia:0", "host"]
    # A pool whose use is unknown shows no invented segments.
    assert panel.gauges()["host"].segments() == ()
    panel.set_report(f.report([], [gpu]))
    assert list(panel.gauges()) == ["nvidia:0"]


def test_legend_keys_every_colour_the_bars_draw(qtbot):
    panel = GaugePanel()
    qtbot.addWidget(panel)
    panel.set_report(f.report([f.server()], [f.device()]))
    assert pools.UNATTRIBUTED not in panel.legend.shown_kinds()
    panel.set_report(_two_server_report())  # llama-8b has bytes the model cannot explain
    drawn = {s.kind for s in panel.gauges()["nvidia:0"].segments()}
    assert drawn <= set(panel.legend.shown_kinds())
    assert pools.UNATTRIBUTED in panel.legend.shown_kinds()
