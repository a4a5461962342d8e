"""Forecasts: when each slot (or a shared KV pool), and each memory pool, hits the wall.

Pure and clock-free: every sample carries the snapshot's monotonic timestamp. A
:class:`ContextTracker` follows the KV cells each slot holds, poll after poll, detects the
end of each request (a "turn" of an agent), and turns the growth per turn and per minute
into :class:`~kvwall.budget.report.Forecast` objects. A :class:`PoolTracker` follows each
device's free bytes over time and fits a trend to say when free memory runs out
(:class:`~kvwall.budget.report.PoolForecast`).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kvwall.budget.report import Forecast, PoolForecast
from kvwall.monitors.snapshot import DeviceMemory, SlotState

# Per-turn growth figures kept per slot; the forecast uses the most recent ones.
MAX_TURNS = 64
# Figures the growth rate is computed from (the most recent turns of one conversation).
RATE_WINDOW = 8
# A slot or server not seen for this long (seconds) is forgotten.
FORGET_AFTER_S = 1800.0
# A drop below this fraction of the previous fill is a new conversation, not noise.
RESET_FRACTION = 0.9
# A slot idle for longer than this (seconds), and longer than IDLE_TURN_GAPS times its
# usual gap between requests, is idle: its turns left stay, its time left is unknown
# (a clock that runs while nobody sends requests would be a guess that slides).
IDLE_AFTER_S = 60.0
IDLE_TURN_GAPS = 3.0


@dataclass(frozen=True)
class _Growth:
    """How fast a slot fills: per finished request and per minute (None: not seen yet)."""

    recent: tuple[float, ...]  # the last RATE_WINDOW per-turn figures
    tokens_per_turn: float | None
    tokens_per_minute: float | None


def _growth(per_turn: Sequence[float], turn_points: Sequence[tuple[float, int]]) -> _Growth:
    recent = tuple(float(d) for d in per_turn[-RATE_WINDOW:])
    tokens_per_turn = None
    if recent:
        # The mean is what the wall sees; with enough figures the extremes are trimmed so
        # one odd request (a pasted file, an empty reply) does not swing the forecast.
        kept = sorted(recent)[1:-1] if len(recent) >= 5 else list(recent)
        tokens_per_turn = statistics.fmean(kept)
    tokens_per_minute = None
    points = list(turn_points[-(RATE_WINDOW + 1):])
    if len(points) >= 2:
        (t0, v0), (t1, v1) = points[0], points[-1]
        if t1 > t0 and v1 >= v0:
            tokens_per_minute = (v1 - v0) / (t1 - t0) * 60.0
    return _Growth(recent, tokens_per_turn, tokens_per_minute)


def _time_left(capacity: int, tokens: int | None, growth: _Growth
               ) -> tuple[int | None, float | None]:
    """(turns left, seconds left) until ``tokens`` reaches ``capacity`` at ``growth``."""
    if tokens is None or capacity <= 0:
        return None, None
    remaining = capacity - tokens
    if remaining <= 0:
        return 0, 0.0
    turns_left = None
    seconds_left = None
    if growth.tokens_per_turn is not None and growth.tokens_per_turn > 0:
        turns_left = math.ceil(remaining / growth.tokens_per_turn)
    if growth.tokens_per_minute is not None and growth.tokens_per_minute > 0:
        seconds_left = remaining / growth.tokens_per_minute * 60.0
    return turns_left, seconds_left


def _fill_confidence(growth: _Growth, turns_seen: int) -> float:
    """Grows with the turns seen (full from 4 on), drops with the growth's variation."""
    recent = growth.recent
    if not recent or growth.tokens_per_turn is None or growth.tokens_per_turn <= 0:
        return 0.0
    amount = min(1.0, turns_seen / 4.0)
    if len(recent) >= 2:
        mean = statistics.fmean(recent)
        cv = statistics.pstdev(recent) / mean if mean > 0 else 1.0
    else:
        cv = 0.5  # one figure says nothing about its spread
    return round(max(0.0, amount * (1.0 - min(1.0, cv))), 3)


