"""The servers and slots table: one row per server, then one per slot.

:func:`table_rows` turns a StatusReport into immutable rows (formatting only);
:class:`ServersTableModel` shows them and changes only the rows that changed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kvwall.budget.alerts import server_label, slot_fill, slot_level
from kvwall.budget.report import (
    RefusedRequests,
    ServerReport,
    SlotReport,
    StatusReport,
    StoppedServer,
)
from kvwall.budget.units import format_duration
from kvwall.widgets.viewmodels import pools
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

# Short headers so that every column fits an 800 px window; the tooltips say them whole.
COLUMNS = ("Server / slot", "Model", "Context", "Fill", "Per turn", "Full in", "Time left",
           "Health")
COLUMN_TIPS = ("The server (its alias, else name:port) and its slots",
               "The model file", "Context per slot (tokens) × slots", "Tokens the slot holds",
               "Tokens each request adds (the forecast's step)",
               "Requests until the slot is full", "Time until the slot is full, while the "
               "agent is active", "The server's health; the slot's state")
MODEL_COLUMN = 1  # the column that gives way (elided) when the window is narrow

RowLevel = Literal["ok", "warning", "critical", "stopped"]
LEVEL_COLORS = {"ok": None, "warning": QColor("#c77700"), "critical": QColor("#c62828"),
                "stopped": QColor("#9e9e9e")}
REFUSED_MARK = "refused"


@dataclass(frozen=True)
class TableRow:
    """One row: a server (``slot_id`` None) or one of its slots."""

    server_key: str
    slot_id: int | None
    cells: tuple[str, ...]
    level: RowLevel = "ok"
    tooltip: str = ""

    @property
    def is_server(self) -> bool:
        return self.slot_id is None


def _fmt_int(n: int | float | None) -> str:
    return "–" if n is None else f"{round(n):,}"


def refused_phrase(refused: RefusedRequests) -> str:
    """``3 requests refused (context exceeded), last at 19:15``."""
    n = refused.count
    text = f"{n} request{'s' if n != 1 else ''} refused (context exceeded)"
    if refused.last_time is not None:
        text += f", last at {time.strftime('%H:%M', time.localtime(refused.last_time))}"
    return text


def slot_row(server: ServerReport, slot: SlotReport, label: str, full_percent: float = 95.0,
             warn_turns: int = 5, critical_turns: int = 2, refused: bool = False) -> TableRow:
    """A slot's row; ``refused`` marks the slot that refused requests (critical)."""
    f = slot.forecast
    fill = slot_fill(slot)
    fill_text = "–" if fill is None else f"{fill:.0%}  ({_fmt_int(slot.tokens)})"
    turns = pools.requests_left(f.turns_left)
    time_left = "–" if f.seconds_left is None else format_duration(f.seconds_left)
    state = "busy" if slot.is_processing else "idle"
    tip = (f"forecast confidence {f.confidence:.0%}, from {f.turns_seen} finished "
           f"request{'s' if f.turns_seen != 1 else ''}" if f.turns_seen
           else "no finished request seen yet")
    level: RowLevel = slot_level(slot, full_percent, warn_turns, critical_turns)
    if refused and server.refused_requests is not None:
        state = f"{state} · {REFUSED_MARK}"
        level = "critical"
        tip = f"{refused_phrase(server.refused_requests)}\n{tip}"
    return TableRow(server.key, slot.id,
                    (label, "", _fmt_int(slot.n_ctx), fill_text,
                     "–" if f.tokens_per_turn is None else f"{f.tokens_per_turn:,.0f}",
                     turns, time_left, state), level, tip)


def server_row(server: ServerReport) -> TableRow:
    """A server's row: its label, model, context per slot and health."""
    plan = server.plan
    ctx = "–"
    if plan is not None and plan.ok:
        ctx = f"{plan.n_ctx_seq:,} × {plan.n_seq}" + ("  (unified)" if plan.kv_unified else "")
    elif server.slots:
        ctx = f"{server.slots[0].n_ctx:,} × {len(server.slots)}"
    who = server.url if server.pid is None else f"{server.url}  (pid {server.pid})"
    level: RowLevel = "critical" if server.health in (
        "unreachable", "not responding", "error") else (
        "warning" if server.health in ("needs API key",) else "ok")
    health: str = server.health
    tips = list(server.errors)
    if server.refused_requests is not None and server.refused_requests.count:
        health = f"{health} · {server.refused_requests.count} {REFUSED_MARK}"
        level = "critical"
        tips.insert(0, refused_phrase(server.refused_requests))
    model = server.model_path or server.name
    return TableRow(server.key, None,
                    (server_label(server), model.rsplit("/", 1)[-1], ctx, "", "", "", "",
                     health), level, "\n".join(tips) or who)


