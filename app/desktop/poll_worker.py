"""Polling off the GUI thread: a QObject worker on its own QThread, driven by a QTimer that
lives in that thread, delivering immutable results by signal.

One poll at a time: the next poll is scheduled only after the previous one returned, so a
hanging server delays polls instead of piling them up. The poll itself runs on a daemon
thread of its own and comes back by signal, so the QThread never blocks: stopping always
ends it at once (no "QThread: Destroyed while thread is still running" at quit), and a
poll stuck in a hostile server or file is abandoned, never waited for. Sleep/resume is detected from the
gap between the wall clock and the monotonic clock (which stops while suspended on Linux)
or from a monotonic gap far beyond the interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvwall.app.desktop.logging_setup import FailureLog
from kvwall.budget.report import StatusReport
from kvwall.budget.units import sanitize
from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

log = logging.getLogger(__name__)

# A gap this much larger than the interval counts as a sleep (or a stopped process).
RESUME_GAP_S = 30.0


@dataclass(frozen=True)
class PollResult:
    """What one poll delivers to the GUI.

    Attributes:
        report: the analysed poll.
        what_if: server key -> ``kvwall.widgets.viewmodels.whatif_inputs.WhatIfInputs`` (servers that can
            be simulated).
        resumed_after_s: set on the first poll after a sleep/resume or a long stall.
        poll_seconds: how long the poll took (monotonic).
        past: on the first poll, the polls of the history store (oldest first), so the
            history plots survive a restart; empty afterwards.
    """

    report: StatusReport
    what_if: Mapping[str, Any] = field(default_factory=dict)
    resumed_after_s: float | None = None
    poll_seconds: float = 0.0
    past: tuple[StatusReport, ...] = ()


class PollWorker(QObject):
    """Calls ``poll_fn`` every ``interval_s`` on the thread it lives in.

    ``poll_fn(resumed: bool)`` returns a :class:`PollResult` or a StatusReport; it may
    block (it runs on the worker thread). Exceptions become :attr:`failed` (logged once
    per cause) and polling goes on.

    Signals:
        polled(PollResult), failed(str), resumed(float): seconds asleep.
    """

    polled = Signal(object)
    failed = Signal(str)
    resumed = Signal(float)
    _stop_requested = Signal()
    _poll_requested = Signal()
    _interval_requested = Signal(float)
    _poll_done = Signal(object, object, float)  # (gap, outcome, started at)

    def __init__(self, poll_fn: Callable[..., Any], interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._poll_fn = poll_fn
        self._interval_s = interval_s
        self._clock = clock
        self._wall = wall_clock
        self._timer: QTimer | None = None
        self._last: tuple[float, float] | None = None
        self._busy = False
        self._stopped = False
        self._failures = FailureLog(log)
        self.polls = 0
        self._stop_requested.connect(self._stop)
        self._poll_requested.connect(self._poll_soon)
        self._interval_requested.connect(self._set_interval)
        self._poll_done.connect(self._finish)

    # Called from any thread: they queue into the worker's thread.
    def request_stop(self) -> None:
        self._stop_requested.emit()

    def request_poll(self) -> None:
        self._poll_requested.emit()

    def request_interval(self, seconds: float) -> None:
        self._interval_requested.emit(float(seconds))

    @Slot()
    def start(self) -> None:
        """Create the timer in this thread and poll at once."""
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._tick)
        self._timer.start(0)

    @Slot()
    def _poll_soon(self) -> None:
        if self._timer is not None and not self._busy and not self._stopped:
            self._timer.start(0)

    @Slot(float)
    def _set_interval(self, seconds: float) -> None:
        self._interval_s = max(0.1, seconds)
        if self._timer is not None and self._timer.isActive():
            self._timer.start(int(self._interval_s * 1000))

    @Slot()
    def _stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.stop()
        thread = self.thread()
        if thread is not None:
            thread.quit()

    def _gap(self) -> float | None:
        mono, wall = self._clock(), self._wall()
        last, self._last = self._last, (mono, wall)
        if last is None:
            return None
        d_mono, d_wall = mono - last[0], wall - last[1]
        slept = d_wall - d_mono  # suspended time: the monotonic clock did not advance
        if slept > RESUME_GAP_S:
            return slept
        if d_mono > self._interval_s + RESUME_GAP_S:
            return d_mono - self._interval_s
        return None

    @Slot()
    def _tick(self) -> None:
        if self._stopped:
            return
        self._busy = True
        gap = self._gap()
        if gap is not None:
            log.info("resumed after %.0f s (sleep or stall); forecasts restart", gap)
            self.resumed.emit(gap)
        threading.Thread(target=self._run_poll, args=(gap, self._clock()),
                         name="kvwall-poll-call", daemon=True).start()

    def _run_poll(self, gap: float | None, start: float) -> None:
        """On the poll's own daemon thread: call ``poll_fn`` and send back what became of it."""
        outcome: object
        try:
            outcome = self._poll_fn(gap is not None)
        except Exception as exc:  # noqa: BLE001 - a poll never kills the thread
            outcome = exc
        try:
            self._poll_done.emit(gap, outcome, start)
        except RuntimeError:  # the worker is gone: the app quit while this poll was stuck
            pass

    @Slot(object, object, float)
    def _finish(self, gap: float | None, outcome: object, start: float) -> None:
        """Back on the worker's thread: deliver the poll and schedule the next one."""
        self._busy = False
        if self._stopped:
            return
        if isinstance(outcome, Exception):
            cause = sanitize(f"{type(outcome).__name__}: {outcome}")
            self._failures.failure(type(outcome).__name__, "poll failed: %s", cause,
                                   exc_info=outcome)
            self.failed.emit(cause)
        else:
            self._failures.recovered(None, "polling works again")
            self.polls += 1
            self.polled.emit(self._result(outcome, gap, start))
        if self._timer is not None:
            self._timer.start(int(self._interval_s * 1000))

    def _result(self, out: object, gap: float | None, start: float) -> object:
        """``poll_fn``'s answer as a :class:`PollResult` with its gap and duration."""
        if isinstance(out, StatusReport):
            out = PollResult(out)
        if gap is not None and isinstance(out, PollResult) and out.resumed_after_s is None:
            out = PollResult(out.report, out.what_if, gap, out.poll_seconds, out.past)
        if isinstance(out, PollResult) and not out.poll_seconds:
            out = PollResult(out.report, out.what_if, out.resumed_after_s,
                             self._clock() - start, out.past)
        return out


class PollThread(QObject):
    """Owns a :class:`PollWorker` and its QThread; :meth:`stop` ends both."""

    def __init__(self, worker: PollWorker, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker = worker
        self._qthread = QThread()
        # Public for tests and callers; it shadows QObject.thread(), which nobody calls here.
        self.thread = self._qthread  # type: ignore[assignment, method-assign]
        self._qthread.setObjectName("kvwall-poll")
        worker.moveToThread(self._qthread)
        self._qthread.started.connect(worker.start)
        # No deleteLater at finish: a poll abandoned at quit may still hold the worker and
        # signal it; the Python reference keeps it alive until then.

    def start(self) -> None:
        self._qthread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop polling and wait for the thread; a running poll is abandoned, not waited for.

        Returns False when the thread did not end in time.
        """
        if not self._qthread.isRunning():
            return True
        self.worker.request_stop()
        ok = bool(self._qthread.wait(int(timeout_s * 1000)))
        if not ok:
            log.warning("the poll thread did not stop within %.0f s", timeout_s)
        return ok