def forecast_fill(
    capacity: int,
    tokens: int | None,
    per_turn: Sequence[float],
    turn_points: Sequence[tuple[float, int]],
    *,
    idle_s: float = 0.0,
) -> Forecast:
    """Forecast when ``tokens`` reaches ``capacity``.

    Args:
        capacity: KV cells available (the slot's ``n_ctx``, or the shared KV pool's cells).
        tokens: cells held now; None when unknown.
        per_turn: cells added by each finished request of the current conversation,
            oldest first (the last :data:`RATE_WINDOW` are used).
        turn_points: ``(timestamp_s, cells)`` after each finished request, oldest first,
            for the growth per minute.
        idle_s: seconds since the slot last worked (a request running or ending); see
            :func:`is_idle`.

    Returns:
        The forecast. ``turns_left`` is the number of requests until the slot is full
        (the last of them hits the wall), 0 when already full, None when the growth is
        unknown or zero. ``confidence`` grows with the turns seen (full from 4 on) and
        drops with the coefficient of variation of the growth. An idle slot keeps its
        ``turns_left``; its ``seconds_left`` is None (its clock runs only while the agent
        works).
    """
    growth = _growth(per_turn, turn_points)
    turns_left, seconds_left = _time_left(capacity, tokens, growth)
    if seconds_left and is_idle(idle_s, turn_points):
        seconds_left = None
    return Forecast(
        tokens_per_turn=growth.tokens_per_turn,
        tokens_per_minute=growth.tokens_per_minute,
        turns_left=turns_left,
        seconds_left=seconds_left,
        confidence=_fill_confidence(growth, len(per_turn)),
        turns_seen=len(per_turn),
    )


def is_idle(idle_s: float, turn_points: Sequence[tuple[float, int]]) -> bool:
    """Whether a slot that last worked ``idle_s`` seconds ago counts as idle.

    Idle from :data:`IDLE_AFTER_S`, or later for an agent whose requests are further
    apart: :data:`IDLE_TURN_GAPS` times the mean gap between its finished requests.
    """
    horizon = IDLE_AFTER_S
    if len(turn_points) >= 2:
        gap = (turn_points[-1][0] - turn_points[0][0]) / (len(turn_points) - 1)
        horizon = max(horizon, IDLE_TURN_GAPS * gap)
    return idle_s > horizon


@dataclass(frozen=True)
class RefusedCount:
    """Requests a slot's server refused (prompt over the slot's context), as counted.

    Attributes:
        count: refused requests seen since kvwall started following the server.
        last_timestamp: the monotonic time of the poll that saw the latest one.
    """

    count: int = 0
    last_timestamp: float | None = None


@dataclass
class _Series:
    """Mutable history of one slot (or shared KV pool); private to the tracker."""

    reset_on_drop: bool
    last_seen: float = 0.0
    last_active: float = 0.0  # a request running or ending was last seen then
    refused: int = 0  # requests that ended without adding a cell (see turn_ended)
    last_refused: float | None = None
    id_task: int | None = None
    is_processing: bool = False
    tokens: int | None = None
    # Cells after the last finished request we saw a value for (None: no baseline yet).
    base: int | None = None
    # Requests that finished since ``base`` without a readable value (missed ends).
    pending: int = 0
    per_turn: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_TURNS))
    turn_points: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=RATE_WINDOW + 1))

    def restart(self, value: int, timestamp: float) -> None:
        """A new conversation: forget the growth figures, keep ``value`` as baseline."""
        self.per_turn.clear()
        self.turn_points.clear()
        self.base = value
        self.pending = 0
        self.turn_points.append((timestamp, value))

    def turn_ended(self, value: int | None, timestamp: float, turns: int = 1) -> None:
        """``turns`` requests finished; ``value`` cells held after the last (None: unknown)."""
        if value is None:
            self.pending += turns
            return
        if self.base is None or self.base <= 0:
            self.restart(value, timestamp)
            return
        if value == self.base and self.reset_on_drop:
            # Nothing was added: a refused request (prompt over the limit: llama-server
            # b11434 gives the slot the task id and leaves its cells as they were, see
            # docs/llamacpp-notes.md) or a cancelled one. Not a turn of the conversation.
            self.pending = 0
            self.refused += turns
            self.last_refused = timestamp
            return
        if value < self.base:
            if self.reset_on_drop and value < self.base * RESET_FRACTION:
                self.restart(value, timestamp)
                return
            # The pool shrinks when a slot is cleared: a new baseline, same workload.
            self.base = value
            self.pending = 0
            self.turn_points.clear()
            self.turn_points.append((timestamp, value))
            return
        n = self.pending + turns
        step = (value - self.base) / n
        for _ in range(min(n, MAX_TURNS)):
            self.per_turn.append(step)
        self.base = value
        self.pending = 0
        self.turn_points.append((timestamp, value))


