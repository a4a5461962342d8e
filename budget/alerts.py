"""Alert rules as data: thresholds with hysteresis, turned into notifications once per crossing.

Pure Python with an injected clock, so the tray, the CLI and the tests share one rule set;
``kvwall.app.desktop.notifications`` only delivers what :class:`NotificationRules` returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from kvwall.budget.events import GRAB_BYTES, PROCESS_GRAB
from kvwall.budget.report import (
    AdviceSolves,
    MemoryEvent,
    PoolForecast,
    ServerReport,
    SlotReport,
    StatusReport,
)
from kvwall.budget.units import format_bytes, format_duration
from kvwall.monitors.snapshot import DeviceMemory, Health

Level = Literal["ok", "warning", "critical"]
OK: Level = "ok"
WARNING: Level = "warning"
CRITICAL: Level = "critical"
_RANK: dict[Level, int] = {OK: 0, WARNING: 1, CRITICAL: 2}

# Every kind of notification (settings' NOTIFY_KINDS names the same set for people).
ALL_KINDS: frozenset[str] = frozenset({
    "free_memory", "pool_forecast", "slot_forecast", "slot_full", "server_unreachable",
    "process_grab", "refused_requests"})

UNREACHABLE_HEALTH: frozenset[Health] = frozenset({"unreachable", "not responding"})


@dataclass(frozen=True)
class AlertRule:
    """One threshold rule.

    Attributes:
        kind: the notification kind (``kvwall.app.desktop.settings.NOTIFY_KINDS``).
        metric: what the value is, in the user's words (``free %``, ``turns left``).
        warn, critical: the levels; crossing one raises the alert level.
        hysteresis: how far back past a level the value must go before it re-arms.
        below: True when low values are bad (free memory, turns left).
    """

    kind: str
    metric: str
    warn: float
    critical: float
    hysteresis: float
    below: bool = True


def _raw_level(rule: AlertRule, value: float, shift: float) -> Level:
    if rule.below:
        if value <= rule.critical + shift:
            return CRITICAL
        if value <= rule.warn + shift:
            return WARNING
    else:
        if value >= rule.critical - shift:
            return CRITICAL
        if value >= rule.warn - shift:
            return WARNING
    return OK


def level_for(rule: AlertRule, value: float | None, previous: Level = OK) -> Level:
    """The alert level of ``value``, given the level it had before.

    A level is entered at its threshold and left only once the value is ``hysteresis``
    beyond it, so a value hovering at a threshold does not flap. A missing value (None)
    keeps the previous level: unknown is not a recovery. Never raises.
    """
    if value is None or math.isnan(value):
        return previous
    raw = _raw_level(rule, float(value), 0.0)
    if _RANK[raw] >= _RANK.get(previous, 0):
        return raw
    sticky = _raw_level(rule, float(value), rule.hysteresis)
    return sticky if _RANK[sticky] <= _RANK.get(previous, 0) else previous


def worst(*levels: Level) -> Level:
    """The most severe of ``levels`` (OK when there are none)."""
    return max(levels, key=lambda lv: _RANK[lv]) if levels else OK


def rank(level: Level) -> int:
    """0 for OK, 1 for WARNING, 2 for CRITICAL: sorts notifications most severe first."""
    return _RANK[level]


@dataclass(frozen=True)
class Notification:
    """One desktop notification: what crossed, what to do, and which server it is about."""

    kind: str
    level: Level
    subject: str
    title: str
    message: str
    server_key: str | None = None
    advice: str | None = None


@dataclass(frozen=True)
class Thresholds:
    """The user's thresholds (from settings); hysteresis widths are built in."""

    free_warn_percent: float = 10.0
    free_critical_percent: float = 5.0
    slot_warn_turns: int = 5
    slot_critical_turns: int = 2
    slot_warn_minutes: float = 15.0
    slot_critical_minutes: float = 5.0
    slot_full_percent: float = 95.0
    grab_percent: float = 10.0
    # A forecast from a single turn is a guess: forecasts warn only from this confidence.
    min_confidence: float = 0.25
    # A memory pool forecast to run out (kind pool_forecast): minutes left, and the
    # confidence of the trend it needs (a model being loaded is a jump, not a trend).
    pool_warn_minutes: float = 15.0
    pool_critical_minutes: float = 5.0
    pool_min_confidence: float = 0.6
    kinds: frozenset[str] = field(default_factory=lambda: ALL_KINDS)

    @classmethod
    def from_settings(cls, values: Mapping[str, object]) -> Thresholds:
        """The thresholds among ``values`` (the settings' names), defaults for the rest."""
        names = [f for f in cls.__dataclass_fields__ if f not in ("kinds", "min_confidence")]
        kw: dict[str, object] = {n: values[n] for n in names if n in values}
        if "notify_kinds" in values:
            kw["kinds"] = frozenset(values["notify_kinds"])  # type: ignore[call-overload]
        return cls(**kw)  # type: ignore[arg-type]

    def rules(self) -> dict[str, AlertRule]:
        """The rule of each check, keyed by a short name (``free``, ``turns``...)."""
        return {
            "free": AlertRule("free_memory", "free %", self.free_warn_percent,
                              self.free_critical_percent, 2.0),
            "turns": AlertRule("slot_forecast", "turns left", self.slot_warn_turns,
                               self.slot_critical_turns, 1.0),
            "minutes": AlertRule("slot_forecast", "minutes left", self.slot_warn_minutes,
                                 self.slot_critical_minutes, 1.0),
            "full": AlertRule("slot_full", "context used %", self.slot_full_percent,
                              self.slot_full_percent, 5.0, below=False),
            "grab": AlertRule("process_grab", "GPU share taken %", self.grab_percent,
                              min(100.0, 2 * self.grab_percent), self.grab_percent / 2,
                              below=False),
            "pool": AlertRule("pool_forecast", "minutes until the pool is full",
                              self.pool_warn_minutes, self.pool_critical_minutes,
                              max(1.0, self.pool_warn_minutes / 5)),
            "down": AlertRule("server_unreachable", "unreachable", 1.0, 1.0, 0.5, below=False),
        }


