"""Warnings fire once per crossing, re-arm only past the hysteresis, never storm (no Qt)."""

from __future__ import annotations

from dataclasses import replace

from gui import gui_factories as f
from kvwall.budget.alerts import (
    CRITICAL,
    OK,
    WARNING,
    AlertRule,
    NotificationRules,
    Thresholds,
    level_for,
)
from kvwall.budget.events import GrabDetector
from kvwall.budget.forecast import PoolTracker
from kvwall.budget.units import format_bytes
from kvwall.monitors.snapshot import DeviceMemory


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
    clock = f.FakeClock()
    rules = NotificationRules(Thresholds(slot_warn_turns=5, slot_critical_turns=2), clock=clock,
                              cooldown_s=60)
    assert rules.evaluate(f.one_slot_report(12)) == []
    fired = rules.evaluate(f.one_slot_report(5))
    assert [(n.kind, n.level) for n in fired] == [("slot_forecast", WARNING)]
    assert fired[0].server_key == "pid:100"
    assert "slot 0 of qwen3-32b full in ~5 " in fired[0].message.lower()
    # Staying in the band, or hovering just outside it (within hysteresis): silence.
    for turns in (4, 5, 6, 4, 6, 5):
        clock.t += 10
        assert rules.evaluate(f.one_slot_report(turns)) == []
    # Escalation is a new crossing.
    clock.t += 10
    assert [n.level for n in rules.evaluate(f.one_slot_report(2))] == [CRITICAL]
    assert rules.evaluate(f.one_slot_report(1)) == []
    # Back beyond warn + hysteresis (5 + 1): re-armed; a new crossing fires again.
    clock.t += 100
    assert rules.evaluate(f.one_slot_report(9)) == []
    assert rules.level("slot_forecast", "pid:100/slot0") == OK
    clock.t += 100
    assert [n.level for n in rules.evaluate(f.one_slot_report(4))] == [WARNING]


def test_cooldown_stops_a_storm_from_a_flapping_value():
    clock = f.FakeClock()
    rules = NotificationRules(Thresholds(), clock=clock, cooldown_s=300)
    fired = 0
    for i in range(40):  # flaps between 3 and 9 turns every poll
        clock.t += 5
        fired += len(rules.evaluate(f.one_slot_report(3 if i % 2 == 0 else 9)))
    assert fired == 1
    clock.t += 300
    rules.evaluate(f.one_slot_report(9))
    assert len(rules.evaluate(f.one_slot_report(3))) == 1


def test_full_slot_and_free_memory_and_advice():
    clock = f.FakeClock()
    rules = NotificationRules(Thresholds(slot_full_percent=95, free_warn_percent=10,
                                         free_critical_percent=5), clock=clock)
    adv = (f.advice("Use a q8_0 KV cache", 2 * f.GiB),)
    # Issue 9: a full slot's notification carries the fix for its own problem (context),
    # not the memory advice.
    ctx_fix = replace(f.advice("A larger context (-c 32768)", -2 * f.GiB),
                      action="larger-context", solves="context", n_ctx_slot=32768,
                      turns_left=7)
    full = f.one_slot_report(0, tokens=16000, advice=(*adv, ctx_fix))
    fired = rules.evaluate(full)
    assert [(n.kind, n.level) for n in fired] == [("slot_full", CRITICAL)]
    assert "16000 of 16384" in fired[0].message
    assert "A larger context (-c 32768) (32768 cells per slot, full in ~7 requests)" in (
        fired[0].message)
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
    clock = f.FakeClock()
    rules = NotificationRules(Thresholds(grab_percent=10), clock=clock)
    ok = f.one_slot_report(None, t=0)
    assert rules.evaluate(ok) == []
    down = f.one_slot_report(None, t=2, health="unreachable")
    fired = rules.evaluate(down)
    assert [(n.kind, n.subject) for n in fired] == [("server_unreachable", "pid:100")]
    assert rules.evaluate(f.one_slot_report(None, t=4, health="unreachable")) == []




def _grab_report(detector, t, used_by, advice=()):
    """A report whose memory_events come from the real detector (budget/events.py)."""
    dev = f.gpu_used_by(used_by)
    srv = f.server(measured=used_by.get(100, 0), advice=advice)
    events = detector.observe([dev], t, server_pids={100})
    return replace(f.report([srv], [dev], t=t), memory_events=events)


