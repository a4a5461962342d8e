"""Context tracking and forecasts: a simulated agent against the tracker's answers."""

from __future__ import annotations

import pytest
from kvwall.budget.forecast import MAX_TURNS, ContextTracker, forecast_fill
from kvwall.monitors.snapshot import SlotState

KEY = "pid:4242"


class SimulatedAgent:
    """A coding agent on one slot: each request re-sends the history plus a new message.

    ``growth`` cycles through the cells each turn adds (prompt delta + reply).
    The task ids jump like llama-server's (shared by every task, /slots included).
    """

    def __init__(self, n_ctx: int, start: int, growth: list[int], slot_id: int = 0) -> None:
        self.n_ctx = n_ctx
        self.tokens = start
        self.growth = list(growth)
        self.turn_index = 0
        self.slot_id = slot_id
        self.task = 10
        self.turns_done = 0

    def idle(self) -> SlotState:
        return SlotState(self.slot_id, self.n_ctx, self.tokens, False, self.task)

    def busy(self) -> SlotState:
        return SlotState(self.slot_id, self.n_ctx, self.tokens + 7, True, self.task)

    def next_turn(self) -> bool:
        """Run one request; False when it hit the wall (the slot is full)."""
        self.task += 3
        step = self.growth[self.turn_index % len(self.growth)]
        self.turn_index += 1
        if self.tokens + step >= self.n_ctx:
            self.tokens = self.n_ctx
            return False
        self.tokens += step
        self.turns_done += 1
        return True

    def turns_until_wall(self) -> int:
        """Truth: requests from now until (and including) the one that hits the wall."""
        tokens, n = self.tokens, 0
        while True:
            tokens += self.growth[(self.turn_index + n) % len(self.growth)]
            n += 1
            if tokens >= self.n_ctx:
                return n


def run_turns(tracker, agent, turns, t0=0.0, period=20.0, see_busy=True):
    t = t0
    for _ in range(turns):
        agent.next_turn()
        if see_busy:
            t += period / 2
            tracker.observe(KEY, [agent.busy()], t)
        t += period / 2
        tracker.observe(KEY, [agent.idle()], t)
    return t


@pytest.mark.parametrize("growth", [[120], [110, 130, 120], [90, 150, 120, 100, 140]])
def test_turns_left_within_one_turn_after_three_turns(growth):
    agent = SimulatedAgent(n_ctx=4096, start=300, growth=growth)
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 0.0)
    run_turns(tracker, agent, 3)
    forecast = tracker.slot_forecast(KEY, agent.idle())
    assert forecast.turns_seen == 3
    truth = agent.turns_until_wall()
    assert forecast.turns_left is not None
    assert abs(forecast.turns_left - truth) <= 1, (forecast, truth)


def test_forecast_stays_right_until_the_wall():
    agent = SimulatedAgent(n_ctx=2048, start=200, growth=[100, 140])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 0.0)
    t = run_turns(tracker, agent, 3)
    while True:
        forecast = tracker.slot_forecast(KEY, agent.idle())
        assert abs(forecast.turns_left - agent.turns_until_wall()) <= 1
        if not agent.next_turn():
            break
        t += 10
        tracker.observe(KEY, [agent.busy()], t)
        t += 10
        tracker.observe(KEY, [agent.idle()], t)
    full = tracker.slot_forecast(KEY, agent.idle())
    assert full.turns_left == 0
    assert full.seconds_left == 0.0


def test_turn_ends_missed_between_polls_are_averaged_not_doubled():
    # The agent sends its next request before we poll again: we see busy -> busy with a
    # new task id, and the end value of that turn is never visible.
    agent = SimulatedAgent(n_ctx=8192, start=500, growth=[100])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 0.0)
    t = 0.0
    for _ in range(3):
        t += 5
        tracker.observe(KEY, [agent.busy()], t)  # first request running
        agent.next_turn()
        t += 5
        tracker.observe(KEY, [agent.busy()], t)  # the next one already running
        agent.next_turn()
        t += 5
        tracker.observe(KEY, [agent.idle()], t)
    forecast = tracker.slot_forecast(KEY, agent.idle())
    assert forecast.tokens_per_turn == pytest.approx(100)
    assert forecast.turns_seen >= 3


def test_whole_request_between_two_polls_counts_as_a_turn():
    agent = SimulatedAgent(n_ctx=8192, start=500, growth=[256])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 0.0)
    run_turns(tracker, agent, 4, see_busy=False)
    forecast = tracker.slot_forecast(KEY, agent.idle())
    assert forecast.turns_seen == 4
    assert forecast.tokens_per_turn == pytest.approx(256)