MakeNotification = Callable[[Level], Notification]
_AlertKey = tuple[str, str]  # (kind, subject)


@dataclass
class _Pass:
    """What one :meth:`NotificationRules.evaluate` call collects (mutable, call-local)."""

    now: float
    fired: list[Notification] = field(default_factory=list)
    seen: set[_AlertKey] = field(default_factory=set)


class NotificationRules:
    """Turns a stream of StatusReports into notifications, once per crossing.

    Args:
        thresholds: the user's thresholds and enabled kinds.
        clock: monotonic seconds (pause and cool-down); injected for tests.
        cooldown_s: the same alert (kind and subject) does not fire again within this
            time even if it re-arms, so a value oscillating around the hysteresis band
            never becomes a storm.
    """

    def __init__(self, thresholds: Thresholds | None = None,
                 clock: Callable[[], float] = time.monotonic, cooldown_s: float = 60.0) -> None:
        self._clock = clock
        self.cooldown_s = cooldown_s
        self._levels: dict[_AlertKey, Level] = {}
        self._last_fired: dict[_AlertKey, float] = {}
        self._refused_seen: dict[str, int] = {}  # server key -> refused count last seen
        self._paused_until: float | None = None
        self.set_thresholds(thresholds or Thresholds())

    def set_thresholds(self, thresholds: Thresholds) -> None:
        """Use ``thresholds`` from the next evaluation on (levels are kept)."""
        self.thresholds = thresholds
        self._rules = thresholds.rules()

    # -- pause ---------------------------------------------------------------------
    def pause(self, seconds: float) -> None:
        """Return no notification for ``seconds`` (levels are still tracked)."""
        self._paused_until = self._clock() + seconds

    def resume(self) -> None:
        """End a pause now."""
        self._paused_until = None

    @property
    def paused(self) -> bool:
        """Whether a pause is in effect."""
        return self._paused_until is not None and self._clock() < self._paused_until

    def level(self, kind: str, subject: str) -> Level:
        """The current level of one alert (OK when never seen)."""
        return self._levels.get((kind, subject), OK)

    # -- evaluation ----------------------------------------------------------------
    def evaluate(self, report: StatusReport) -> list[Notification]:
        """Update every rule's level from ``report``; return the alerts that rose.

        While paused, levels are still tracked (so nothing fires when the pause ends for
        a crossing that happened during it) but nothing is returned.
        """
        run = _Pass(self._clock())
        self._eval_free(report, run)
        self._eval_pool_forecasts(report, run)
        self._eval_grab(report, run)
        for server in report.servers:
            self._eval_server(server, run)
            self._eval_refused(server, run)
        running = {s.key for s in report.servers}
        for gone in [k for k in self._refused_seen if k not in running]:
            del self._refused_seen[gone]
        # Subjects that vanished (server gone, slot renumbered) forget their level.
        for key in [k for k in self._levels if k not in run.seen]:
            del self._levels[key]
        if self.paused:
            return []
        run.fired.sort(key=lambda n: -_RANK[n.level])
        return run.fired

    def _step(self, run: _Pass, kind: str, subject: str, new_level: Level,
              make: MakeNotification) -> None:
        """Record one alert's new level; fire when it rose (unless cooling down)."""
        key = (kind, subject)
        run.seen.add(key)
        old = self._levels.get(key, OK)
        self._levels[key] = new_level
        if _RANK[new_level] <= _RANK[old] or kind not in self.thresholds.kinds:
            return
        last = self._last_fired.get(key)
        escalation = old == WARNING and new_level == CRITICAL
        if last is not None and run.now - last < self.cooldown_s and not escalation:
            return
        self._last_fired[key] = run.now
        run.fired.append(make(new_level))

    def _previous(self, kind: str, subject: str) -> Level:
        return self._levels.get((kind, subject), OK)

    def _eval_free(self, report: StatusReport, run: _Pass) -> None:
        rule = self._rules["free"]
        for d in report.devices:
            if not d.total_bytes or d.free_bytes is None:
                continue
            pct = 100.0 * d.free_bytes / d.total_bytes
            lv = level_for(rule, pct, self._previous("free_memory", d.id))
            biggest = _biggest_server(report, d.id)

            def make(level: Level, d: DeviceMemory = d, pct: float = pct,
                     biggest: ServerReport | None = biggest) -> Notification:
                advice = _top_advice(biggest)
                msg = f"{d.name}: {format_bytes(d.free_bytes)} free ({pct:.0f}%)."
                title = (f"kvwall: {d.name} is almost full" if level == CRITICAL
                         else f"kvwall: {d.name} is running low")
                return Notification("free_memory", level, d.id, title, _with_advice(msg, advice),
                                    biggest.key if biggest else None, advice)

            self._step(run, "free_memory", d.id, lv, make)

    def _eval_pool_forecasts(self, report: StatusReport, run: _Pass) -> None:
        """A memory pool forecast to run out (``StatusReport.pool_forecasts``)."""
        rule = self._rules["pool"]
        names = {d.id: d.name for d in report.devices}
        for fc in report.pool_forecasts:
            subject = f"memory:{fc.device_id}"
            minutes = self._pool_minutes(fc)
            lv = level_for(rule, minutes, self._previous("pool_forecast", subject))

            def make(level: Level, fc: PoolForecast = fc) -> Notification:
                return _pool_forecast_notification(
                    level, fc, names.get(fc.device_id, fc.device_id),
                    _biggest_server(report, fc.device_id))

            self._step(run, "pool_forecast", subject, lv, make)

    def _pool_minutes(self, fc: PoolForecast) -> float | None:
        """Minutes until the pool runs out, inf when it does not, None when unknown."""
        if fc.bytes_per_minute is None:
            return None  # not enough history yet: unknown is not a recovery
        if fc.seconds_left is None:
            return float("inf")  # flat or shrinking: recovered
        if fc.confidence < self.thresholds.pool_min_confidence:
            return None  # a jump or noise: keep the level as it is
        return fc.seconds_left / 60.0

    def _eval_grab(self, report: StatusReport, run: _Pass) -> None:
        """Another process took a large share of a GPU (``StatusReport.memory_events``).

        The events say what is sudden (budget/events.py); the level is the largest share
        taken on the device in percent (the user's ``grab_percent`` decides), at least the
        warning level while a grab of :data:`~kvwall.budget.events.GRAB_BYTES` or more
        lasts.
        """
        rule = self._rules["grab"]
        events: dict[str, list[MemoryEvent]] = {}
        for e in report.memory_events:
            if e.kind == PROCESS_GRAB:
                events.setdefault(e.device_id, []).append(e)
        for d in report.devices:
            if d.kind == "host":
                continue
            mine = events.get(d.id, [])
            pct = max((100.0 * e.share for e in mine), default=0.0)
            if any(e.grown_bytes >= GRAB_BYTES for e in mine):
                pct = max(pct, rule.warn)  # gigabytes taken matter whatever the GPU's size
            lv = level_for(rule, pct, self._previous("process_grab", d.id))

            def make(level: Level, d: DeviceMemory = d,
                     mine: list[MemoryEvent] = mine) -> Notification:
                return _grab_notification(level, d, mine, _biggest_server(report, d.id))

            self._step(run, "process_grab", d.id, lv, make)

    def _eval_server(self, server: ServerReport, run: _Pass) -> None:
        down = 1.0 if server.health in UNREACHABLE_HEALTH else 0.0
        lv = level_for(self._rules["down"], down,
                       self._previous("server_unreachable", server.key))
        self._step(run, "server_unreachable", server.key, lv, lambda level: Notification(
            "server_unreachable", level, server.key, f"kvwall: {server_label(server)} is {server.health}",
            f"{server.url} stopped answering; its agents will fail until it is back.",
            server.key))
        slots = [("slot_forecast", s, f"{server.key}/slot{s.id}") for s in server.slots]
        if server.pool is not None:
            slots.append(("pool_forecast", server.pool, f"{server.key}/pool"))
        start = len(run.fired)
        for kind, slot, subject in slots:
            self._eval_slot(server, kind, slot, subject, run)
        run.fired[start:] = _one_per_crossing(run.fired[start:], f"{server.key}/pool")

    def _eval_refused(self, server: ServerReport, run: _Pass) -> None:
        """Requests refused with exceed_context_size_error since the last report: critical
        for the report that saw them (the cool-down keeps a refusing agent from storming)."""
        refused = server.refused_requests
        if refused is None:
            return
        before = self._refused_seen.get(server.key)
        self._refused_seen[server.key] = refused.count
        new = 0 if before is None else max(0, refused.count - before)
        lv = CRITICAL if new else OK
        self._step(run, "refused_requests", server.key, lv, lambda level: (
            _refused_notification(level, server, new)))

    def _forecast_level(self, slot: SlotReport, prev: Level) -> Level:
        """The forecast rules' level for one slot (or the shared KV pool)."""
        f = slot.forecast
        minutes = None if f.seconds_left is None else f.seconds_left / 60.0
        turns = f.turns_left
        if f.confidence < self.thresholds.min_confidence:
            turns = minutes = None  # too early to tell: keep the level as it is
        if turns == 0 or (turns is None and minutes is None):
            return prev  # a full slot is the slot_full rule's business
        return worst(
            level_for(self._rules["turns"], turns, prev) if turns is not None else OK,
            level_for(self._rules["minutes"], minutes, prev) if minutes is not None else OK,
        )

    def _eval_slot(self, server: ServerReport, kind: str, slot: SlotReport, subject: str,
                   run: _Pass) -> None:
        lv = self._forecast_level(slot, self._previous(kind, subject))
        self._step(run, kind, subject, lv, lambda level: (
            _forecast_notification(kind, level, subject, server, slot)))
        fill = slot_fill(slot)
        lv_full = level_for(self._rules["full"], None if fill is None else 100.0 * fill,
                            self._previous("slot_full", subject))
        self._step(run, "slot_full", subject, lv_full, lambda level: (
            _full_notification(level, subject, server, slot)))