def test_process_grab_fires_once_from_the_budget_events_and_opens_the_server():
    clock = f.FakeClock()
    rules = NotificationRules(Thresholds(grab_percent=10), clock=clock)
    detector = GrabDetector(share=0.10, grown_bytes=4 * f.GiB, window_s=60)
    adv = (f.advice("Use a q8_0 KV cache", 2 * f.GiB),)
    assert rules.evaluate(_grab_report(detector, 10, {100: 7 * f.GiB, 555: 1 * f.GiB})) == []
    # The server itself growing by 5 GiB (its KV cache, a reload) is not a grab.
    assert rules.evaluate(_grab_report(detector, 15, {100: 12 * f.GiB, 555: 1 * f.GiB})) == []
    # Another process takes 4 GiB of the 24 GiB GPU within 10 s (17%): one warning.
    clock.t += 10
    fired = rules.evaluate(_grab_report(detector, 25, {100: 12 * f.GiB, 555: 5 * f.GiB}, adv))
    assert [(n.kind, n.level, n.subject) for n in fired] == [("process_grab", WARNING,
                                                              "nvidia:0")]
    assert "python (pid 555), took 4.00 GiB (17%) of NVIDIA RTX 4090" in fired[0].message
    assert "Use a q8_0 KV cache (saves 2.00 GiB)" in fired[0].message
    assert fired[0].server_key == "pid:100"
    # While the grab is within the window, and once it is the new normal: silence.
    for t in (35, 60, 90, 200):
        clock.t += 30
        assert rules.evaluate(_grab_report(detector, t, {100: 12 * f.GiB, 555: 5 * f.GiB})) == []
    assert rules.level("process_grab", "nvidia:0") == OK
    # A second, larger grab later (a new process with 6 GiB, 25%) is a new crossing; above
    # twice the user's share it is critical.
    clock.t += 300
    assert rules.evaluate(_grab_report(detector, 480, {100: 12 * f.GiB, 555: 5 * f.GiB})) == []
    fired = rules.evaluate(_grab_report(detector, 500, {100: 12 * f.GiB, 555: 5 * f.GiB,
                                                        777: 6 * f.GiB}))
    grabs = [n for n in fired if n.kind == "process_grab"]
    assert [n.level for n in grabs] == [CRITICAL] and "pid 777" in grabs[0].message


def _pool_report(tracker, t, free, advice=(), device_id="host"):
    dev = DeviceMemory(device_id, "host", "Host RAM", True, 64 * f.GiB, 64 * f.GiB - free,
                       free)
    srv = f.server(device=device_id, advice=advice)
    tracker.observe([dev], t)
    return replace(f.report([srv], [dev], t=t), pool_forecasts=tracker.forecasts([dev]))


def test_pool_forecast_to_run_out_fires_once_per_crossing_with_hysteresis():
    clock = f.FakeClock()
    rules = NotificationRules(Thresholds(pool_warn_minutes=15, pool_critical_minutes=5),
                              clock=clock, cooldown_s=60)
    tracker = PoolTracker(bucket_s=10, window_s=300)
    adv = (f.advice("Lower --cache-ram to 2048 MiB", 6 * f.GiB),)
    t, free = 0.0, 20 * f.GiB
    fired_all = []
    free_at = []

    def poll(rate_per_min, seconds=10.0):
        nonlocal t, free
        t += seconds
        clock.t = t
        free -= int(rate_per_min * seconds / 60)
        fired = [n for n in rules.evaluate(_pool_report(tracker, t, free, adv))
                 if n.kind == "pool_forecast"]  # free_memory speaks for itself below 10%
        fired_all.extend(fired)
        free_at.extend(free for _ in fired)

    # The prompt cache eats 1 GiB of host RAM a minute: 20 GiB free lasts 20 minutes.
    # Nothing while more than 15 minutes are left; then exactly one warning.
    while free > 14 * f.GiB:
        poll(f.GiB)
    assert [(n.kind, n.level) for n in fired_all] == [("pool_forecast", WARNING)]
    assert 14 * f.GiB < free_at[0] <= 15 * f.GiB  # fired at the 15-minute crossing
    first = fired_all[0]
    assert first.subject == "memory:host" and first.server_key == "pid:100"
    assert f"Host RAM: {format_bytes(free_at[0])} free, 1024 MiB more used every minute" \
        in first.message and "full in ~14 min" in first.message
    assert "Lower --cache-ram to 2048 MiB (saves 6.00 GiB)" in first.message
    # Still eating: critical once under 5 minutes, once.
    while free > 2 * f.GiB:
        poll(f.GiB)
    assert [n.level for n in fired_all] == [WARNING, CRITICAL]
    assert 4 * f.GiB < free_at[1] <= 5 * f.GiB
    # The growth stops (the cache reached its ceiling): the trend flattens, the level
    # clears, and nothing fires meanwhile.
    for _ in range(60):
        poll(0)
    assert rules.level("pool_forecast", "memory:host") == OK
    assert len(fired_all) == 2
    # Memory is freed (1 GiB/min for 20 min): shrinking use is no forecast either.
    for _ in range(120):
        poll(-f.GiB)
    assert len(fired_all) == 2 and rules.level("pool_forecast", "memory:host") == OK
    # A new steady growth (1 GiB/min from 22 GiB free) is a new crossing.
    while free > 8 * f.GiB:
        poll(f.GiB)
    assert [n.level for n in fired_all] == [WARNING, CRITICAL, WARNING]