def _slot_turn_end(prev: _Series, slot: SlotState) -> tuple[bool, bool]:
    """(a request finished, its end value is readable now) between two polls of a slot."""
    task_changed = slot.id_task is not None and slot.id_task != prev.id_task
    if prev.is_processing and not slot.is_processing:
        return True, True
    if not prev.is_processing and not slot.is_processing and task_changed:
        return True, True  # a whole request ran between two polls
    if prev.is_processing and slot.is_processing and task_changed:
        return True, False  # one ended, the next started: its end value is gone
    return False, False


class ContextTracker:
    """Follows every slot's KV fill across polls and forecasts when it is full.

    Keyed by (server key, slot id); a unified server's shared KV pool is tracked as well.
    Memory is bounded: at most :data:`MAX_TURNS` figures per slot, and slots or servers
    not seen for ``forget_after_s`` seconds are dropped.

    Args:
        forget_after_s: seconds after which an unseen slot is forgotten.
    """

    def __init__(self, *, forget_after_s: float = FORGET_AFTER_S) -> None:
        self._forget_after_s = forget_after_s
        self._slots: dict[tuple[str, int], _Series] = {}
        self._kv_pools: dict[str, _Series] = {}

    def observe(
        self,
        server_key: str,
        slots: Iterable[SlotState],
        timestamp: float,
        *,
        unified: bool = False,
    ) -> None:
        """Feed one poll of one server's ``/slots``.

        Args:
            server_key: stable identity of the server (``pid:1234`` or its URL).
            slots: the slots as parsed from ``GET /slots``.
            timestamp: the poll's monotonic time (seconds).
            unified: the server has one shared KV pool; its fill (the sum of the slots'
                cells) is tracked too.
        """
        slots = list(slots)
        ended_now = sum(self._observe_slot(server_key, slot, timestamp) for slot in slots)
        if unified and slots:
            self._observe_kv_pool(server_key, slots, timestamp, ended_now)
        self._forget(timestamp)

    def _observe_slot(self, server_key: str, slot: SlotState, timestamp: float) -> bool:
        """Feed one slot; True when a request of it ended since the last poll."""
        key = (server_key, slot.id)
        series = self._slots.get(key)
        if series is None:
            series = _Series(reset_on_drop=True, last_seen=timestamp)
            self._slots[key] = series
            if not slot.is_processing and slot.id_task is not None and slot.n_tokens:
                series.restart(slot.n_tokens, timestamp)
            series.id_task = slot.id_task
            series.is_processing = slot.is_processing
            series.tokens = slot.n_tokens
            series.last_active = timestamp if slot.is_processing else -math.inf
            return False
        # A slot cleared without a new task (unified KV parks idle slots in the RAM
        # prompt cache and clears them) is not a turn: its conversation goes on.
        ended, readable = _slot_turn_end(series, slot)
        if ended:
            value = slot.n_tokens if readable and slot.n_tokens else None
            series.turn_ended(value, timestamp)
        if slot.is_processing or ended:
            series.last_active = timestamp
        series.id_task = slot.id_task
        series.is_processing = slot.is_processing
        series.tokens = slot.n_tokens
        series.last_seen = timestamp
        return ended

    def _observe_kv_pool(self, server_key: str, slots: Sequence[SlotState], timestamp: float,
                         ended_now: int) -> None:
        """Feed a unified server's shared KV pool: the sum of its slots' cells."""
        kv_pool = self._kv_pools.get(server_key)
        used = sum(s.n_tokens or 0 for s in slots)
        busy = any(s.is_processing for s in slots)
        if kv_pool is None:
            kv_pool = _Series(reset_on_drop=False, last_active=-math.inf)
            self._kv_pools[server_key] = kv_pool
            if not busy and used:
                kv_pool.restart(used, timestamp)
        elif ended_now and not busy:
            kv_pool.turn_ended(used, timestamp, ended_now)
        elif ended_now:
            kv_pool.turn_ended(None, timestamp, ended_now)
        if busy or ended_now:
            kv_pool.last_active = timestamp
        kv_pool.tokens = used
        kv_pool.last_seen = timestamp

    def slot_forecast(self, server_key: str, slot: SlotState) -> Forecast:
        """The forecast for one slot, from what was observed so far.

        Args:
            server_key: as given to :meth:`observe`.
            slot: the slot's latest state (its ``n_ctx`` is the capacity).
        """
        series = self._slots.get((server_key, slot.id))
        if series is None:
            return forecast_fill(slot.n_ctx, slot.n_tokens, (), ())
        return forecast_fill(
            slot.n_ctx, slot.n_tokens, tuple(series.per_turn), tuple(series.turn_points),
            idle_s=series.last_seen - series.last_active,
        )

    def refused(self, server_key: str) -> RefusedCount:
        """Requests refused by one server (summed over its slots) since it was followed."""
        mine = [s for k, s in self._slots.items() if k[0] == server_key]
        times = [s.last_refused for s in mine if s.last_refused is not None]
        return RefusedCount(sum(s.refused for s in mine), max(times) if times else None)

    def kv_pool_forecast(self, server_key: str, n_cells: int) -> Forecast | None:
        """The forecast for a unified server's shared KV pool of ``n_cells`` cells.

        Returns:
            None when the server was never observed as unified.
        """
        kv_pool = self._kv_pools.get(server_key)
        if kv_pool is None:
            return None
        return forecast_fill(n_cells, kv_pool.tokens, tuple(kv_pool.per_turn),
                             tuple(kv_pool.turn_points),
                             idle_s=kv_pool.last_seen - kv_pool.last_active)

    def kv_pool_tokens(self, server_key: str) -> int | None:
        """Cells the shared KV pool holds now (sum over its slots), None if unknown."""
        kv_pool = self._kv_pools.get(server_key)
        return None if kv_pool is None else kv_pool.tokens

    def forget(self, server_key: str) -> None:
        """Drop everything known about one server."""
        for key in [k for k in self._slots if k[0] == server_key]:
            del self._slots[key]
        self._kv_pools.pop(server_key, None)

    def clear(self) -> None:
        """Drop everything known about every server."""
        self._slots.clear()
        self._kv_pools.clear()

    def __len__(self) -> int:
        """Number of slots tracked (shared KV pools excluded)."""
        return len(self._slots)

    def _forget(self, now: float) -> None:
        limit = now - self._forget_after_s
        for key in [k for k, s in self._slots.items() if s.last_seen < limit]:
            del self._slots[key]
        for server in [k for k, s in self._kv_pools.items() if s.last_seen < limit]:
            del self._kv_pools[server]