def test_growth_per_minute_and_seconds_left():
    agent = SimulatedAgent(n_ctx=10_000, start=1000, growth=[500])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 100.0)
    run_turns(tracker, agent, 4, t0=100.0, period=30.0)  # 500 cells every 30 s
    forecast = tracker.slot_forecast(KEY, agent.idle())
    assert forecast.tokens_per_minute == pytest.approx(1000)
    remaining = 10_000 - agent.tokens
    assert forecast.seconds_left == pytest.approx(remaining / 1000 * 60)


def test_new_conversation_restarts_the_series():
    agent = SimulatedAgent(n_ctx=8192, start=300, growth=[400])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 0.0)
    t = run_turns(tracker, agent, 5)
    assert tracker.slot_forecast(KEY, agent.idle()).turns_seen == 5
    # The agent starts over: a short prompt replaces the long history.
    agent.tokens = 150
    agent.growth = [50]
    agent.task += 5
    t += 10
    tracker.observe(KEY, [agent.idle()], t)
    fresh = tracker.slot_forecast(KEY, agent.idle())
    assert fresh.turns_seen == 0
    assert fresh.turns_left is None
    assert fresh.confidence == 0.0
    run_turns(tracker, agent, 3, t0=t)
    again = tracker.slot_forecast(KEY, agent.idle())
    assert again.tokens_per_turn == pytest.approx(50)


def test_idle_slot_cleared_to_the_prompt_cache_keeps_its_history():
    # Unified KV with --cache-idle-slots: an idle slot reads 0 cells, same task id.
    agent = SimulatedAgent(n_ctx=8192, start=300, growth=[200])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 0.0)
    t = run_turns(tracker, agent, 3)
    cleared = SlotState(0, 8192, 0, False, agent.task)
    tracker.observe(KEY, [cleared], t + 1)
    assert tracker.slot_forecast(KEY, agent.idle()).turns_seen == 3
    run_turns(tracker, agent, 1, t0=t + 1)
    forecast = tracker.slot_forecast(KEY, agent.idle())
    assert forecast.turns_seen == 4
    assert forecast.tokens_per_turn == pytest.approx(200)


def test_erratic_growth_lowers_confidence():
    steady_agent = SimulatedAgent(n_ctx=50_000, start=300, growth=[200])
    erratic_agent = SimulatedAgent(n_ctx=50_000, start=300, growth=[20, 600, 50, 450, 10])
    steady, erratic = ContextTracker(), ContextTracker()
    for tracker, agent in ((steady, steady_agent), (erratic, erratic_agent)):
        tracker.observe(KEY, [agent.idle()], 0.0)
        run_turns(tracker, agent, 5)
    high = steady.slot_forecast(KEY, steady_agent.idle()).confidence
    low = erratic.slot_forecast(KEY, erratic_agent.idle()).confidence
    assert high > 0.9
    assert low < 0.5 * high


def test_confidence_grows_with_turns_seen():
    agent = SimulatedAgent(n_ctx=50_000, start=300, growth=[200])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 0.0)
    seen = []
    t = 0.0
    for _ in range(5):
        t = run_turns(tracker, agent, 1, t0=t)
        seen.append(tracker.slot_forecast(KEY, agent.idle()).confidence)
    assert seen == sorted(seen)
    assert seen[0] < seen[-1]


def test_slot_seen_first_while_busy_has_no_forecast_yet():
    tracker = ContextTracker()
    busy = SlotState(0, 4096, 900, True, 5)
    tracker.observe(KEY, [busy], 0.0)
    forecast = tracker.slot_forecast(KEY, busy)
    assert forecast.turns_left is None
    assert forecast.seconds_left is None
    assert forecast.tokens_per_turn is None


def test_unknown_slot_and_unknown_tokens_give_an_empty_forecast():
    tracker = ContextTracker()
    unknown = SlotState(3, 4096, None, False)
    tracker.observe(KEY, [unknown], 0.0)
    forecast = tracker.slot_forecast(KEY, unknown)
    assert forecast.turns_left is None and forecast.confidence == 0.0
    assert tracker.slot_forecast("pid:1", SlotState(0, 512, 10, False)).turns_left is None


