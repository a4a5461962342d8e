"""Desktop delivery of kvwall's alerts: tray messages; clicking one opens its server.

The rules (what fires and when) are Qt-free, in :mod:`kvwall.budget.alerts`.
"""

from __future__ import annotations

import logging

from kvwall.budget.alerts import CRITICAL, Notification, NotificationRules
from kvwall.budget.report import StatusReport
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QSystemTrayIcon

log = logging.getLogger(__name__)


class NotificationCenter(QObject):
    """Delivers :class:`~kvwall.budget.alerts.NotificationRules` results as tray messages.

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
        """Evaluate ``report``; emit each notification and show the most severe one."""
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
