"""Memory pool forecasts (budget/forecast.py PoolTracker) and sudden grabs by other
processes (budget/events.py GrabDetector), on synthetic polls with injected timestamps."""

from __future__ import annotations

import random

import pytest
from kvwall.budget.events import GrabDetector
from kvwall.budget.forecast import PoolTracker, forecast_pool
from kvwall.monitors.snapshot import DeviceMemory, ProcessMemory

GIB = 1024**3
MIB = 1024**2
TOTAL = 64 * GIB


def host(free, total=TOTAL, used=True):
    return DeviceMemory("host", "host", "Host RAM", True, total,
                        total - free if used else None, free)


def feed(tracker, start_free, rate_per_min, seconds, step=2.0, noise=0.0, t0=0.0, seed=1):
    """Poll every ``step`` s for ``seconds`` s while use grows by ``rate_per_min``."""
    rng = random.Random(seed)
    t, free = t0, float(start_free)
    n = int(seconds / step)
    for _ in range(n):
        t += step
        free -= rate_per_min * step / 60.0
        tracker.observe([host(int(free + rng.gauss(0, noise)))], t)
    return t, free


def test_steady_growth_forecast_is_within_ten_percent_of_the_truth():
    # llama-server's prompt cache eats 300 MiB of host RAM a minute; 12 GiB are free.
    tracker = PoolTracker()
    _t, free = feed(tracker, 12 * GIB + 5 * 300 * MIB, 300 * MIB, 300, noise=20 * MIB)
    f = tracker.forecast("host")
    truth_s = free / (300 * MIB) * 60
    assert f.seconds_left == pytest.approx(truth_s, rel=0.10)
    assert f.bytes_per_minute == pytest.approx(300 * MIB, rel=0.10)
    assert f.confidence >= 0.8
    assert f.free_bytes == pytest.approx(free, abs=100 * MIB)


def test_noisy_growth_has_a_lower_confidence():
    steady, noisy = PoolTracker(), PoolTracker()
    feed(steady, 30 * GIB, 200 * MIB, 300, noise=10 * MIB)
    feed(noisy, 30 * GIB, 200 * MIB, 300, noise=600 * MIB, seed=3)
    s, n = steady.forecast("host"), noisy.forecast("host")
    assert s.seconds_left is not None
    assert n.confidence < s.confidence
    assert n.confidence < 0.5


@pytest.mark.parametrize("rate", [0.0, -200 * MIB])
def test_flat_or_shrinking_use_gives_no_forecast(rate):
    tracker = PoolTracker()
    feed(tracker, 20 * GIB, rate, 600, noise=30 * MIB, seed=5)
    f = tracker.forecast("host")
    assert f.seconds_left is None and f.confidence == 0.0
    assert f.bytes_per_minute is not None
    if rate < 0:
        assert f.bytes_per_minute < 0


def test_a_single_jump_is_not_a_trend():
    # A model loaded once: 12 GiB in one poll, flat before and after.
    tracker = PoolTracker()
    for i in range(150):
        tracker.observe([host(20 * GIB if i < 75 else 8 * GIB)], 2.0 * i)
    f = tracker.forecast("host")
    assert f.confidence < 0.2


def test_too_little_history_gives_no_forecast_yet():
    tracker = PoolTracker()
    feed(tracker, 20 * GIB, GIB, 20)
    f = tracker.forecast("host")
    assert f.seconds_left is None and f.bytes_per_minute is None
    assert tracker.forecast("nvidia:0") is None


def test_floor_counts_as_run_out():
    plain, floored = PoolTracker(), PoolTracker(floor_bytes={"*": 2 * GIB})
    feed(plain, 12 * GIB, GIB, 240)
    feed(floored, 12 * GIB, GIB, 240)
    a, b = plain.forecast("host"), floored.forecast("host")
    assert a.seconds_left - b.seconds_left == pytest.approx(120.0, rel=0.05)
    assert b.floor_bytes == 2 * GIB
    # Below the floor: out of memory now.
    _t, _ = feed(floored, 2 * GIB, GIB, 200, t0=1000.0)
    assert floored.forecast("host").seconds_left == 0.0


def test_memory_is_bounded_and_downsampled():
    tracker = PoolTracker(history_s=1800, bucket_s=10)
    # Ten hours of polls every second.
    for i in range(36000):
        tracker.observe([host(20 * GIB - i * 1000)], float(i))
    assert tracker.points("host") <= 1800 / 10 + 2
    # A pool not seen for the history span is dropped.
    tracker.observe([DeviceMemory("nvidia:0", "nvidia", "GPU", False, GIB, 0, GIB)], 40000.0)
    assert len(tracker) == 1