# The forecast kinds a slot and its server's shared KV pool raise for the same crossing.
_SAME_CROSSING = {"slot_forecast": "pool_forecast", "slot_full": "slot_full"}


def _one_per_crossing(fired: list[Notification], pool_subject: str) -> list[Notification]:
    """A slot and its shared KV pool crossing together raise one notification: the
    pool's (it names the whole server's context), not one per slot as well."""
    pool_kinds = {n.kind for n in fired if n.subject == pool_subject}
    return [n for n in fired if n.subject == pool_subject
            or _SAME_CROSSING.get(n.kind) not in pool_kinds]


def slot_fill(slot: SlotReport) -> float | None:
    """The share of the slot's context in use (0..1), None when unknown."""
    if slot.tokens is None or slot.n_ctx <= 0:
        return None
    return min(1.0, slot.tokens / slot.n_ctx)


def slot_level(slot: SlotReport, full_percent: float, warn_turns: int,
               critical_turns: int) -> Level:
    """``"critical"`` when the slot is ``full_percent`` full or ``critical_turns`` requests
    from full, ``"warning"`` within ``warn_turns``, else ``"ok"`` (the tray and the table
    colour a slot alike)."""
    fill = slot_fill(slot)
    if fill is not None and 100 * fill >= full_percent:
        return CRITICAL
    t = slot.forecast.turns_left
    if t is not None and 0 < t <= critical_turns:
        return CRITICAL
    if t is not None and 0 < t <= warn_turns:
        return WARNING
    return OK


