"""Warnings fire once per crossing, re-arm only past the hysteresis, never storm."""

from __future__ import annotations

import gui_factories as f
from kvwall.app.notifications import (
    CRITICAL,
    OK,
    WARNING,
    AlertRule,
    NotificationCenter,
    NotificationRules,
    Thresholds,
    level_for,
)


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


def test_level_for_hysteresis_and_missing_values():
    rule = AlertRule("free_memory", "free %", warn=10, critical=5, hysteresis=2)
    assert level_for(rule, 50) == OK
    assert level_for(rule, 10) == WARNING
    assert level_for(rule, 4) == CRITICAL
    # Recovering: stays critical until 5 + 2 is passed, then warning until 10 + 2.
    assert level_for(rule, 6.5, CRITICAL) == CRITICAL
    assert level_for(rule, 7.5, CRITICAL) == WARNING
    assert level_for(rule, 11, WARNING) == WARNING
    assert level_for(rule, 12.5, WARNING) == OK
    # Missing values never raise and never count as a recovery.
    assert level_for(rule, None, CRITICAL) == CRITICAL
    assert level_for(rule, float("nan"), WARNING) == WARNING
    above = AlertRule("slot_full", "used %", 95, 95, 5, below=False)
    assert level_for(above, 96) == CRITICAL
    assert level_for(above, 92, CRITICAL) == CRITICAL
    assert level_for(above, 89, CRITICAL) == OK


def test_slot_forecast_fires_once_per_crossing_and_rearms_after_hysteresis():
    clock = FakeClock()
    rules = NotificationRules(Thresholds(slot_warn_turns=5, slot_critical_turns=2), clock=clock,
                              cooldown_s=60)
    assert rules.evaluate(_slot_report(12)) == []
    fired = rules.evaluate(_slot_report(5))
    assert [(n.kind, n.level) for n in fired] == [("slot_forecast", WARNING)]
    assert fired[0].server_key == "pid:100"
    assert "slot 0 of qwen3-32b full in ~5 turns" in fired[0].message.lower()
    # Staying in the band, or hovering just outside it (within hysteresis): silence.
    for turns in (4, 5, 6, 4, 6, 5):
        clock.t += 10
        assert rules.evaluate(_slot_report(turns)) == []
    # Escalation is a new crossing.
    clock.t += 10
    assert [n.level for n in rules.evaluate(_slot_report(2))] == [CRITICAL]
    assert rules.evaluate(_slot_report(1)) == []
    # Back beyond warn + hysteresis (5 + 1): re-armed; a new crossing fires again.
    clock.t += 100
    assert rules.evaluate(_slot_report(9)) == []
    assert rules.level("slot_forecast", "pid:100/slot0") == OK
    clock.t += 100
    assert [n.level for n in rules.evaluate(_slot_report(4))] == [WARNING]


def test_cooldown_stops_a_storm_from_a_flapping_value():
    clock = FakeClock()
    rules = NotificationRules(Thresholds(), clock=clock, cooldown_s=300)
    fired = 0
    for i in range(40):  # flaps between 3 and 9 turns every poll
        clock.t += 5
        fired += len(rules.evaluate(_slot_report(3 if i % 2 == 0 else 9)))
    assert fired == 1
    clock.t += 300
    rules.evaluate(_slot_report(9))
    assert len(rules.evaluate(_slot_report(3))) == 1


def test_full_slot_and_free_memory_and_advice():
    clock = FakeClock()
    rules = NotificationRules(Thresholds(slot_full_percent=95, free_warn_percent=10,
                                         free_critical_percent=5), clock=clock)
    adv = (f.advice("Use a q8_0 KV cache", 2 * f.GiB),)
    full = _slot_report(0, tokens=16000, advice=adv)
    fired = rules.evaluate(full)
    assert [(n.kind, n.level) for n in fired] == [("slot_full", CRITICAL)]
    assert "16000 of 16384" in fired[0].message
    assert "Use a q8_0 KV cache (saves 2.00 GiB)" in fired[0].message
    assert rules.evaluate(full) == []

    srv = f.server(advice=adv)
    low = f.report([srv], [f.device(total=100 * f.GiB, used=92 * f.GiB)])
    fired = rules.evaluate(low)
    assert [(n.kind, n.level, n.subject) for n in fired] == [("free_memory", WARNING, "nvidia:0")]
    assert fired[0].server_key == "pid:100" and "8.00 GiB free (8%)" in fired[0].message
    assert fired[0].advice.startswith("Use a q8_0 KV cache")
    lower = f.report([srv], [f.device(total=100 * f.GiB, used=96 * f.GiB)])
    assert [n.level for n in rules.evaluate(lower)] == [CRITICAL]


def test_unreachable_server_and_process_grab():
    clock = FakeClock()
    rules = NotificationRules(Thresholds(grab_percent=10), clock=clock)
    ok = _slot_report(None, t=0)
    assert rules.evaluate(ok) == []
    down = _slot_report(None, t=2, health="unreachable")
    fired = rules.evaluate(down)
    assert [(n.kind, n.subject) for n in fired] == [("server_unreachable", "pid:100")]
    assert rules.evaluate(_slot_report(None, t=4, health="unreachable")) == []

    # Another process takes 4 GiB of a 24 GiB GPU within a minute (17%): one warning.
    srv = f.server()
    base = f.report([srv], [f.device(total=24 * f.GiB, used=12 * f.GiB)], t=10)
    grab = f.report([srv], [f.device(total=24 * f.GiB, used=16 * f.GiB)], t=20)
    rules2 = NotificationRules(Thresholds(grab_percent=10), clock=clock)
    assert rules2.evaluate(base) == []
    fired = rules2.evaluate(grab)
    assert [(n.kind, n.level) for n in fired] == [("process_grab", WARNING)]
    assert "4.00 GiB" in fired[0].message
    # The new level is the new normal after the window: no repeat.
    later = f.report([srv], [f.device(total=24 * f.GiB, used=16 * f.GiB)], t=200)
    assert rules2.evaluate(later) == []


def test_disabled_kinds_and_pause_are_silent():
    clock = FakeClock()
    rules = NotificationRules(Thresholds(kinds=frozenset({"free_memory"})), clock=clock)
    assert rules.evaluate(_slot_report(1)) == []
    rules2 = NotificationRules(Thresholds(), clock=clock)
    rules2.pause(3600)
    assert rules2.evaluate(_slot_report(1)) == []
    clock.t += 3601
    assert not rules2.paused
    # The crossing happened during the pause: it does not fire late.
    assert rules2.evaluate(_slot_report(1)) == []


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


def test_a_forecast_from_one_turn_does_not_warn_yet():
    from kvwall.budget.report import Forecast, SlotReport

    rules = NotificationRules(Thresholds(), clock=FakeClock())
    guess = SlotReport(0, 16384, 2000, False, Forecast(tokens_per_turn=3000.0, turns_left=5,
                                                       seconds_left=30.0, confidence=0.125,
                                                       turns_seen=1))
    assert rules.evaluate(f.report([f.server(slots=[guess])])) == []
    sure = SlotReport(0, 16384, 5000, False, Forecast(tokens_per_turn=3000.0, turns_left=4,
                                                      seconds_left=30.0, confidence=0.6,
                                                      turns_seen=3))
    assert [n.kind for n in rules.evaluate(f.report([f.server(slots=[sure])]))] == [
        "slot_forecast"]
