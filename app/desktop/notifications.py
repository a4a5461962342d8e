"""Desktop warnings before trouble: alert rules as data, fired once per crossing.

The rule engine (:class:`AlertRule`, :func:`level_for`, :class:`NotificationRules`) is pure
Python with an injected clock. :class:`NotificationCenter` delivers its notifications
through ``QSystemTrayIcon.showMessage``; clicking one opens the window on its server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kvwall.budget.events import GRAB_BYTES
from kvwall.budget.report import MemoryEvent, PoolForecast, ServerReport, StatusReport
from kvwall.widgets.viewmodels import pools
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QSystemTrayIcon

log = logging.getLogger(__name__)

OK = "ok"
WARNING = "warning"
CRITICAL = "critical"
_RANK = {OK: 0, WARNING: 1, CRITICAL: 2}

UNREACHABLE_HEALTH = frozenset({"unreachable", "not responding"})


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


def _raw_level(rule: AlertRule, value: float, shift: float) -> str:
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


def level_for(rule: AlertRule, value: float | None, previous: str = OK) -> str:
    """The alert level of ``value``, given the level it had before.

    A level is entered at its threshold and left only once the value is ``hysteresis``
    beyond it, so a value hovering at a threshold does not flap. A missing value (None)
    keeps the previous level: unknown is not a recovery. Never raises.
    """
    if value is None or value != value:  # None or NaN
        return previous
    raw = _raw_level(rule, float(value), 0.0)
    if _RANK[raw] >= _RANK.get(previous, 0):
        return raw
    sticky = _raw_level(rule, float(value), rule.hysteresis)
    return sticky if _RANK[sticky] <= _RANK.get(previous, 0) else previous


def worst(*levels: str) -> str:
    return max(levels, key=lambda lv: _RANK[lv]) if levels else OK


@dataclass(frozen=True)
class Notification:
    """One desktop notification: what crossed, what to do, and which server it is about."""

    kind: str
    level: str
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
    kinds: frozenset[str] = field(default_factory=lambda: frozenset({
        "free_memory", "pool_forecast", "slot_forecast", "slot_full",
        "server_unreachable", "process_grab"}))

    @classmethod
    def from_settings(cls, values: Mapping) -> Thresholds:
        names = [f for f in cls.__dataclass_fields__ if f not in ("kinds", "min_confidence")]
        kw = {n: values[n] for n in names if n in values}
        if "notify_kinds" in values:
            kw["kinds"] = frozenset(values["notify_kinds"])
        return cls(**kw)

    def rules(self) -> dict[str, AlertRule]:
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
        self._levels: dict[tuple[str, str], str] = {}
        self._last_fired: dict[tuple[str, str], float] = {}
        self._paused_until: float | None = None
        self.set_thresholds(thresholds or Thresholds())

    def set_thresholds(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._rules = thresholds.rules()

    # -- pause ---------------------------------------------------------------------
    def pause(self, seconds: float) -> None:
        self._paused_until = self._clock() + seconds

    def resume(self) -> None:
        self._paused_until = None

    @property
    def paused(self) -> bool:
        return self._paused_until is not None and self._clock() < self._paused_until

    def level(self, kind: str, subject: str) -> str:
        return self._levels.get((kind, subject), OK)

    # -- evaluation ----------------------------------------------------------------
    def evaluate(self, report: StatusReport) -> list[Notification]:
        """Update every rule's level from ``report``; return the alerts that rose.

        While paused, levels are still tracked (so nothing fires when the pause ends for
        a crossing that happened during it) but nothing is returned.
        """
        fired: list[Notification] = []
        seen: set[tuple[str, str]] = set()
        now = self._clock()

        def step(kind: str, subject: str, new_level: str, make: Callable[[str], Notification]):
            key = (kind, subject)
            seen.add(key)
            old = self._levels.get(key, OK)
            self._levels[key] = new_level
            if _RANK[new_level] <= _RANK[old] or kind not in self.thresholds.kinds:
                return
            last = self._last_fired.get(key)
            escalation = old == WARNING and new_level == CRITICAL
            if last is not None and now - last < self.cooldown_s and not escalation:
                return
            self._last_fired[key] = now
            fired.append(make(new_level))

        self._eval_free(report, step)
        self._eval_pool_forecasts(report, step)
        self._eval_grab(report, step)
        for server in report.servers:
            self._eval_server(server, step)
        # Subjects that vanished (server gone, slot renumbered) forget their level.
        for key in [k for k in self._levels if k not in seen]:
            del self._levels[key]
        if self.paused:
            return []
        fired.sort(key=lambda n: -_RANK[n.level])
        return fired

    def _eval_free(self, report: StatusReport, step) -> None:
        rule = self._rules["free"]
        for view in pools.pool_views(report):
            d = view.device
            if not d.total_bytes or d.free_bytes is None:
                continue
            pct = 100.0 * d.free_bytes / d.total_bytes
            key = ("free_memory", d.id)
            lv = level_for(rule, pct, self._levels.get(key, OK))
            biggest = _biggest_server(report, d.id)

            def make(level, d=d, pct=pct, biggest=biggest):
                advice = _top_advice(biggest)
                msg = f"{d.name}: {pools.format_bytes(d.free_bytes)} free ({pct:.0f}%)."
                return Notification("free_memory", level, d.id,
                                    f"kvwall: {d.name} is almost full", _with_advice(msg, advice),
                                    biggest.key if biggest else None, advice)

            step("free_memory", d.id, lv, make)

    def _eval_pool_forecasts(self, report: StatusReport, step) -> None:
        """A memory pool forecast to run out (``StatusReport.pool_forecasts``)."""
        rule = self._rules["pool"]
        names = {d.id: d.name for d in report.devices}
        for fc in getattr(report, "pool_forecasts", ()):
            subject = f"memory:{fc.device_id}"
            prev = self._levels.get(("pool_forecast", subject), OK)
            if fc.bytes_per_minute is None:
                minutes = None  # not enough history yet: unknown is not a recovery
            elif fc.seconds_left is None:
                minutes = float("inf")  # flat or shrinking: recovered
            elif fc.confidence < self.thresholds.pool_min_confidence:
                minutes = None  # a jump or noise: keep the level as it is
            else:
                minutes = fc.seconds_left / 60.0
            lv = level_for(rule, minutes, prev)

            def make(level, fc=fc):
                return _pool_forecast_notification(
                    level, fc, names.get(fc.device_id, fc.device_id),
                    _biggest_server(report, fc.device_id))

            step("pool_forecast", subject, lv, make)

    def _eval_grab(self, report: StatusReport, step) -> None:
        """Another process took a large share of a GPU (``StatusReport.memory_events``).

        The events say what is sudden (budget/events.py); the level is the largest share
        taken on the device in percent (the user's ``grab_percent`` decides), at least the
        warning level while a grab of :data:`~kvwall.budget.events.GRAB_BYTES` or more
        lasts.
        """
        rule = self._rules["grab"]
        events: dict[str, list[MemoryEvent]] = {}
        for e in getattr(report, "memory_events", ()):
            if e.kind == "process_grab":
                events.setdefault(e.device_id, []).append(e)
        for d in report.devices:
            if d.kind == "host":
                continue
            mine = events.get(d.id, [])
            pct = max((100.0 * e.share for e in mine), default=0.0)
            if any(e.grown_bytes >= GRAB_BYTES for e in mine):
                pct = max(pct, rule.warn)  # gigabytes taken matter whatever the GPU's size
            key = ("process_grab", d.id)
            lv = level_for(rule, pct, self._levels.get(key, OK))

            def make(level, d=d, mine=mine):
                top = max(mine, key=lambda ev: ev.grown_bytes)
                biggest = _biggest_server(report, d.id)
                advice = _top_advice(biggest)
                who = f"{top.name or 'a process'} (pid {top.pid})"
                share = f" ({100.0 * top.share:.0f}%)" if top.share else ""
                msg = (f"Another process, {who}, took {pools.format_bytes(top.grown_bytes)}"
                       f"{share} of {d.name} within {pools.format_duration(top.window_s)}; "
                       f"{pools.format_bytes(d.free_bytes)} free now.")
                return Notification("process_grab", level, d.id,
                                    "kvwall: memory taken by another process",
                                    _with_advice(msg, advice), biggest.key if biggest else None,
                                    advice)

            step("process_grab", d.id, lv, make)

    def _eval_server(self, server: ServerReport, step) -> None:
        down = 1.0 if server.health in UNREACHABLE_HEALTH else 0.0
        key = ("server_unreachable", server.key)
        lv = level_for(self._rules["down"], down, self._levels.get(key, OK))
        step("server_unreachable", server.key, lv, lambda level: Notification(
            "server_unreachable", level, server.key, f"kvwall: {server.name} is {server.health}",
            f"{server.url} stopped answering; its agents will fail until it is back.",
            server.key))
        slots = [("slot_forecast", s, f"{server.key}/slot{s.id}") for s in server.slots]
        if server.pool is not None:
            slots.append(("pool_forecast", server.pool, f"{server.key}/pool"))
        for kind, slot, subject in slots:
            f = slot.forecast
            fkey = (kind, subject)
            prev = self._levels.get(fkey, OK)
            minutes = None if f.seconds_left is None else f.seconds_left / 60.0
            turns = f.turns_left
            if f.confidence < self.thresholds.min_confidence:
                turns = minutes = None  # too early to tell: keep the level as it is
            if turns is None and minutes is None:
                lv = prev
            else:
                lv = worst(
                    level_for(self._rules["turns"], turns, prev) if turns is not None else OK,
                    level_for(self._rules["minutes"], minutes, prev) if minutes is not None else OK,
                )
            if turns == 0:
                lv = prev  # a full slot is the slot_full rule's business
            step(kind, subject, lv, lambda level, slot=slot, kind=kind, subject=subject: (
                _forecast_notification(kind, level, subject, server, slot)))
            fill = pools.slot_fill(slot)
            full_subject = subject
            fullkey = ("slot_full", full_subject)
            lv_full = level_for(self._rules["full"],
                                None if fill is None else 100.0 * fill,
                                self._levels.get(fullkey, OK))
            step("slot_full", full_subject, lv_full, lambda level, slot=slot, subject=subject: (
                _full_notification(level, subject, server, slot)))


def _biggest_server(report: StatusReport, device_id: str) -> ServerReport | None:
    best, best_bytes = None, -1
    for s in report.servers:
        b = sum(a.measured_bytes or (a.weights_bytes + a.kv_bytes + a.compute_bytes)
                for a in s.memory if a.device_id == device_id)
        if b > best_bytes and s.memory:
            best, best_bytes = s, b
    return best


def _top_advice(server: ServerReport | None) -> str | None:
    if server is None or not server.advice:
        return None
    a = server.advice[0]
    return f"{a.title} (saves {pools.format_bytes(a.saves_bytes)})"


def _with_advice(msg: str, advice: str | None) -> str:
    return f"{msg} Suggestion: {advice}." if advice else msg


def _forecast_notification(kind, level, subject, server, slot) -> Notification:
    advice = _top_advice(server)
    phrase = pools.forecast_phrase(server, slot)
    msg = _with_advice(phrase[0].upper() + phrase[1:] + ".", advice)
    title = "kvwall: context running out" if level == WARNING else "kvwall: context almost full"
    return Notification(kind, level, subject, title, msg, server.key, advice)


def _pool_forecast_notification(level: str, fc: PoolForecast, name: str,
                                server: ServerReport | None) -> Notification:
    advice = _top_advice(server)
    msg = (f"{name}: {pools.format_bytes(fc.free_bytes)} free, "
           f"{pools.format_bytes(fc.bytes_per_minute)} more used every minute: "
           f"full in ~{pools.format_duration(fc.seconds_left)}.")
    if server is not None:
        msg += f" {server.name} runs on it."
    title = ("kvwall: memory running out" if level == WARNING
             else "kvwall: memory almost gone")
    return Notification("pool_forecast", level, f"memory:{fc.device_id}", title,
                        _with_advice(msg, advice), server.key if server else None, advice)


def _full_notification(level, subject, server, slot) -> Notification:
    advice = _top_advice(server)
    what = "The shared KV pool" if server.pool is slot else f"Slot {slot.id}"
    msg = (f"{what} of {server.name} holds {slot.tokens} of {slot.n_ctx} tokens; the next "
           "request may fail with exceed_context_size_error.")
    return Notification("slot_full", level, subject, f"kvwall: {server.name} context is full",
                        _with_advice(msg, advice), server.key, advice)


def notifications_summary(items: Iterable[Notification]) -> str:
    return "; ".join(f"{n.level}: {n.title}" for n in items)


# --- Qt delivery ----------------------------------------------------------------------

class NotificationCenter(QObject):
    """Delivers :class:`NotificationRules` results as tray messages.

    Signals:
        notified(Notification): every notification that fired (also while no tray
            can show it).
        open_server(str): the user clicked a message about that server key.
    """

    notified = Signal(object)
    open_server = Signal(str)

    def __init__(self, rules: NotificationRules, tray: QSystemTrayIcon | None = None,
                 parent: QObject | None = None, timeout_ms: int = 10000) -> None:
        super().__init__(parent)
        self.rules = rules
        self.timeout_ms = timeout_ms
        self._last_server: str | None = None
        self.set_tray(tray)

    def set_tray(self, tray: QSystemTrayIcon | None) -> None:
        """Deliver through ``tray`` from now on (None: signals only)."""
        self.tray = tray
        if tray is not None:
            tray.messageClicked.connect(self._clicked)

    def handle(self, report: StatusReport) -> list[Notification]:
        fired = self.rules.evaluate(report)
        if not fired:
            return fired
        for n in fired:
            log.info("notification %s/%s: %s", n.kind, n.level, n.title)
            self.notified.emit(n)
        top = fired[0]
        message = top.message
        if len(fired) > 1:
            message += f" (+{len(fired) - 1} more in the window)"
        self._last_server = top.server_key
        if self.tray is not None and self.tray.isVisible():
            icon = (QSystemTrayIcon.MessageIcon.Critical if top.level == CRITICAL
                    else QSystemTrayIcon.MessageIcon.Warning)
            self.tray.showMessage(top.title, message, icon, self.timeout_ms)
        return fired

    def _clicked(self) -> None:
        self.open_server.emit(self._last_server or "")