def forecast_phrase(server: ServerReport, slot: SlotReport) -> str:
    """``slot 2 of qwen3-32b full in ~6 requests / 14 min``, as the CLI says it.

    ``turns_left`` counts the request that hits the wall: 1 reads "the next request
    fills it".
    """
    f = slot.forecast
    what = f"{'the shared pool' if server.pool is slot else f'slot {slot.id}'} of {server_label(server)}"
    if f.turns_left == 0:
        return f"{what} is full"
    when = None if f.seconds_left is None else format_duration(f.seconds_left)
    if f.turns_left == 1:
        return f"{what}: the next request fills it" + (f" (~{when})" if when else "")
    parts = [] if f.turns_left is None else [f"~{f.turns_left} requests"]
    if when:
        parts.append(when)
    return f"{what} full in {' / '.join(parts)}"


def _biggest_server(report: StatusReport, device_id: str) -> ServerReport | None:
    best, best_bytes = None, -1
    for s in report.servers:
        b = sum(a.measured_bytes or (a.weights_bytes + a.kv_bytes + a.compute_bytes)
                for a in s.memory if a.device_id == device_id)
        if b > best_bytes and s.memory:
            best, best_bytes = s, b
    return best


def server_label(server: ServerReport) -> str:
    """The server's unique label (the engine's: its alias, else ``name:port``); its name
    in reports built without one. The tray, the table, the plots and notifications use it."""
    return server.label or server.name


