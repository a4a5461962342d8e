"""Logging like an operator tool: a rotating file in the platform log dir, Qt's own
messages routed into logging, and a repeating failure logged once per cause.

Nothing here logs secrets: callers never pass API keys, and :class:`RedactFilter` masks
anything that looks like an ``Authorization`` header or ``--api-key`` value anyway.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path

LOG_FILE = "kvwall.log"
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_SECRET = re.compile(r"(?i)(bearer\s+|--api-key(?:=|\s+)|api_key['\"]?\s*[:=]\s*['\"]?)([^\s'\",]+)")


class RedactFilter(logging.Filter):
    """Masks API keys that slip into a message."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if _SECRET.search(msg):
            record.msg = _SECRET.sub(lambda m: m.group(1) + "***", msg)
            record.args = ()
        return True


class FailureLog:
    """Logs a repeating failure once per cause, and its recovery once.

    ``failure(cause, msg, *args)`` logs the first time ``cause`` is seen (and again only
    after :meth:`recovered`); later repeats are counted, and the count is logged with
    the recovery. Causes are short strings such as ``"TimeoutError"`` or a server key.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._active: dict[str, int] = {}

    def failure(self, cause: str, msg: str, *args: object, exc_info: bool | BaseException = False,
                level: int = logging.WARNING) -> bool:
        """Returns True when this call logged (the first occurrence of ``cause``)."""
        if cause in self._active:
            self._active[cause] += 1
            return False
        self._active[cause] = 1
        self._log.log(level, msg, *args, exc_info=exc_info)
        return True

    def recovered(self, cause: str | None, msg: str, *args: object) -> None:
        """Clear ``cause`` (or every cause when None), logging once if it was active."""
        causes = list(self._active) if cause is None else [cause]
        for c in causes:
            count = self._active.pop(c, None)
            if count is not None:
                self._log.info(msg + " (after %d failed attempt(s) of %s)", *args, count, c)

    def active(self) -> dict[str, int]:
        return dict(self._active)


def log_dir() -> Path:
    from platformdirs import user_log_dir

    return Path(user_log_dir("kvwall", appauthor=False))


_installed: list[logging.Handler] = []


def setup_logging(level: int = logging.INFO, directory: Path | None = None,
                  console: bool = False) -> Path:
    """Install the rotating file handler (1 MiB x 3) on the ``kvwall`` logger.

    Returns the log file path. Safe to call twice (the second call replaces handlers).
    """
    directory = directory or log_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOG_FILE
    root = logging.getLogger("kvwall")
    for h in _installed:
        root.removeHandler(h)
        h.close()
    _installed.clear()
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=1 << 20, backupCount=3,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(RedactFilter())
    root.addHandler(handler)
    _installed.append(handler)
    if console:
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter(_FORMAT))
        stream.addFilter(RedactFilter())
        root.addHandler(stream)
        _installed.append(stream)
    root.setLevel(level)
    return path


_qt_log = logging.getLogger("kvwall.qt")
_qt_failures = FailureLog(_qt_log)


def install_qt_message_handler() -> None:
    """Route qDebug/qWarning/qCritical into logging (each distinct message once)."""
    from PySide6.QtCore import QMessageLogContext, QtMsgType, qInstallMessageHandler

    levels = {
        QtMsgType.QtDebugMsg: logging.DEBUG,
        QtMsgType.QtInfoMsg: logging.INFO,
        QtMsgType.QtWarningMsg: logging.WARNING,
        QtMsgType.QtCriticalMsg: logging.ERROR,
        QtMsgType.QtFatalMsg: logging.CRITICAL,
    }

    def handler(mode: QtMsgType, context: QMessageLogContext, message: str) -> None:
        level = levels.get(mode, logging.WARNING)
        _qt_failures.failure(message, "Qt: %s", message, level=level)

    qInstallMessageHandler(handler)
