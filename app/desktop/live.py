"""The live poll: monitors (Poller) -> budget (Engine) -> PollResult, run on the poll
thread, recorded into the history store. Qt-free; the one place where the real world is
wired for the app."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from kvwall.app.desktop.poll_worker import PollResult
from kvwall.budget.remote_report import merge_remotes, remote_entries
from kvwall.budget.report import StatusReport
from kvwall.monitors.remote import RemoteGroup
from kvwall.widgets.viewmodels.whatif_inputs import WhatIfInputs

if TYPE_CHECKING:  # the engine and the poller are imported when a LiveSource is made
    from kvwall.budget.engine import Engine
    from kvwall.budget.history import HistoryStore
    from kvwall.monitors.devices import MemorySources
    from kvwall.monitors.poller import Poller
    from kvwall.widgets.viewmodels.settings_model import Settings

log = logging.getLogger(__name__)

# The stored polls replayed into the window's plots after a restart: the last PAST_S
# seconds, at most one poll per PAST_STEP_S (the GUI thread replays them at start).
PAST_S = 3600.0
PAST_STEP_S = 10.0


def build_what_if_inputs(engine: Engine, report: StatusReport) -> dict[str, WhatIfInputs]:
    """Model + configuration + budget for every server that can be simulated.

    The budget, device ids and each GPU's room are the engine's own
    (``ServerReport.restart_budget_bytes``, ``device_ids``, ``device_room``), so the
    what-if panel agrees with the advice.
    """
    out: dict[str, WhatIfInputs] = {}
    for server in report.servers:
        config = server.config
        budget = server.restart_budget_bytes
        if config is None or server.plan is None or not server.model_path or budget is None:
            continue
        if not config.argv:
            continue  # URL-only: no command line to edit
        model, _error = engine.model(server.model_path)
        if model is None:
            continue
        out[server.key] = WhatIfInputs(server.key, model, config, budget, server.device_ids,
                                       device_free=server.device_room)
    return out


class LiveSource:
    """Callable ``(resumed) -> PollResult`` over the real machine.

    Args:
        extra_urls, api_keys: the user's configured servers (keys never logged).
        poller, engine: injectable for tests; default the real ones.
        history: the history store: the first poll seeds the engine's forecasts from it
            and hands the stored polls to the window (``PollResult.past``); every report
            is recorded into it and lists the servers that stopped. None: no history.
        clock, monotonic: the two clocks (epoch and monotonic seconds) the stored
            times are mapped through.
    """

    def __init__(self, extra_urls: Sequence[str] = (), api_keys: Mapping[str, str] | None = None,
                 *, poller: Poller | None = None, engine: Engine | None = None,
                 history: HistoryStore | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        from kvwall.budget.engine import Engine

        if poller is None:
            from kvwall.monitors.devices import MemorySources
            from kvwall.monitors.poller import Poller

            self._memory: MemorySources | None = MemorySources()
            poller = Poller(memory_sources=self._memory, extra_urls=extra_urls,
                            api_keys=dict(api_keys or {}))
        else:
            self._memory = None
        self.poller = poller
        self.engine = engine or Engine()
        self._lock = threading.Lock()
        self._pending: tuple[tuple[str, ...], dict[str, str]] | None = None
        self._grab_share: float | None = None
        self._last_keys: tuple[str, ...] = ()
        self._remotes: RemoteGroup | None = None  # other machines' exporters (issue 11)
        self.history = history
        self._clock, self._monotonic = clock, monotonic
        self._seeded = False

    def set_servers(self, extra_urls: Sequence[str], api_keys: Mapping[str, str]) -> None:
        """Change the configured servers (any thread); applied at the next poll."""
        with self._lock:
            self._pending = (tuple(extra_urls), dict(api_keys))

    def apply_settings(self, settings: Settings) -> None:
        """What the poll needs from the user's settings: the grab share and the remotes."""
        self.set_grab_share(settings["grab_percent"] / 100)
        self.set_remotes([(r.url, r.api_key) for r in settings["remotes"]])

    def set_remotes(self, entries: Sequence[tuple[str, str | None]]) -> None:
        """Change the remote machines, (exporter URL, token) pairs; applied at the next poll."""
        try:
            group = RemoteGroup(remote_entries(entries)) if entries else None
        except ValueError as e:  # the settings validate URLs; belt and braces
            log.warning("remote machines ignored: %s", e)
            group = None
        with self._lock:
            self._remotes = group

    def set_grab_share(self, fraction: float) -> None:
        """Report another process's growth from ``fraction`` of a GPU on (any thread;
        applied at the next poll). The app passes the user's ``grab_percent / 100`` so
        the notification threshold can be lower than the engine's default."""
        with self._lock:
            self._grab_share = fraction

    def __call__(self, resumed: bool = False) -> PollResult:
        with self._lock:
            pending, self._pending = self._pending, None
            share, self._grab_share = self._grab_share, None
        detector = getattr(self.engine, "grab_detector", None)
        if share is not None and share > 0 and detector is not None:
            detector.share = share
        if pending is not None:
            self.poller.extra_urls, self.poller.api_keys = pending[0], pending[1]
        if resumed:
            # Growth measured across a sleep is not growth: restart the slot, pool and
            # process histories.
            forget = getattr(self.engine, "forget_history", None)
            if forget is not None:
                forget()
            else:
                for key in self._last_keys:
                    self.engine.tracker.forget(key)
        past = self._seed_once()
        snapshot = self.poller.poll()
        report = self._recorded(self.engine.analyse(snapshot))
        self._last_keys = tuple(s.key for s in report.servers)
        remotes = self._remotes
        if remotes is not None:  # shown like local ones: gauge, table, forecasts, notices
            report = merge_remotes(report, remotes.read())
        try:
            inputs = build_what_if_inputs(self.engine, report)
        except Exception:  # what-ifs are optional; the report is not
            log.exception("what-if inputs failed")
            inputs = {}
        return PollResult(report, inputs, past=past)

    def _seed_once(self) -> tuple[StatusReport, ...]:
        """On the first poll: the engine's trackers seeded from the store, and the
        stored polls for the window's plots (both empty without a store)."""
        if self._seeded or self.history is None:
            return ()
        self._seeded = True
        from kvwall.budget.history import seed_trackers, stored_reports

        wall, mono = self._clock(), self._monotonic()
        try:
            seed_trackers(self.history, self.engine.tracker, self.engine.pool_tracker,
                          now_wall=wall, now_monotonic=mono)
            return tuple(stored_reports(self.history, wall - PAST_S, now_wall=wall,
                                        now_monotonic=mono, step_s=PAST_STEP_S))
        except Exception:  # history is optional; the poll is not
            log.exception("history replay failed")
            return ()

    def _recorded(self, report: StatusReport) -> StatusReport:
        """The report written into the store, with the servers that stopped added."""
        if self.history is None:
            return report
        try:
            self.history.record(report)
            stopped = self.history.stopped(report.servers, report.wall_time)
        except (sqlite3.Error, OSError) as e:  # a lost sample never costs the poll
            log.warning("history write failed: %s", e)
            return report
        return dataclasses.replace(report, stopped_servers=stopped)

    def close(self) -> None:
        self.poller.close()
        if self.history is not None:
            self.history.close()
        if self._memory is not None:
            self._memory.close()