def _top_advice(server: ServerReport | None, solves: AdviceSolves = "memory") -> str | None:
    """The best advice that solves this notification's own problem, in words."""
    if server is None:
        return None
    a = next((x for x in server.advice if x.solves == solves), None)
    if a is None:
        return None
    if a.solves == "context":
        buys = f", full in ~{a.turns_left} requests" if a.turns_left is not None else ""
        ctx = f"{a.n_ctx_slot} cells per slot" if a.n_ctx_slot is not None else "more context"
        return f"{a.title} ({ctx}{buys})"
    if a.saves_bytes < 0:
        return f"{a.title} (costs {format_bytes(-a.saves_bytes)} more)"
    return f"{a.title} (saves {format_bytes(a.saves_bytes)})"


def _with_advice(msg: str, advice: str | None) -> str:
    return f"{msg} Suggestion: {advice}." if advice else msg


def _grab_notification(level: Level, d: DeviceMemory, mine: list[MemoryEvent],
                       biggest: ServerReport | None) -> Notification:
    top = max(mine, key=lambda ev: ev.grown_bytes)
    advice = _top_advice(biggest)
    who = f"{top.name or 'a process'} (pid {top.pid})"
    share = f" ({100.0 * top.share:.0f}%)" if top.share else ""
    msg = (f"Another process, {who}, took {format_bytes(top.grown_bytes)}"
           f"{share} of {d.name} within {format_duration(top.window_s)}; "
           f"{format_bytes(d.free_bytes)} free now.")
    return Notification("process_grab", level, d.id, "kvwall: memory taken by another process",
                        _with_advice(msg, advice), biggest.key if biggest else None, advice)