# --------------------------------------------------------------------------- memory pools

# History kept per pool (seconds), downsampled to one averaged point per bucket.
POOL_HISTORY_S = 1800.0
POOL_BUCKET_S = 10.0
# The trend is fitted over the most recent part of the history (seconds).
POOL_FIT_WINDOW_S = 300.0
# Below this span (seconds) or this many points there is no trend yet.
POOL_MIN_SPAN_S = 30.0
POOL_MIN_POINTS = 4
# The span (seconds) from which the span no longer limits the confidence.
POOL_FULL_SPAN_S = 180.0
# Growth below this (bytes per minute) is flat: page-cache and allocator jitter.
POOL_MIN_GROWTH_PER_MIN = 1024.0**2


def _least_squares(points: Sequence[tuple[float, float]]) -> tuple[float, float, float, float]:
    """(slope, intercept, r squared, slope standard error) of ``y = a*t + b``.

    Raises:
        ValueError: fewer than two points or all at the same time.
    """
    n = len(points)
    if n < 2:
        raise ValueError("need two points")
    mt = math.fsum(t for t, _ in points) / n
    my = math.fsum(y for _, y in points) / n
    stt = math.fsum((t - mt) ** 2 for t, _ in points)
    if stt <= 0:
        raise ValueError("all points at the same time")
    sty = math.fsum((t - mt) * (y - my) for t, y in points)
    syy = math.fsum((y - my) ** 2 for _, y in points)
    slope = sty / stt
    intercept = my - slope * mt
    sse = max(0.0, syy - slope * sty)
    r2 = 1.0 - sse / syy if syy > 0 else 0.0
    stderr = math.sqrt(sse / (n - 2) / stt) if n > 2 else 0.0
    return slope, intercept, max(0.0, min(1.0, r2)), stderr