def test_a_jump_in_memory_is_not_a_pool_forecast():
    rules = NotificationRules(Thresholds(), clock=f.FakeClock())
    tracker = PoolTracker()
    fired = []
    for i in range(60):  # a model is loaded once (12 GiB), otherwise flat
        free = 20 * f.GiB if i < 30 else 8 * f.GiB
        fired += rules.evaluate(_pool_report(tracker, 10.0 * i, free))
    assert fired == []


def test_disabled_kinds_and_pause_are_silent():
    clock = f.FakeClock()
    rules = NotificationRules(Thresholds(kinds=frozenset({"free_memory"})), clock=clock)
    assert rules.evaluate(f.one_slot_report(1)) == []
    rules2 = NotificationRules(Thresholds(), clock=clock)
    rules2.pause(3600)
    assert rules2.evaluate(f.one_slot_report(1)) == []
    clock.t += 3601
    assert not rules2.paused
    # The crossing happened during the pause: it does not fire late.
    assert rules2.evaluate(f.one_slot_report(1)) == []


def test_a_forecast_from_one_turn_does_not_warn_yet():
    from kvwall.budget.report import Forecast, SlotReport

    rules = NotificationRules(Thresholds(), clock=f.FakeClock())
    guess = SlotReport(0, 16384, 2000, False, Forecast(tokens_per_turn=3000.0, turns_left=5,
                                                       seconds_left=30.0, confidence=0.125,
                                                       turns_seen=1))
    assert rules.evaluate(f.report([f.server(slots=[guess])])) == []
    sure = SlotReport(0, 16384, 5000, False, Forecast(tokens_per_turn=3000.0, turns_left=4,
                                                      seconds_left=30.0, confidence=0.6,
                                                      turns_seen=3))
    assert [n.kind for n in rules.evaluate(f.report([f.server(slots=[sure])]))] == [
        "slot_forecast"]


def _refused_report(count, t=0.0):
    from kvwall.budget.report import RefusedRequests

    srv = replace(f.server(slots=[f.slot(0, n_ctx=4096, tokens=3000)]),
                  refused_requests=RefusedRequests(count, 5.0 if count else None))
    return f.report([srv], [f.device(total=24 * f.GiB, used=2 * f.GiB)], t=t)


def test_a_refused_request_raises_one_notification_and_a_baseline_is_silent():
    clock = f.FakeClock()
    rules = NotificationRules(clock=clock, cooldown_s=60)
    assert [n.kind for n in rules.evaluate(_refused_report(3))] == []  # seen before we came
    clock.t += 2
    fired = rules.evaluate(_refused_report(4))
    assert [(n.kind, n.level, n.server_key) for n in fired] == [
        ("refused_requests", CRITICAL, "pid:100")]
    assert "exceed_context_size_error" in fired[0].message
    assert "refused a request" in fired[0].message
    clock.t += 2
    assert rules.evaluate(_refused_report(4)) == []
    clock.t += 2
    assert rules.evaluate(_refused_report(6)) == []  # within the cool-down: no storm
    clock.t += 120
    assert rules.evaluate(_refused_report(6)) == []
    clock.t += 2
    assert [n.kind for n in rules.evaluate(_refused_report(7))] == ["refused_requests"]


def test_a_slot_and_its_shared_pool_crossing_together_raise_one_notification():
    rules = NotificationRules(Thresholds(slot_warn_turns=5, slot_critical_turns=2))
    slot = f.slot(0, n_ctx=8192, tokens=7000, turns_left=3, per_turn=300.0)
    pool = f.slot(-1, n_ctx=8192, tokens=7000, turns_left=3, per_turn=300.0)
    srv = f.server(slots=[slot], pool=pool)
    fired = rules.evaluate(f.report([srv], [f.device(total=24 * f.GiB, used=2 * f.GiB)]))
    assert [(n.kind, n.subject) for n in fired] == [("pool_forecast", "pid:100/pool")]


def test_severity_words_match_the_severity():
    rules = NotificationRules(Thresholds(slot_warn_turns=5, slot_critical_turns=2))
    early = f.slot(0, n_ctx=16384, tokens=1600, turns_left=2, per_turn=8000.0)
    fired = rules.evaluate(f.report([f.server(slots=[early])],
                                    [f.device(total=24 * f.GiB, used=2 * f.GiB)]))
    assert [(n.level, n.title) for n in fired] == [(CRITICAL, "kvwall: context fills soon")]
    low = NotificationRules()
    warned = low.evaluate(f.report([], [f.device(total=100 * f.GiB, used=91 * f.GiB)]))
    assert [(n.level, n.title) for n in warned] == [
        (WARNING, "kvwall: NVIDIA RTX 4090 is running low")]
    full = low.evaluate(f.report([], [f.device(total=100 * f.GiB, used=97 * f.GiB)]))
    assert [(n.level, n.title) for n in full] == [
        (CRITICAL, "kvwall: NVIDIA RTX 4090 is almost full")]
