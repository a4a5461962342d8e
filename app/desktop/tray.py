"""The tray icon: a small fill gauge of the tightest pool coloured ok/warning/critical, a
tooltip with free memory and the nearest forecast, and a menu rebuilt from the latest
report each time it opens."""

from __future__ import annotations

import time
from dataclasses import dataclass

from kvwall.budget.alerts import (
    CRITICAL,
    OK,
    UNREACHABLE_HEALTH,
    WARNING,
    AlertRule,
    Level,
    Thresholds,
    forecast_phrase,
    level_for,
    server_label,
    slot_fill,
    slot_level,
    worst,
)
from kvwall.budget.report import ServerReport, StatusReport
from kvwall.budget.units import format_bytes
from kvwall.widgets.viewmodels import pools
from PySide6.QtCore import QObject, QRectF, Qt, Signal
from PySide6.QtGui import QAction, QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

LEVEL_COLORS = {OK: QColor("#43a047"), WARNING: QColor("#f5a623"), CRITICAL: QColor("#e53935")}
UNKNOWN_COLOR = QColor("#9e9e9e")
# Server states the tooltip names (besides unreachable): kvwall cannot watch it until
# someone acts.
NEEDS_USER_HEALTH = frozenset({"needs API key", "error"})


@dataclass(frozen=True)
class TrayState:
    """What the icon shows: fill of the tightest pool (0..1, None unknown) and the level."""

    fill: float | None
    level: Level
    tooltip: str


def tray_state(report: StatusReport | None, thresholds: Thresholds) -> TrayState:
    if report is None:
        return TrayState(None, OK, "kvwall: starting…")
    pool = pools.tightest_pool(report)
    levels = [OK]
    lines = []
    d = pool.device if pool is not None else None
    if d is not None and d.total_bytes and d.free_bytes is not None:
        free_pct = 100.0 * d.free_bytes / d.total_bytes
        rule = AlertRule("free_memory", "free %", thresholds.free_warn_percent,
                         thresholds.free_critical_percent, 0.0)
        levels.append(level_for(rule, free_pct))
        lines.append(f"{d.name}: {format_bytes(d.free_bytes)} free ({free_pct:.0f}%)")
    for server in report.servers:
        if server.health in UNREACHABLE_HEALTH or server.health in NEEDS_USER_HEALTH:
            levels.append(WARNING)
            lines.append(f"{server_label(server)}: {server.health}")
        for slot in list(server.slots) + ([server.pool] if server.pool else []):
            levels.append(slot_level(slot, thresholds.slot_full_percent,
                                           thresholds.slot_warn_turns,
                                           thresholds.slot_critical_turns))
    nearest = pools.nearest_forecast(report)
    if nearest is not None:
        lines.append(forecast_phrase(*nearest))
    if not report.servers:
        lines.append("no llama.cpp server running")
    elif nearest is None:
        n = len(report.servers)
        lines.append(f"{n} server{'s' if n != 1 else ''}, no forecast yet")
    fill = pool.used_fraction if pool is not None else None
    return TrayState(fill, worst(*levels), "kvwall\n" + "\n".join(lines))


def gauge_pixmap(fill: float | None, level: Level, size: int = 64, dark: bool = False) -> QPixmap:
    """A battery-like vertical gauge: outline, fill from the bottom, level colour."""
    pm = QPixmap(size, size)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = size / 64.0
    body = QRectF(14 * s, 6 * s, 36 * s, 54 * s)
    outline = QColor("#f0f0f0") if dark else QColor("#303030")
    color = LEVEL_COLORS.get(level, UNKNOWN_COLOR) if fill is not None else UNKNOWN_COLOR
    path = QPainterPath()
    path.addRoundedRect(body, 6 * s, 6 * s)
    p.fillPath(path, QColor(outline.red(), outline.green(), outline.blue(), 40))
    if fill is not None:
        f = max(0.0, min(1.0, fill))
        inner = body.adjusted(4 * s, 4 * s, -4 * s, -4 * s)
        h = inner.height() * f
        bar = QRectF(inner.left(), inner.bottom() - h, inner.width(), h)
        p.fillRect(bar, color)
    p.setPen(QPen(outline, 4 * s))
    p.drawPath(path)
    p.fillRect(QRectF(26 * s, 1 * s, 12 * s, 5 * s), outline)
    p.end()
    return pm


def gauge_icon(fill: float | None, level: Level, dark: bool = False) -> QIcon:
    icon = QIcon()
    for size in (16, 22, 24, 32, 48, 64):
        icon.addPixmap(gauge_pixmap(fill, level, size, dark))
    return icon