def forecast_pool(
    device_id: str,
    points: Sequence[tuple[float, float]],
    free_bytes: int | None,
    *,
    floor_bytes: int = 0,
    window_s: float = POOL_FIT_WINDOW_S,
) -> PoolForecast:
    """Forecast when a pool's free memory reaches ``floor_bytes``.

    Least squares of free bytes over time on the points of the last ``window_s`` seconds.
    A flat trend (less than :data:`POOL_MIN_GROWTH_PER_MIN`), a shrinking one, or one not
    distinguishable from noise (slope under two standard errors) gives no ``seconds_left``.
    The time left is counted from the fitted level at the latest point, so one noisy
    reading does not move it.

    Args:
        device_id: the pool's ``DeviceMemory.id``.
        points: ``(timestamp_s, free_bytes)`` oldest first (downsampled or raw).
        free_bytes: free memory now (reported as is; the time left counts down from the
            fitted level).
        floor_bytes: free memory that counts as run out.
        window_s: seconds of the most recent history fitted.

    Returns:
        The forecast. ``confidence`` is R squared times the span factor (full from
        :data:`POOL_FULL_SPAN_S`) times the steadiness (the smaller over the larger of the
        growth rates of the two halves of the window: 1 for steady growth, near 0 for a
        single jump).
    """
    if free_bytes is None and points:
        free_bytes = int(points[-1][1])
    if not points:
        return PoolForecast(device_id, free_bytes, floor_bytes=floor_bytes)
    end = points[-1][0]
    recent = [(t, float(y)) for t, y in points if t >= end - window_s]
    span = recent[-1][0] - recent[0][0] if recent else 0.0
    trend = None
    if len(recent) >= POOL_MIN_POINTS and span >= POOL_MIN_SPAN_S:
        trend = _pool_trend(recent, span, floor_bytes)
    if trend is None:
        return PoolForecast(device_id, free_bytes, span_s=span, floor_bytes=floor_bytes)
    return PoolForecast(device_id, free_bytes, bytes_per_minute=trend.bytes_per_minute,
                        seconds_left=trend.seconds_left, confidence=trend.confidence,
                        span_s=span, floor_bytes=floor_bytes)


@dataclass(frozen=True)
class _PoolTrend:
    """The fitted trend of a memory pool's free bytes (see :func:`forecast_pool`)."""

    bytes_per_minute: float
    seconds_left: float | None
    confidence: float


def _pool_trend(recent: Sequence[tuple[float, float]], span: float,
                floor_bytes: int) -> _PoolTrend | None:
    """The trend of ``recent`` points (None when they cannot be fitted)."""
    try:
        slope, intercept, r2, stderr = _least_squares(recent)
    except ValueError:
        return None
    growth_per_min = -slope * 60.0  # used memory grows as free memory shrinks
    growing = growth_per_min >= POOL_MIN_GROWTH_PER_MIN and -slope > 2.0 * stderr
    if not growing:
        return _PoolTrend(growth_per_min, None, 0.0)
    # Counted from the fitted level now, not the last sample: one noisy reading
    # does not move the time left.
    remaining = intercept + slope * recent[-1][0] - floor_bytes
    seconds_left = 0.0 if remaining <= 0 else remaining / -slope
    confidence = round(r2 * min(1.0, span / POOL_FULL_SPAN_S) * _steadiness(recent), 3)
    return _PoolTrend(growth_per_min, seconds_left, confidence)


def _steadiness(recent: Sequence[tuple[float, float]]) -> float:
    """The smaller over the larger growth rate of the window's two halves (0..1)."""
    half = len(recent) // 2
    try:
        first = -_least_squares(recent[: half + 1])[0]
        second = -_least_squares(recent[half:])[0]
    except ValueError:
        return 0.0
    return min(first, second) / max(first, second) if min(first, second) > 0 else 0.0


@dataclass
class _PoolSeries:
    """Downsampled free-bytes history of one pool; private to :class:`PoolTracker`."""

    points: deque[tuple[float, float]]  # (mean timestamp, mean free bytes) per finished bucket
    bucket: int | None = None
    sum_t: float = 0.0
    sum_free: float = 0.0
    count: int = 0
    last_t: float = 0.0
    free_bytes: int | None = None

    def current(self) -> list[tuple[float, float]]:
        """Finished buckets plus the one being filled."""
        pts = list(self.points)
        if self.count:
            pts.append((self.sum_t / self.count, self.sum_free / self.count))
        return pts