def test_free_from_total_and_used_unknown_pools_and_clock_going_back():
    tracker = PoolTracker()
    unknown = DeviceMemory("amd:card1", "amd", "AMD", False, None, None, None)
    derived = DeviceMemory("nvidia:0", "nvidia", "GPU", False, 24 * GIB, 10 * GIB, None)
    tracker.observe([unknown, derived], 1.0)
    assert tracker.forecast("amd:card1") is None
    assert tracker.forecast("nvidia:0").free_bytes == 14 * GIB
    feed(tracker, 20 * GIB, GIB, 300, t0=100.0)
    assert tracker.forecast("host").seconds_left is not None
    tracker.observe([host(20 * GIB)], 50.0)  # earlier than before: a new history
    assert tracker.forecast("host").bytes_per_minute is None
    tracker.forget()
    assert len(tracker) == 0


def test_forecast_pool_pure_function_and_bad_arguments():
    pts = [(float(t), 10 * GIB - t * MIB) for t in range(0, 121, 10)]
    f = forecast_pool("x", pts, None)
    assert f.free_bytes == 10 * GIB - 120 * MIB
    assert f.seconds_left == pytest.approx((10 * GIB - 120 * MIB) / MIB, rel=1e-6)
    assert forecast_pool("x", [], 5).seconds_left is None
    with pytest.raises(ValueError, match="bucket_s"):
        PoolTracker(bucket_s=0)
    with pytest.raises(ValueError, match="window_s"):
        PoolTracker(history_s=60, window_s=300)


# ------------------------------------------------------------------------ grabs


def gpu(used_by, total=24 * GIB):
    procs = tuple(ProcessMemory(pid, b, f"proc{pid}") for pid, b in used_by.items())
    used = sum(used_by.values())
    return DeviceMemory("nvidia:0", "nvidia", "GPU", False, total, used, total - used, procs)


def test_another_process_growing_fast_is_an_event_servers_are_not():
    det = GrabDetector(share=0.10, grown_bytes=4 * GIB, window_s=60)
    assert det.observe([gpu({1: 8 * GIB, 2: GIB})], 0.0, {1}) == ()
    # The server grows by 6 GiB: never an event. Another process by 1 GiB (4%): too small.
    assert det.observe([gpu({1: 14 * GIB, 2: 2 * GIB})], 10.0, {1}) == ()
    # pid 2 reaches 5 GiB: +4 GiB (17% of 24 GiB) within 20 s of its lowest sample.
    (e,) = det.observe([gpu({1: 14 * GIB, 2: 5 * GIB})], 20.0, {1})
    assert (e.kind, e.device_id, e.pid, e.name) == ("process_grab", "nvidia:0", 2, "proc2")
    assert e.grown_bytes == 4 * GIB and e.used_bytes == 5 * GIB
    assert e.share == pytest.approx(4 / 24, abs=1e-3) and e.window_s == 20.0
    # It lasts while the growth is within the window, then the new level is normal.
    assert len(det.observe([gpu({1: 14 * GIB, 2: 5 * GIB})], 50.0, {1})) == 1
    assert det.observe([gpu({1: 14 * GIB, 2: 5 * GIB})], 85.0, {1}) == ()


def test_new_process_counts_from_zero_but_not_at_the_first_poll():
    det = GrabDetector(share=0.5, grown_bytes=4 * GIB, window_s=60)
    # Already there when kvwall starts: not a grab.
    assert det.observe([gpu({1: 8 * GIB, 3: 6 * GIB})], 0.0, {1}) == ()
    # A process that appears with 4 GiB (17%, under the share, at the byte threshold).
    (e,) = det.observe([gpu({1: 8 * GIB, 3: 6 * GIB, 4: 4 * GIB})], 5.0, {1})
    assert e.pid == 4 and e.grown_bytes == 4 * GIB
    # Vanished processes are forgotten; host RAM is never watched.
    det.observe([gpu({1: 8 * GIB})], 10.0, {1})
    assert len(det) == 1
    big = DeviceMemory("host", "host", "Host RAM", True, TOTAL, 0, TOTAL,
                       (ProcessMemory(9, 30 * GIB),))
    assert det.observe([big], 11.0) == () and det.observe([big], 12.0) == ()
    with pytest.raises(ValueError):
        GrabDetector(share=0)
