"""The servers and slots table: one row per server, then one per slot.

:func:`table_rows` turns a StatusReport into immutable rows (formatting only);
:class:`ServersTableModel` shows them and changes only the rows that changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvwall.budget.alerts import slot_fill, slot_level
from kvwall.budget.report import ServerReport, SlotReport, StatusReport
from kvwall.budget.units import format_duration
from kvwall.widgets.viewmodels import pools
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

COLUMNS = ("Server / slot", "Model", "Context per slot", "Fill", "Tokens per turn",
           "Full in", "Time left", "Health")

LEVEL_COLORS = {"ok": None, "warning": QColor("#c77700"), "critical": QColor("#c62828")}


@dataclass(frozen=True)
class TableRow:
    """One row: a server (``slot_id`` None) or one of its slots."""

    server_key: str
    slot_id: int | None
    cells: tuple[str, ...]
    level: str = "ok"
    tooltip: str = ""

    @property
    def is_server(self) -> bool:
        return self.slot_id is None


def _fmt_int(n: int | float | None) -> str:
    return "–" if n is None else f"{round(n):,}"


def slot_row(server: ServerReport, slot: SlotReport, label: str, full_percent: float = 95.0,
             warn_turns: int = 5, critical_turns: int = 2) -> TableRow:
    f = slot.forecast
    fill = slot_fill(slot)
    fill_text = "–" if fill is None else f"{fill:.0%}  ({_fmt_int(slot.tokens)})"
    turns = pools.requests_left(f.turns_left)
    time_left = "–" if f.seconds_left is None else format_duration(f.seconds_left)
    state = "busy" if slot.is_processing else "idle"
    tip = (f"forecast confidence {f.confidence:.0%}, from {f.turns_seen} finished "
           f"request{'s' if f.turns_seen != 1 else ''}" if f.turns_seen
           else "no finished request seen yet")
    return TableRow(server.key, slot.id,
                    (label, "", _fmt_int(slot.n_ctx), fill_text,
                     "–" if f.tokens_per_turn is None else f"{f.tokens_per_turn:,.0f}",
                     turns, time_left, state),
                    slot_level(slot, full_percent, warn_turns, critical_turns), tip)


def server_row(server: ServerReport) -> TableRow:
    plan = server.plan
    ctx = "–"
    if plan is not None and plan.ok:
        ctx = f"{plan.n_ctx_seq:,} × {plan.n_seq}" + ("  (unified)" if plan.kv_unified else "")
    elif server.slots:
        ctx = f"{server.slots[0].n_ctx:,} × {len(server.slots)}"
    who = server.url if server.pid is None else f"{server.url}  (pid {server.pid})"
    level = "critical" if server.health in ("unreachable", "not responding", "error") else (
        "warning" if server.health in ("needs API key",) else "ok")
    tip = "\n".join(server.errors)
    model = server.model_path or server.name
    return TableRow(server.key, None,
                    (server.name, model.rsplit("/", 1)[-1], ctx, "", "", "", "", server.health),
                    level, tip or who)


def table_rows(report: StatusReport, full_percent: float = 95.0, warn_turns: int = 5,
               critical_turns: int = 2) -> tuple[TableRow, ...]:
    """Rows for ``report``; slots coloured by :func:`kvwall.budget.alerts.slot_level` with the
    user's notification thresholds."""
    rows: list[TableRow] = []
    for server in report.servers:
        rows.append(server_row(server))
        for slot in server.slots:
            rows.append(slot_row(server, slot, f"    slot {slot.id}", full_percent, warn_turns,
                                 critical_turns))
        if server.pool is not None:
            rows.append(slot_row(server, server.pool, "    shared pool", full_percent,
                                 warn_turns, critical_turns))
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
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
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
            if color is not None and (index.column() in (3, 5, 6, 7)):
                return QBrush(color)
        if role == Qt.ItemDataRole.TextAlignmentRole and index.column() in (2, 3, 4, 5, 6):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.UserRole:
            return row.server_key
        return None