class PoolTracker:
    """Follows each memory pool's free bytes across polls and forecasts when it runs out.

    Memory is bounded: one averaged point per ``bucket_s`` seconds, ``history_s`` seconds
    kept per pool (180 points with the defaults), pools not seen for ``history_s`` dropped.

    Args:
        history_s: seconds of history kept.
        bucket_s: seconds per downsampled point.
        window_s: seconds of the most recent history the trend is fitted over.
        floor_bytes: free bytes counted as "run out", per device id (``"*"``: every pool
            without its own entry); 0 when not given.

    Raises:
        ValueError: a non-positive ``bucket_s`` or a ``history_s`` shorter than ``window_s``.
    """

    def __init__(self, *, history_s: float = POOL_HISTORY_S, bucket_s: float = POOL_BUCKET_S,
                 window_s: float = POOL_FIT_WINDOW_S,
                 floor_bytes: dict[str, int] | None = None) -> None:
        if bucket_s <= 0:
            raise ValueError(f"bucket_s must be positive, got {bucket_s}")
        if history_s < window_s:
            raise ValueError(f"history_s ({history_s}) must cover window_s ({window_s})")
        self._history_s = history_s
        self._bucket_s = bucket_s
        self._window_s = window_s
        self._floors = dict(floor_bytes or {})
        self._maxlen = math.ceil(history_s / bucket_s) + 1
        self._series: dict[str, _PoolSeries] = {}

    def observe(self, devices: Iterable[DeviceMemory], timestamp: float) -> None:
        """Feed one poll of the memory pools.

        Args:
            devices: the pools as measured; a pool whose free bytes are unknown (neither
                ``free_bytes`` nor ``total_bytes - used_bytes``) is skipped.
            timestamp: the poll's monotonic time (seconds). A time earlier than the last
                one seen for a pool restarts that pool's history.
        """
        for d in devices:
            free = d.free_bytes
            if free is None and d.total_bytes is not None and d.used_bytes is not None:
                free = d.total_bytes - d.used_bytes
            if free is None:
                continue
            series = self._series.get(d.id)
            if series is None or timestamp < series.last_t:
                series = _PoolSeries(deque(maxlen=self._maxlen))
                self._series[d.id] = series
            bucket = int(timestamp // self._bucket_s)
            if series.bucket is not None and bucket != series.bucket and series.count:
                series.points.append((series.sum_t / series.count,
                                      series.sum_free / series.count))
                series.sum_t = series.sum_free = 0.0
                series.count = 0
            series.bucket = bucket
            series.sum_t += timestamp
            series.sum_free += free
            series.count += 1
            series.last_t = timestamp
            series.free_bytes = int(free)
            while series.points and series.points[0][0] < timestamp - self._history_s:
                series.points.popleft()
        limit = timestamp - self._history_s
        for key in [k for k, s in self._series.items() if s.last_t < limit]:
            del self._series[key]

    def floor_of(self, device_id: str) -> int:
        """Free bytes counted as "run out" on ``device_id``."""
        return int(self._floors.get(device_id, self._floors.get("*", 0)))

    def forecast(self, device_id: str) -> PoolForecast | None:
        """The forecast for one pool, None when it was never observed with a free size."""
        series = self._series.get(device_id)
        if series is None:
            return None
        return forecast_pool(device_id, series.current(), series.free_bytes,
                             floor_bytes=self.floor_of(device_id), window_s=self._window_s)

    def forecasts(self, devices: Iterable[DeviceMemory]) -> tuple[PoolForecast, ...]:
        """Forecasts for ``devices`` (in their order), skipping pools never observed."""
        out = []
        for d in devices:
            f = self.forecast(d.id)
            if f is not None:
                out.append(f)
        return tuple(out)

    def points(self, device_id: str) -> int:
        """Downsampled points held for one pool (the bounded-memory figure)."""
        series = self._series.get(device_id)
        return 0 if series is None else len(series.current())

    def forget(self, device_id: str | None = None) -> None:
        """Drop one pool's history (None: every pool's, e.g. after a sleep/resume)."""
        if device_id is None:
            self._series.clear()
        else:
            self._series.pop(device_id, None)

    def __len__(self) -> int:
        """Number of pools tracked."""
        return len(self._series)