def stopped_row(gone: StoppedServer) -> TableRow:
    """A server that stopped, greyed: "stopped 19:15", its last fill, and (in the
    tooltip) the command that restarts it."""
    when = time.strftime("%H:%M", time.localtime(gone.stopped_time))
    fill = "–" if gone.last_fill is None else f"{gone.last_fill:.0%}"
    tip = f"{gone.url}\nrestart with: {gone.command}" if gone.command else gone.url
    return TableRow(gone.key, None, (gone.name, "", "", fill, "", "", "", f"stopped {when}"),
                    "stopped", tip)


def _refused_slots(server: ServerReport) -> frozenset[int]:
    """The slots to mark for refused requests: the fullest ones (a request that does not
    fit is refused by the slot it was given, which the server does not name)."""
    if server.refused_requests is None or not server.refused_requests.count:
        return frozenset()
    fills = {s.id: slot_fill(s) or 0.0 for s in server.slots}
    top = max(fills.values(), default=0.0)
    return frozenset(i for i, v in fills.items() if v == top)


def _server_rows(server: ServerReport, full_percent: float, warn_turns: int,
                 critical_turns: int) -> list[TableRow]:
    rows = [server_row(server)]
    marked = _refused_slots(server)
    for slot in server.slots:
        rows.append(slot_row(server, slot, f"    slot {slot.id}", full_percent, warn_turns,
                             critical_turns, slot.id in marked))
    if server.pool is not None:
        refused = bool(server.refused_requests and server.refused_requests.count)
        rows.append(slot_row(server, server.pool, "    shared pool", full_percent,
                             warn_turns, critical_turns, refused))
    return rows


def table_rows(report: StatusReport, full_percent: float = 95.0, warn_turns: int = 5,
               critical_turns: int = 2) -> tuple[TableRow, ...]:
    """Rows for ``report``; slots coloured by :func:`kvwall.budget.alerts.slot_level` with the
    user's notification thresholds; the servers that stopped follow, greyed."""
    rows: list[TableRow] = []
    for server in report.servers:
        rows += _server_rows(server, full_percent, warn_turns, critical_turns)
    running = {s.key for s in report.servers}
    rows += [stopped_row(gone) for gone in report.stopped_servers if gone.key not in running]
    return tuple(rows)


class ServersTableModel(QAbstractTableModel):
    """Rows from :func:`table_rows`; :meth:`set_rows` emits only what changed."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: tuple[TableRow, ...] = ()
        self._bold = QFont()
        self._bold.setBold(True)

    def set_rows(self, rows: Sequence[TableRow]) -> None:
        rows = tuple(rows)
        if rows == self._rows:
            return
        same_shape = len(rows) == len(self._rows) and all(
            (a.server_key, a.slot_id) == (b.server_key, b.slot_id) for a, b in zip(rows, self._rows, strict=True))
        if not same_shape:
            self.beginResetModel()
            self._rows = rows
            self.endResetModel()
            return
        old, self._rows = self._rows, rows
        for i, (a, b) in enumerate(zip(old, rows, strict=True)):
            if a != b:
                self.dataChanged.emit(self.index(i, 0), self.index(i, len(COLUMNS) - 1))

    def rows(self) -> tuple[TableRow, ...]:
        return self._rows

    def row_of(self, server_key: str, slot_id: int | None = None) -> int:
        for i, r in enumerate(self._rows):
            if r.server_key == server_key and r.slot_id == slot_id:
                return i
        return -1

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008,N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008,N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802 (Qt API)
                   role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return COLUMN_TIPS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex,
             role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        row = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return row.cells[index.column()]
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.tooltip or None
        if role == Qt.ItemDataRole.FontRole and row.is_server:
            return self._bold
        if role == Qt.ItemDataRole.ForegroundRole:
            color = LEVEL_COLORS.get(row.level)
            if color is not None and (row.level == "stopped" or index.column() in (3, 5, 6, 7)):
                return QBrush(color)
        if role == Qt.ItemDataRole.TextAlignmentRole and index.column() in (2, 3, 4, 5, 6):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.UserRole:
            return row.server_key
        return None
