"""The main window: gauges per pool, the servers and slots table, history plots and the
what-if panel, or the empty state when no server runs."""

from __future__ import annotations

import time
from collections.abc import Callable

from kvwall.app.desktop.poll_worker import PollResult
from kvwall.budget.alerts import server_label
from kvwall.budget.report import ServerReport, StatusReport
from kvwall.budget.units import format_duration
from kvwall.budget.whatif import WhatIf
from kvwall.widgets.empty_state import EmptyState
from kvwall.widgets.gauge import GaugePanel
from kvwall.widgets.history import HistoryView
from kvwall.widgets.servers_table import MODEL_COLUMN, ServersTableModel, table_rows
from kvwall.widgets.viewmodels.pools import most_urgent_server
from kvwall.widgets.whatif import WhatIfPanel
from PySide6.QtCore import QEvent, QItemSelectionModel, QObject, Qt, Signal
from PySide6.QtGui import QCloseEvent, QIcon
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QGroupBox,
    QHeaderView,
    QLabel,
    QMainWindow,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QTableView,
    QVBoxLayout,
    QWidget,
)

# What the what-if box needs for its buttons and one result (the table yields to it).
WHATIF_RESULT_HEIGHT = 340


class MainWindow(QMainWindow):
    """Shows :class:`PollResult` objects; holds no maths.

    Signals:
        close_requested(): the user closed the window (the app decides: hide or quit).
        url_added(str): a server URL typed in the empty state.
        server_selected(str): the server key now selected.
        demo_requested(): "Start demo" clicked in the empty state.
    """

    close_requested = Signal()
    url_added = Signal(str)
    server_selected = Signal(str)
    demo_requested = Signal()

    def __init__(self, parent: QWidget | None = None,
                 simulate: Callable[..., WhatIf] | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("kvwall")
        self.setObjectName("kvwall-main")
        self.resize(1180, 820)
        self._result: PollResult | None = None
        self._selected: str | None = None
        self._selected_label: str | None = None  # follows a restarted server (new pid)
        self._fitted: tuple[int, int] | None = None  # (rows, height) the table was fitted to
        self.hide_on_close = True
        # When a slot row turns warning/critical: the user's thresholds (set by the app).
        self.slot_full_percent = 95.0
        self.slot_warn_turns = 5
        self.slot_critical_turns = 2

        self.gauges = GaugePanel()
        gauge_box = QGroupBox("Memory")
        gl = QVBoxLayout(gauge_box)
        gl.addWidget(self.gauges)

        self.table_model = ServersTableModel(self)
        self.table = self._make_table()
        self.content = self._make_content(simulate)

        self.empty = EmptyState(memory_bytes=self._largest_free)
        self.empty.url_added.connect(self.url_added)
        self.empty.demo_requested.connect(self.demo_requested)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.content)

        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(4, 4, 4, 0)  # the pixels go to the what-if result at 600 px
        lay.setSpacing(4)
        lay.addWidget(gauge_box)
        lay.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        self.poll_label = QLabel("waiting for the first poll…")
        self.statusBar().addPermanentWidget(self.poll_label)

    def _make_table(self) -> QTableView:
        """The servers-and-slots table, one row selectable at a time."""
        table = QTableView()
        table.setModel(self.table_model)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.verticalHeader().setVisible(False)
        table.setAlternatingRowColors(True)
        table.setShowGrid(False)
        header = table.horizontalHeader()
        # Sized to the contents when rows come or go, not on every poll: ResizeToContents
        # re-measures every cell each time one changes. The model column takes what is
        # left (elided, the tooltip has it whole), so Health and Time left always show.
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(MODEL_COLUMN, QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(40)
        header.setStretchLastSection(False)
        table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table_model.modelReset.connect(self._rows_reset)
        self._column_chars: dict[int, int] = {}
        table.setWordWrap(False)
        table.selectionModel().selectionChanged.connect(self._table_selection)
        return table

    def _make_content(self, simulate: Callable[..., WhatIf] | None) -> QSplitter:
        """The table above, history and what-if side by side below."""
        self.history = HistoryView()
        self.whatif = WhatIfPanel(simulate=simulate)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)  # the group box already frames it
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self.whatif)
        self.whatif_scroll = scroll
        # A result just simulated is brought into view (the panel may be taller than a
        # small window).
        self.whatif.simulated.connect(
            lambda _r: scroll.ensureWidgetVisible(self.whatif.result_frame, 0, 0))
        # Never narrower than the panel itself: it would be cut, not wrapped.
        scroll.setMinimumWidth(self.whatif.minimumSizeHint().width()
                               + scroll.verticalScrollBar().sizeHint().width() + 4)
        self.whatif_box = whatif_box = _boxed("What if", scroll)
        history_box = _boxed("History", self.history)

        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(history_box)
        bottom.addWidget(whatif_box)
        bottom.setStretchFactor(0, 3)
        bottom.setStretchFactor(1, 2)
        self.table_box = table_box = _boxed("Servers and slots", self.table)
        self.main_splitter = main = QSplitter(Qt.Orientation.Vertical)
        main.addWidget(table_box)
        main.addWidget(bottom)
        main.setStretchFactor(0, 2)
        main.setStretchFactor(1, 5)
        # A header and three rows: the plots and the what-if result need the rest at 600 px.
        table_box.setMinimumHeight(130)
        main.installEventFilter(self)
        return main

    # -- data --------------------------------------------------------------------
    def set_result(self, result: PollResult) -> None:
        self._result = result
        report = result.report
        self.gauges.set_report(report)
        self.table_model.set_rows(table_rows(report, self.slot_full_percent,
                                             self.slot_warn_turns, self.slot_critical_turns))
        self._grow_columns()
        for past in result.past:  # the history store's polls, after a restart
            self.history.add_report(past)
        self.history.add_report(report)
        has_servers = bool(report.servers)
        if self.stack.currentIndex() != int(has_servers):
            self.stack.setCurrentIndex(1 if has_servers else 0)
        self._fit_table_height()
        self._follow_selection(report)
        stamp = time.strftime("%H:%M:%S", time.localtime(report.wall_time))
        errors = f"  ·  {report.errors[0]}" if report.errors else ""
        self.poll_label.setText(f"last poll {stamp} ({result.poll_seconds * 1000:.0f} ms)"
                                f"{errors}")
        if result.resumed_after_s:
            self.statusBar().showMessage(
                f"Polling resumed after a {format_duration(result.resumed_after_s)} "
                "gap (the computer slept, or a poll stalled): forecasts restart from now.",
                15000)

    def _follow_selection(self, report: StatusReport) -> None:
        """Keep the selected server selected; one that restarted (a new key, the same
        label) stays selected; else the most urgent one is."""
        keys = [s.key for s in report.servers]
        if self._selected in keys:
            self._restore_selection()
            self._update_selected()
            return
        same = next((s.key for s in report.servers
                     if self._selected_label and server_label(s) == self._selected_label),
                    None)
        self._selected = None
        target = same or most_urgent_server(report)
        if target is not None:
            self.select_server(target)

    def _grow_columns(self) -> None:
        """Widen a column whose text outgrew it (never shrink: no jitter).

        Measuring a column asks the model for every cell, so a column is measured only
        when its longest text grew (a poll usually changes digits, not lengths).
        """
        rows = self.table_model.rows()
        for c in range(self.table_model.columnCount()):
            if c == MODEL_COLUMN:  # it stretches
                continue
            chars = max((len(r.cells[c]) for r in rows), default=0)
            if chars <= self._column_chars.get(c, 0):
                continue
            self._column_chars[c] = chars
            hint = self.table.sizeHintForColumn(c)
            if hint > self.table.columnWidth(c):
                self.table.setColumnWidth(c, hint)

    def _rows_reset(self) -> None:
        self.table.resizeColumnsToContents()
        self._column_chars = {}
        self._fit_table_height()

    def _fit_table_height(self) -> None:
        """Give the table the height its rows need, at most 40% of the splitter and never
        so much that a what-if result would not show: the plots share the rest."""
        # Its height, not sizes(): on a Resize event the splitter has not yet spread it.
        total = self.main_splitter.height() - self.main_splitter.handleWidth()
        rows = self.table_model.rowCount()
        if total <= 0 or (rows, total) == self._fitted:
            return  # done for this shape: a height the user dragged to stays
        self._fitted = (rows, total)
        table_box = self.table_box
        chrome = table_box.sizeHint().height() - self.table.sizeHint().height()
        needed = (self.table.horizontalHeader().height() + 2 * self.table.frameWidth()
                  + rows * self.table.verticalHeader().defaultSectionSize()
                  + max(chrome, 0) + 4)
        want = max(table_box.minimumHeight(),
                   min(needed, int(total * 0.4), total - WHATIF_RESULT_HEIGHT))
        self.main_splitter.setSizes([want, total - want])

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        if watched is self.main_splitter and event.type() == QEvent.Type.Resize:
            self._fit_table_height()  # the window, or the gauges above, changed height
        return super().eventFilter(watched, event)

    def result(self) -> PollResult | None:
        return self._result

    def report(self) -> StatusReport | None:
        return self._result.report if self._result else None

    def server(self, key: str | None) -> ServerReport | None:
        report = self.report()
        if report is None or key is None:
            return None
        return next((s for s in report.servers if s.key == key), None)

    def selected_server(self) -> str | None:
        return self._selected

    def select_server(self, key: str) -> bool:
        """Select ``key`` in the table, plots and what-if panel; False if unknown."""
        server = self.server(key)
        if server is None:
            return False
        self._selected = key
        self._selected_label = server_label(server)
        self._restore_selection()
        row = self.table_model.row_of(key)
        if row >= 0:
            self.table.scrollTo(self.table_model.index(row, 0),
                                QAbstractItemView.ScrollHint.PositionAtTop)
        self._update_selected()
        self.server_selected.emit(key)
        return True

    def _restore_selection(self) -> None:
        row = self.table_model.row_of(self._selected) if self._selected else -1
        sm = self.table.selectionModel()
        current = sm.selectedRows()
        if row >= 0 and not any(i.row() >= 0 and self.table_model.rows()[i.row()].server_key
                                == self._selected for i in current):
            sm.blockSignals(True)
            sm.select(self.table_model.index(row, 0),
                      QItemSelectionModel.SelectionFlag.ClearAndSelect
                      | QItemSelectionModel.SelectionFlag.Rows)
            sm.blockSignals(False)
            self.table.viewport().update()

    def _update_selected(self) -> None:
        server = self.server(self._selected)
        inputs = None
        if server is not None and self._result is not None:
            inputs = self._result.what_if.get(server.key)
        device_id = None
        if server is not None and server.memory:
            device_id = max(server.memory, key=lambda a: a.measured_bytes or 0).device_id
        elif (report := self.report()) is not None and report.devices:
            device_id = report.devices[0].id
        self.history.select(device_id, server.key if server else None)
        self.whatif.set_server(server, inputs)
        self.whatif_box.setTitle(f"What if {server_label(server)} ran with…"
                                 if server is not None and self.whatif.ready() else "What if")

    def _table_selection(self, *_args: object) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        r = rows[0].row()
        all_rows = self.table_model.rows()
        if 0 <= r < len(all_rows) and all_rows[r].server_key != self._selected:
            self._selected = all_rows[r].server_key
            server = self.server(self._selected)
            self._selected_label = server_label(server) if server is not None else None
            self._update_selected()
            self.server_selected.emit(self._selected)

    def _largest_free(self) -> int | None:
        report = self.report()
        if report is None:
            return None
        free = [d.free_bytes for d in report.devices if d.free_bytes is not None]
        return max(free, default=None)

    # -- lifecycle ---------------------------------------------------------------
    def bring_to_front(self) -> None:
        self.show()
        if self.isMinimized():
            self.showNormal()
        self.raise_()
        self.activateWindow()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt API)
        if self.hide_on_close:
            event.ignore()
            self.hide()
        else:
            event.accept()
        self.close_requested.emit()


def _boxed(title: str, widget: QWidget) -> QGroupBox:
    """``widget`` in a titled group box with tight margins."""
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(4, 4, 4, 4)
    layout.addWidget(widget)
    return box


def app_icon() -> QIcon:
    """kvwall's icon for the current theme (``resources/kvwall-dark.svg`` on a dark
    palette, ``kvwall-light.svg`` on a light one; a drawn gauge if they are missing)."""
    from importlib.resources import files

    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance()
    dark = isinstance(app, QGuiApplication) and app.palette().window().color().lightness() < 128
    icon = QIcon()
    try:
        path = files("kvwall.resources") / ("kvwall-dark.svg" if dark else "kvwall-light.svg")
        if path.is_file():
            icon.addFile(str(path))
    except (ModuleNotFoundError, OSError):
        pass
    if icon.isNull():
        from kvwall.app.desktop.tray import gauge_icon

        icon = gauge_icon(0.6, "ok")
    return icon
