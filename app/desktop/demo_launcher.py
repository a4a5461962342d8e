"""Starts ``kvwall --demo``'s tiny server and agent from the running app, off the GUI
thread (starting it waits for the server to load)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from PySide6.QtCore import QObject, Qt, Signal

log = logging.getLogger(__name__)

STOP_WAIT_S = 30.0  # how long quitting waits for the demo's thread to stop it


class DemoLike(Protocol):
    """What the launcher needs of :class:`kvwall.app.demo.session.Demo`."""

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def real_demo() -> DemoLike:
    from kvwall.app.demo.session import Demo

    return Demo()


class DemoLauncher(QObject):
    """One demo per app run, started on a worker thread and stopped with the app.

    Args:
        make_demo: builds the demo (default the real one; tests inject theirs).

    Signals:
        started(str): the demo server answers at this URL (it appears within a poll).
        failed(str): why the demo could not start, in words.
    """

    started = Signal(str)
    failed = Signal(str)

    def __init__(self, make_demo: Callable[[], DemoLike] = real_demo,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._make_demo = make_demo
        self.demo: DemoLike | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._up = False  # the server answered (set on the GUI thread)
        # Results cross back to the GUI thread as queued signals.
        self._done.connect(self._finish, Qt.ConnectionType.QueuedConnection)

    _done = Signal(str, str)  # (url, error): one of them is empty

    def running(self) -> bool:
        """Whether a demo is starting or started."""
        return self.demo is not None

    def start(self) -> bool:
        """Start the demo in the background; False when one is already there."""
        if self.demo is not None or self._stopping.is_set():
            return False
        self.demo = self._make_demo()
        self._thread = threading.Thread(target=self._run, args=(self.demo,),
                                        name="kvwall-demo-start", daemon=True)
        self._thread.start()
        return True

    def _run(self, demo: DemoLike) -> None:
        from kvwall.app.demo.session import DemoUnavailable

        try:
            demo.start()
        except (DemoUnavailable, OSError) as exc:
            demo.stop()
            self._done.emit("", str(exc) or type(exc).__name__)
            return
        self._done.emit(demo.url, "")
        # This thread lives as long as the server: on Linux the server is told to end when
        # the thread that started it ends (PR_SET_PDEATHSIG), so it waits for stop().
        self._stopping.wait()
        demo.stop()

    def _finish(self, url: str, error: str) -> None:
        if error:
            log.warning("demo unavailable: %s", error)
            self.demo = None
            self.failed.emit(error)
        else:
            self._up = True
            self.started.emit(url)

    def stop(self) -> None:
        """Stop the demo (its thread stops it, after a start still under way); idempotent."""
        self._stopping.set()
        if self._thread is not None:
            if not self._up and self.demo is not None:
                self.demo.stop()  # still loading: cut it short (its start() then fails)
            self._thread.join(STOP_WAIT_S)
            self._thread = None
        self.demo = None