def test_unified_pool_forecast_sums_the_slots():
    a = SimulatedAgent(n_ctx=8192, start=400, growth=[200], slot_id=0)
    b = SimulatedAgent(n_ctx=8192, start=600, growth=[100], slot_id=1)
    tracker = ContextTracker()
    tracker.observe(KEY, [a.idle(), b.idle()], 0.0, unified=True)
    t = 0.0
    for _ in range(4):  # each poll sees both agents finish one turn
        a.next_turn()
        b.next_turn()
        t += 10
        tracker.observe(KEY, [a.busy(), b.busy()], t, unified=True)
        t += 10
        tracker.observe(KEY, [a.idle(), b.idle()], t, unified=True)
    pool = tracker.kv_pool_forecast(KEY, 8192)
    assert tracker.kv_pool_tokens(KEY) == a.tokens + b.tokens
    assert pool.tokens_per_turn == pytest.approx(150)  # 300 cells per 2 requests
    free = 8192 - (a.tokens + b.tokens)
    assert pool.turns_left == -(-free // 150)
    # The pool fills long before either slot's own limit.
    assert pool.turns_left < tracker.slot_forecast(KEY, b.idle()).turns_left
    assert tracker.kv_pool_forecast("pid:other", 8192) is None


def test_memory_is_bounded_and_unseen_servers_are_forgotten():
    agent = SimulatedAgent(n_ctx=10**9, start=100, growth=[10])
    tracker = ContextTracker(forget_after_s=600)
    tracker.observe(KEY, [agent.idle()], 0.0)
    t = run_turns(tracker, agent, MAX_TURNS + 40, period=2.0)
    assert tracker.slot_forecast(KEY, agent.idle()).turns_seen == MAX_TURNS
    tracker.observe("pid:other", [SlotState(0, 512, 5, False, 1)], t + 601)
    assert len(tracker) == 1
    assert tracker.slot_forecast(KEY, agent.idle()).turns_seen == 0


def test_forecast_fill_edge_cases():
    assert forecast_fill(1000, 1000, [100], [(0, 900), (60, 1000)]).turns_left == 0
    assert forecast_fill(1000, 1200, [100], []).turns_left == 0
    zero_growth = forecast_fill(1000, 500, [0, 0, 0], [(0, 500), (60, 500)])
    assert zero_growth.turns_left is None and zero_growth.seconds_left is None
    assert forecast_fill(0, 10, [5], []).turns_left is None


def test_refused_request_that_adds_nothing_is_not_a_turn():
    # A prompt over the limit gets HTTP 400: the task id moves, the cells do not.
    agent = SimulatedAgent(n_ctx=1024, start=300, growth=[160])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 0.0)
    t = run_turns(tracker, agent, 4)
    before = tracker.slot_forecast(KEY, agent.idle())
    agent.task += 5
    tracker.observe(KEY, [agent.idle()], t + 5)
    after = tracker.slot_forecast(KEY, agent.idle())
    assert after.turns_seen == before.turns_seen
    assert after.tokens_per_turn == pytest.approx(160)
    assert after.turns_left == 1


def test_refused_requests_are_counted_per_server():
    agent = SimulatedAgent(n_ctx=1024, start=300, growth=[160])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 0.0)
    t = run_turns(tracker, agent, 3)
    assert tracker.refused(KEY).count == 0
    for k in range(2):  # two prompts over the limit: the task id moves, the cells do not
        agent.task += 3
        tracker.observe(KEY, [agent.idle()], t + 5 + k)
    refused = tracker.refused(KEY)
    assert (refused.count, refused.last_timestamp) == (2, t + 6)
    assert tracker.refused("pid:1").count == 0


def test_an_idle_slot_keeps_its_turns_left_but_its_clock_stops():
    agent = SimulatedAgent(n_ctx=10_000, start=1000, growth=[500])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 100.0)
    t = run_turns(tracker, agent, 4, t0=100.0, period=10.0)
    active = tracker.slot_forecast(KEY, agent.idle())
    assert active.seconds_left is not None and active.turns_left is not None
    tracker.observe(KEY, [agent.idle()], t + 30)  # a pause within the horizon
    assert tracker.slot_forecast(KEY, agent.idle()).seconds_left is not None
    tracker.observe(KEY, [agent.idle()], t + 84)  # the agent stopped 84 s ago
    idle = tracker.slot_forecast(KEY, agent.idle())
    assert idle.seconds_left is None
    assert idle.turns_left == active.turns_left
    run_turns(tracker, agent, 1, t0=t + 90, period=10.0)  # it works again: the clock runs
    assert tracker.slot_forecast(KEY, agent.idle()).seconds_left is not None


def test_idle_horizon_stretches_for_an_agent_with_long_gaps():
    agent = SimulatedAgent(n_ctx=10_000, start=1000, growth=[500])
    tracker = ContextTracker()
    tracker.observe(KEY, [agent.idle()], 0.0)
    t = run_turns(tracker, agent, 4, period=100.0)  # one request every 100 s
    tracker.observe(KEY, [agent.idle()], t + 150)
    assert tracker.slot_forecast(KEY, agent.idle()).seconds_left is not None
    tracker.observe(KEY, [agent.idle()], t + 301)
    assert tracker.slot_forecast(KEY, agent.idle()).seconds_left is None
