"""GUI tests run offscreen with a real QApplication; each test must leave no running
QTimer or QThread behind, and reads/writes settings only under its own temporary dirs
(the root conftest points XDG_* at a fresh folder)."""

from __future__ import annotations

import gc
import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

import pytest


def _live_qt_objects():
    import shiboken6
    from PySide6.QtCore import QThread, QTimer

    timers, threads = [], []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, QTimer) and shiboken6.isValid(obj) and obj.isActive():
                timers.append(obj)
            elif isinstance(obj, QThread) and shiboken6.isValid(obj) and obj.isRunning():
                threads.append(obj)
        except (RuntimeError, ReferenceError):
            continue
    return timers, threads


@pytest.fixture(autouse=True)
def _no_leaked_qt_timers_or_threads(qapp):
    """Fail a test that leaves an active QTimer or a running QThread."""
    from PySide6.QtCore import QCoreApplication, QEvent

    before_timers, before_threads = (set(map(id, x)) for x in _live_qt_objects())
    yield
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    QCoreApplication.processEvents()
    timers, threads = _live_qt_objects()
    leaked_timers = [t for t in timers if id(t) not in before_timers]
    leaked_threads = [t for t in threads if id(t) not in before_threads]
    for t in leaked_timers:
        t.stop()
    for t in leaked_threads:
        t.quit()
        t.wait(5000)
    if leaked_timers or leaked_threads:
        names = [f"QTimer(parent={type(t.parent()).__name__})" for t in leaked_timers] + [
            f"QThread({t.objectName()})" for t in leaked_threads]
        pytest.fail(f"test leaked running Qt objects: {names}")


# Harmless under the offscreen platform (no window manager to raise a window to).
_OFFSCREEN_NOISE = ("This plugin does not support raise", "This plugin does not support "
                    "propagateSizeHints", "This plugin does not support setParent")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gui" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.qt_log_ignore(*_OFFSCREEN_NOISE))