class Tray(QObject):
    """The tray icon and its menu.

    Signals:
        open_window(), open_server(str), settings_requested(), quit_requested(),
        pause_toggled(bool): pause notifications for an hour (True) or resume.
    """

    open_window = Signal()
    open_server = Signal(str)
    settings_requested = Signal()
    quit_requested = Signal()
    pause_toggled = Signal(bool)

    def __init__(self, thresholds: Thresholds | None = None, parent: QObject | None = None,
                 dark: bool | None = None) -> None:
        super().__init__(parent)
        self.thresholds = thresholds or Thresholds()
        self._dark = _system_is_dark() if dark is None else dark
        self.icon = QSystemTrayIcon(self)
        self.menu = QMenu()
        self.menu.aboutToShow.connect(self.rebuild_menu)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self._report: StatusReport | None = None
        self._paused = False
        self._paused_until: float | None = None
        self._state: TrayState | None = None
        self.icon_updates = 0
        if dark is None:  # follow the desktop when it switches between light and dark
            from PySide6.QtGui import QGuiApplication

            app = QGuiApplication.instance()
            hints = app.styleHints() if isinstance(app, QGuiApplication) else None
            if hints is not None and hasattr(hints, "colorSchemeChanged"):
                hints.colorSchemeChanged.connect(self._color_scheme_changed)
        self.set_report(None)
        self.rebuild_menu()

    def show(self) -> None:
        self.icon.show()

    def hide(self) -> None:
        self.icon.hide()

    def set_paused(self, paused: bool, until_wall: float | None = None) -> None:
        """Show notifications as paused (until ``until_wall``, a time.time() value)."""
        self._paused = paused
        self._paused_until = until_wall if paused else None

    def set_report(self, report: StatusReport | None) -> None:
        self._report = report
        state = tray_state(report, self.thresholds)
        if state != self._state:
            # The used share moves a little every poll; the icon is redrawn (and sent to
            # the tray host) only when its gauge would look different.
            if self._state is None or _icon_key(state) != _icon_key(self._state):
                self.icon.setIcon(gauge_icon(state.fill, state.level, self._dark))
                self.icon_updates += 1
            self.icon.setToolTip(state.tooltip)
            self._state = state

    def _color_scheme_changed(self, *_args: object) -> None:
        self._dark = _system_is_dark()
        if self._state is not None:
            self.icon.setIcon(gauge_icon(self._state.fill, self._state.level, self._dark))

    def state(self) -> TrayState | None:
        return self._state

    def rebuild_menu(self) -> None:
        """Rebuild the menu from the latest report (called each time it opens)."""
        m = self.menu
        m.clear()
        report = self._report
        if report is None:
            m.addAction("Waiting for the first poll…").setEnabled(False)
        elif not report.servers:
            m.addAction("No llama.cpp server running").setEnabled(False)
        else:
            for server in report.servers:
                text = _server_line(server)
                act = QAction(text, m)
                act.triggered.connect(lambda _=False, k=server.key: self.open_server.emit(k))
                m.addAction(act)
        m.addSeparator()
        m.addAction("Open kvwall", self.open_window.emit)
        text = "Pause notifications for an hour"
        if self._paused and self._paused_until is not None:
            until = time.strftime("%H:%M", time.localtime(self._paused_until))
            text = f"Notifications paused until {until} (click to resume)"
        pause = QAction(text, m)
        pause.setCheckable(True)
        pause.setChecked(self._paused)
        pause.toggled.connect(self._pause_toggled)
        m.addAction(pause)
        m.addAction("Settings…", self.settings_requested.emit)
        m.addSeparator()
        m.addAction("Quit kvwall", self.quit_requested.emit)

    def _pause_toggled(self, on: bool) -> None:
        self._paused = on
        self.pause_toggled.emit(on)

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger,
                      QSystemTrayIcon.ActivationReason.DoubleClick):
            self.open_window.emit()


def _server_line(server: ServerReport) -> str:
    worst_slot = None
    for slot in list(server.slots) + ([server.pool] if server.pool else []):
        fill = slot_fill(slot)
        if fill is not None and (worst_slot is None or fill > worst_slot):
            worst_slot = fill
    bits = [server_label(server)]
    if server.health != "ok":
        bits.append(server.health)
    if server.refused_requests is not None and server.refused_requests.count:
        bits.append(f"{server.refused_requests.count} refused")
    if worst_slot is not None:
        bits.append(f"fullest slot {worst_slot:.0%}")
    return "  ·  ".join(bits)


ICON_STEPS = 40  # fill steps the icon can show (its gauge is at most ~40 px tall)


def _icon_key(state: TrayState) -> tuple[int | None, str]:
    fill = None if state.fill is None else round(max(0.0, min(1.0, state.fill)) * ICON_STEPS)
    return fill, state.level


def _system_is_dark() -> bool:
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance()
    if not isinstance(app, QGuiApplication):
        return False
    try:
        return bool(app.styleHints().colorScheme() == Qt.ColorScheme.Dark)
    except AttributeError:  # Qt < 6.5
        return False