def _forecast_notification(kind: str, level: Level, subject: str, server: ServerReport,
                           slot: SlotReport) -> Notification:
    advice = _top_advice(server, "context")
    phrase = forecast_phrase(server, slot)
    msg = _with_advice(phrase[0].upper() + phrase[1:] + ".", advice)
    return Notification(kind, level, subject, _forecast_title(level, slot), msg, server.key,
                        advice)


# "Almost full" is said only of a context this full (a critical forecast of a slot at 10%
# that fills in two requests "fills soon").
ALMOST_FULL_FILL = 0.8


def _forecast_title(level: Level, slot: SlotReport) -> str:
    """The words match the severity and the fill: running out, fills soon, almost full."""
    if level != CRITICAL:
        return "kvwall: context running out"
    fill = slot_fill(slot)
    if fill is not None and fill >= ALMOST_FULL_FILL:
        return "kvwall: context almost full"
    return "kvwall: context fills soon"


def _refused_notification(level: Level, server: ServerReport, new: int) -> Notification:
    advice = _top_advice(server)
    ctx = max((s.n_ctx for s in server.slots), default=0)
    what = "a request" if new == 1 else f"{new} requests"
    msg = (f"{server.name} refused {what}: the prompt exceeded the slot's context"
           f"{f' ({ctx} tokens)' if ctx else ''}; the agent got exceed_context_size_error.")
    return Notification("refused_requests", level, server.key,
                        f"kvwall: {server.name} hit the context wall",
                        _with_advice(msg, advice), server.key, advice)


def _pool_forecast_notification(level: Level, fc: PoolForecast, name: str,
                                server: ServerReport | None) -> Notification:
    advice = _top_advice(server)
    msg = (f"{name}: {format_bytes(fc.free_bytes)} free, "
           f"{format_bytes(fc.bytes_per_minute)} more used every minute: "
           f"full in ~{format_duration(fc.seconds_left)}.")
    if server is not None:
        msg += f" {server_label(server)} runs on it."
    title = ("kvwall: memory running out" if level == WARNING
             else "kvwall: memory almost gone")
    return Notification("pool_forecast", level, f"memory:{fc.device_id}", title,
                        _with_advice(msg, advice), server.key if server else None, advice)


def _full_notification(level: Level, subject: str, server: ServerReport,
                       slot: SlotReport) -> Notification:
    advice = _top_advice(server, "context")
    what = "The shared KV pool" if server.pool is slot else f"Slot {slot.id}"
    msg = (f"{what} of {server_label(server)} holds {slot.tokens} of {slot.n_ctx} tokens; the next "
           "request may fail with exceed_context_size_error.")
    return Notification("slot_full", level, subject, f"kvwall: {server_label(server)} context is full",
                        _with_advice(msg, advice), server.key, advice)
