"""The history store: one SQLite database per user that outlives a kvwall process.

The tray app and ``kvwall status --watch`` write every report into it; any kvwall reads
it: a one-shot ``kvwall status`` seeds its forecasts from it, the window seeds its plots,
and servers that stopped stay listed (:class:`~kvwall.budget.report.StoppedServer`).

SQLite from the standard library, in WAL mode (readers never block the writer), with a
busy timeout so two writers at once (the app plus a ``--watch``) wait for each other
instead of losing a poll. The schema is versioned with ``PRAGMA user_version``. Samples
are kept raw for :data:`RAW_S`, then downsampled to one per :data:`BUCKET_S` per slot or
pool, and dropped after :data:`KEEP_S` or beyond :data:`MAX_ROWS` rows per table, so the
file stays bounded. A damaged database is moved aside (``<name>.damaged-<time>``) and a
fresh one started; :attr:`HistoryStore.message` says so.

Qt-free: times are epoch seconds (``StatusReport.wall_time``); the trackers, which count
in monotonic seconds, are fed through the offset between the two clocks.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from kvwall.budget.forecast import FORGET_AFTER_S, POOL_HISTORY_S, ContextTracker, PoolTracker
from kvwall.budget.report import (
    KV_POOL_SLOT_ID,
    Forecast,
    ServerReport,
    SlotReport,
    StatusReport,
    StoppedServer,
)
from kvwall.monitors.snapshot import DeviceMemory, SlotState

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FILE_NAME = "history.sqlite3"
# Samples younger than this (seconds) are kept as polled: the slot tracker needs every
# poll of the last FORGET_AFTER_S to find the ends of requests.
RAW_S = 3600.0
# Older samples: one per slot or pool per bucket (seconds), the last of the bucket.
BUCKET_S = 60.0
# Nothing older than this (seconds) is kept; nor more than MAX_ROWS rows per table.
KEEP_S = 7 * 86400.0
MAX_ROWS = 500_000
# Servers not seen for longer than this (seconds) are no longer listed as stopped.
STOPPED_LISTED_S = 86400.0
# How long a writer waits for the other one (seconds) before giving up on one poll.
BUSY_TIMEOUT_S = 10.0
# Downsampling runs at most this often (seconds) per writer.
COMPACT_EVERY_S = 60.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS servers (
        key TEXT PRIMARY KEY, name TEXT NOT NULL, url TEXT NOT NULL,
        command TEXT NOT NULL, first_time REAL NOT NULL, last_time REAL NOT NULL,
        last_fill REAL)""",
    """CREATE TABLE IF NOT EXISTS slot_samples (
        key TEXT NOT NULL, slot INTEGER NOT NULL, time REAL NOT NULL,
        n_ctx INTEGER NOT NULL, tokens INTEGER, processing INTEGER NOT NULL,
        id_task INTEGER, unified INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS slot_samples_time ON slot_samples (time, key)",
    """CREATE TABLE IF NOT EXISTS pool_samples (
        device TEXT NOT NULL, time REAL NOT NULL, free_bytes INTEGER,
        used_bytes INTEGER, total_bytes INTEGER)""",
    "CREATE INDEX IF NOT EXISTS pool_samples_time ON pool_samples (time, device)",
)


class HistoryUnavailable(RuntimeError):
    """The store cannot be used (written by a newer kvwall, or not openable at all)."""


@dataclass(frozen=True)
class SlotSample:
    """One stored poll of one slot (``key`` the server's ``ServerReport.key``)."""

    key: str
    slot: int
    time: float
    n_ctx: int
    tokens: int | None
    is_processing: bool
    id_task: int | None
    unified: bool


@dataclass(frozen=True)
class PoolSample:
    """One stored poll of one memory pool."""

    device: str
    time: float
    free_bytes: int | None
    used_bytes: int | None
    total_bytes: int | None


def default_path() -> Path:
    """``history.sqlite3`` in the platform's per-user state directory."""
    from platformdirs import user_state_dir

    return Path(user_state_dir("kvwall")) / FILE_NAME


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _check(conn: sqlite3.Connection) -> int:
    """The schema version of an intact database.

    Raises:
        sqlite3.DatabaseError: the file is not a database, or fails its quick check.
    """
    row = conn.execute("PRAGMA quick_check").fetchone()
    if row is None or row[0] != "ok":
        raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
    version = conn.execute("PRAGMA user_version").fetchone()
    return int(version[0]) if version else 0


def _move_aside(path: Path, stamp: float) -> Path:
    """Rename a damaged database (and its WAL files) out of the way; the new name."""
    target = path.with_name(f"{path.name}.damaged-{int(stamp)}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(target) + suffix))
    return target


class HistoryStore:
    """The per-user history database (see the module docstring).

    Args:
        path: the database file (default :func:`default_path`); its folder is created.
        clock: epoch seconds, for downsampling and the stopped-server horizon.

    Raises:
        HistoryUnavailable: written by a newer kvwall (its schema is left as it is), or
            the file cannot be opened even after a damaged one was moved aside.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._clock = clock
        self.message: str | None = None  # set when a damaged database was moved aside
        self._last_compact = 0.0
        self._compacted_to = 0.0  # samples before this were downsampled by this writer
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(self.path)
            version = _check(conn)
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            moved = _move_aside(self.path, self._clock())
            self.message = (f"the history database {self.path} was damaged ({e}); it was "
                            f"moved aside to {moved.name} and a new one started")
            log.warning("%s", self.message)
            try:
                conn = _connect(self.path)
                version = _check(conn)
            except sqlite3.DatabaseError as e2:
                raise HistoryUnavailable(f"cannot open {self.path}: {e2}") from e2
        if version > SCHEMA_VERSION:
            conn.close()
            raise HistoryUnavailable(
                f"{self.path} was written by a newer kvwall (schema {version}, this one "
                f"reads {SCHEMA_VERSION}); history is off")
        if version < SCHEMA_VERSION:
            with _transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return conn

    # ------------------------------------------------------------------ writing

    def record(self, report: StatusReport) -> None:
        """Store one report: its servers, slots and memory pools (one transaction).

        Raises:
            sqlite3.Error: the write failed (the other writer held the lock for longer
                than :data:`BUSY_TIMEOUT_S`, the disk is full...).
        """
        t = report.wall_time
        with _transaction(self._conn):
            for s in report.servers:
                self._record_server(s, t)
            self._conn.executemany(
                "INSERT INTO pool_samples VALUES (?, ?, ?, ?, ?)",
                [(d.id, t, d.free_bytes, d.used_bytes, d.total_bytes) for d in report.devices])
        if t - self._last_compact >= COMPACT_EVERY_S:
            self._last_compact = t
            self.compact(t)

    def _record_server(self, s: ServerReport, t: float) -> None:
        command = " ".join(s.config.argv) if s.config is not None and s.config.argv else ""
        self._conn.execute(
            "INSERT INTO servers VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "name=excluded.name, url=excluded.url, command=CASE WHEN excluded.command != '' "
            "THEN excluded.command ELSE servers.command END, last_time=excluded.last_time, "
            "last_fill=excluded.last_fill",
            (s.key, s.name, s.url, command, t, t, fullest_fill(s)))
        unified = 1 if s.pool is not None else 0
        # The shared KV pool is stored as slot KV_POOL_SLOT_ID for the plots; the
        # trackers rebuild it from the slots.
        rows = (*s.slots, *((s.pool,) if s.pool is not None else ()))
        self._conn.executemany(
            "INSERT INTO slot_samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(s.key, x.id, t, x.n_ctx, x.tokens, int(x.is_processing), x.id_task, unified)
             for x in rows])

    def compact(self, now: float) -> None:
        """Downsample samples older than :data:`RAW_S`, drop the expired, bound the rows.

        Incremental: after its first call a writer downsamples only what aged past
        :data:`RAW_S` since (from the start of that bucket), so a call costs little.
        """
        cutoff = now - RAW_S
        start = max(0.0, (self._compacted_to // BUCKET_S) * BUCKET_S)
        with _transaction(self._conn):
            for table, who in (("slot_samples", "key, slot"), ("pool_samples", "device")):
                self._conn.execute(
                    f"DELETE FROM {table} WHERE time >= ? AND time < ? AND rowid NOT IN "
                    f"(SELECT max(rowid) FROM {table} WHERE time >= ? AND time < ? "
                    f"GROUP BY {who}, CAST(time / ? AS INTEGER))",
                    (start, cutoff, start, cutoff, BUCKET_S))
                self._conn.execute(f"DELETE FROM {table} WHERE time < ?", (now - KEEP_S,))
                self._conn.execute(
                    f"DELETE FROM {table} WHERE rowid <= (SELECT max(rowid) - ? FROM {table})",
                    (MAX_ROWS,))
            self._conn.execute("DELETE FROM servers WHERE last_time < ?", (now - KEEP_S,))
        self._compacted_to = max(self._compacted_to, cutoff)

    # ------------------------------------------------------------------ reading

    def slot_samples(self, since: float, keys: Iterable[str] | None = None
                     ) -> list[SlotSample]:
        """Slot samples from ``since`` (epoch seconds) on, by server, slot and time."""
        query = ("SELECT key, slot, time, n_ctx, tokens, processing, id_task, unified "
                 "FROM slot_samples WHERE time >= ?")
        params: list[object] = [since]
        if keys is not None:
            wanted = sorted(set(keys))
            query += f" AND key IN ({', '.join('?' * len(wanted))})"
            params += wanted
        rows = self._conn.execute(query + " ORDER BY key, time, slot", params).fetchall()
        return [SlotSample(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], bool(r[7]))
                for r in rows]

    def pool_samples(self, since: float) -> list[PoolSample]:
        """Memory-pool samples from ``since`` (epoch seconds) on, by pool and time."""
        rows = self._conn.execute(
            "SELECT device, time, free_bytes, used_bytes, total_bytes FROM pool_samples "
            "WHERE time >= ? ORDER BY device, time", (since,)).fetchall()
        return [PoolSample(*r) for r in rows]

    def server_names(self) -> dict[str, tuple[str, str]]:
        """Server key -> (name, url) of every server stored."""
        return {r[0]: (r[1], r[2])
                for r in self._conn.execute("SELECT key, name, url FROM servers")}

    def stopped(self, running: Sequence[ServerReport], now: float,
                within_s: float = STOPPED_LISTED_S) -> tuple[StoppedServer, ...]:
        """Servers seen within ``within_s`` that are not in ``running``, latest first.

        A server restarted with the same command and URL (a new pid, a new key) is
        running, not stopped.
        """
        keys = {s.key for s in running}
        again = {(s.url, " ".join(s.config.argv) if s.config and s.config.argv else "")
                 for s in running}
        rows = self._conn.execute(
            "SELECT key, name, url, command, last_time, last_fill FROM servers "
            "WHERE last_time >= ? ORDER BY last_time DESC", (now - within_s,)).fetchall()
        return tuple(StoppedServer(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows
                     if r[0] not in keys and (r[2], r[3]) not in again)

    def rows(self) -> dict[str, int]:
        """Rows per table (the bounded-size figure)."""
        return {t: int(self._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in ("servers", "slot_samples", "pool_samples")}

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self._conn.close()


class _transaction:  # noqa: N801 - used as a statement: ``with _transaction(conn):``
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): the write lock is taken
    up front, so two writers queue on the busy timeout instead of failing mid-way."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def fullest_fill(server: ServerReport) -> float | None:
    """The share of the fullest slot's (or shared pool's) context in use, None if unknown."""
    rows = (*server.slots, *((server.pool,) if server.pool else ()))
    fills = [x.tokens / x.n_ctx for x in rows if x.tokens is not None and x.n_ctx > 0]
    return min(1.0, max(fills)) if fills else None


# ---------------------------------------------------------------------- seeding trackers


def _polls(samples: Sequence[SlotSample]) -> Iterator[tuple[str, float, list[SlotSample]]]:
    """(server key, time, its slots) per stored poll, in order."""
    for (key, t), group in groupby(samples, key=lambda s: (s.key, s.time)):
        yield key, t, list(group)


def seed_trackers(store: HistoryStore, tracker: ContextTracker, pool_tracker: PoolTracker,
                  *, now_wall: float, now_monotonic: float,
                  keys: Iterable[str] | None = None) -> int:
    """Replay the stored polls of the last minutes into fresh trackers.

    A one-shot ``kvwall status`` then forecasts as a long-running one would: the slot
    histories of the last :data:`~kvwall.budget.forecast.FORGET_AFTER_S` and the pool
    trends of the last :data:`~kvwall.budget.forecast.POOL_HISTORY_S`.

    Args:
        store: the history store.
        tracker, pool_tracker: the engine's trackers (fed in monotonic seconds).
        now_wall, now_monotonic: the same instant on both clocks.
        keys: only these servers' slots (None: every server's).

    Returns:
        The stored polls replayed.
    """
    offset = now_monotonic - now_wall
    replayed = 0
    for key, t, group in _polls(store.slot_samples(now_wall - FORGET_AFTER_S, keys)):
        slots = [SlotState(s.slot, s.n_ctx, s.tokens, s.is_processing, s.id_task)
                 for s in group if s.slot != KV_POOL_SLOT_ID]
        tracker.observe(key, slots, t + offset, unified=group[0].unified)
        replayed += 1
    pools = store.pool_samples(now_wall - POOL_HISTORY_S)
    for t, same_time in groupby(sorted(pools, key=lambda p: p.time), key=lambda p: p.time):
        devices = [DeviceMemory(p.device, "", p.device, False, p.total_bytes, p.used_bytes,
                                p.free_bytes) for p in same_time]
        pool_tracker.observe(devices, t + offset)
    return replayed


def _thinned(times: Iterable[float], step_s: float) -> set[float]:
    """The poll times kept when at most one poll per ``step_s`` seconds is wanted."""
    kept: set[float] = set()
    last = -math.inf
    for t in sorted(times):
        if t - last >= step_s:
            kept.add(t)
            last = t
    return kept


def stored_reports(store: HistoryStore, since: float, *, now_wall: float,
                   now_monotonic: float, step_s: float = 0.0) -> list[StatusReport]:
    """The stored polls from ``since`` (epoch seconds) on, as reports a history view can
    replay after a restart: each pool's used and free bytes and each slot's cells (the
    memory split by server and the forecasts are not stored).

    Args:
        store: the history store.
        since: epoch seconds of the oldest poll wanted.
        now_wall, now_monotonic: the same instant on both clocks (the reports'
            ``timestamp`` is monotonic like a live one's).
        step_s: at most one poll per this many seconds (0: every stored poll), so a
            view replays an hour in a few hundred reports.
    """
    offset = now_monotonic - now_wall
    names = store.server_names()
    pool_rows, slot_rows = store.pool_samples(since), store.slot_samples(since)
    kept = _thinned({p.time for p in pool_rows} | {s.time for s in slot_rows}, step_s)
    devices: dict[float, list[DeviceMemory]] = {}
    for p in pool_rows:
        if p.time not in kept:
            continue
        devices.setdefault(p.time, []).append(DeviceMemory(
            p.device, "", p.device, False, p.total_bytes, p.used_bytes, p.free_bytes))
    servers: dict[float, list[ServerReport]] = {}
    for key, t, group in _polls(slot_rows):
        if t not in kept:
            continue
        name, url = names.get(key, (key, ""))
        rows = {s.slot: SlotReport(s.slot, s.n_ctx, s.tokens, s.is_processing, Forecast(),
                                   id_task=s.id_task) for s in group}
        pool = rows.pop(KV_POOL_SLOT_ID, None)
        servers.setdefault(t, []).append(ServerReport(
            key=key, pid=None, url=url, name=name, model_path=None, health="ok", plan=None,
            memory=(), slots=tuple(rows.values()), pool=pool, max_ctx={},
            more_servers_fit=None, advice=(), errors=()))
    return [StatusReport(t + offset, t, tuple(devices.get(t, ())), tuple(servers.get(t, ())))
            for t in sorted(set(devices) | set(servers))]


def open_store(path: str | os.PathLike[str] | None = None) -> tuple[HistoryStore | None, str | None]:
    """The store, or (None, why) when history is off; (store, message) after a repair."""
    try:
        store = HistoryStore(path)
    except (HistoryUnavailable, OSError, sqlite3.Error) as e:
        log.warning("history is off: %s", e)
        return None, f"history is off: {e}"
    return store, store.message
