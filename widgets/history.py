"""History plots: memory by component over time, and context tokens per slot with the
forecast extended to the slot's limit.

Plots are created once and updated in place from fixed-size numpy ring buffers, so a
tray monitor running for weeks uses constant memory. Data is always recorded; repainting
is skipped while the widget is hidden and catches up when it is shown again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

import numpy as np
import pyqtgraph as pg
from kvwall.budget.alerts import server_label
from kvwall.budget.report import ServerReport, SlotReport, StatusReport
from kvwall.budget.units import format_duration
from kvwall.widgets.viewmodels import pools
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QHideEvent, QPalette, QResizeEvent, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

# Seconds of history kept: 6 h at one poll per second.
CAPACITY = 6 * 3600
WINDOWS = (("5 min", 300), ("15 min", 900), ("1 hour", 3600), ("6 hours", 6 * 3600))
MEMORY_KINDS = (pools.OTHER, pools.OVERHEAD, pools.WEIGHTS, pools.KV, pools.COMPUTE)
MAX_SLOT_CURVES = 16
MIN_SPAN_S = 30.0  # the plots never show less than this much time
MIN_REPAINT_S = 2.0
SLOT_COLORS = ("#f29d38", "#4a7fd4", "#5cb85c", "#ab47bc", "#26a69a", "#e05d5d", "#8d6e63",
               "#fdd835")


class RingBuffer:
    """Fixed-size rows of float64 ``(time, v1, ..., vn)``; never grows.

    Each row is written twice (at ``i`` and ``i + capacity``) so the last ``n`` rows are
    always one contiguous slice: reading allocates nothing.
    """

    def __init__(self, capacity: int, n_values: int) -> None:
        self.capacity = capacity
        self._data = np.full((2 * capacity, n_values + 1), np.nan)
        self._next = 0
        self._size = 0

    def append(self, t: float, values: Sequence[float]) -> None:
        row = self._next
        self._data[row, 0] = t
        self._data[row, 1:] = values
        self._data[row + self.capacity] = self._data[row]
        self._next = (row + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def __len__(self) -> int:
        return self._size

    def view(self) -> np.ndarray:
        """The rows, oldest first (a view; copy before keeping it)."""
        end = self._next + self.capacity if self._size == self.capacity else self._next
        return self._data[end - self._size:end]

    @property
    def nbytes(self) -> int:
        return self._data.nbytes


class HistoryView(QWidget):
    """Two tabs: "Memory" (stacked areas of the selected pool) and "Context" (tokens per
    slot of the selected server, with forecast lines to the limit)."""

    def __init__(self, parent: QWidget | None = None, capacity: int = CAPACITY) -> None:
        super().__init__(parent)
        pg.setConfigOptions(antialias=False)  # antialiased fills cost more than they show
        self.capacity = capacity
        self._memory: dict[str, RingBuffer] = {}
        self._slots: dict[str, tuple[tuple[int, ...], RingBuffer]] = {}
        self._limits: dict[str, tuple[int, ...]] = {}
        self._forecasts: dict[str, ServerReport] = {}
        self._device_id: str | None = None
        self._pool_names: dict[str, str] = {}
        self._titles: dict[str, str] = {}
        self._server_key: str | None = None
        self._now_wall = 0.0
        self._dirty = False
        self._first_wall: float | None = None
        self.redraws = 0  # for tests and benchmarks: how often the plots were redrawn
        # Repaints are paced by this timer (single-shot, restarted after each redraw);
        # it runs only while the widget is visible.
        self._repaint_timer = QTimer(self)
        self._repaint_timer.setSingleShot(True)
        self._repaint_timer.timeout.connect(self._repaint_tick)

        self.window_box = QComboBox()
        for label, seconds in WINDOWS:
            self.window_box.addItem(label, seconds)
        self.window_box.setCurrentIndex(1)
        self.window_box.currentIndexChanged.connect(self._redraw)

        self.tabs = QTabWidget()
        self.memory_plot = self._make_plot("memory", "GiB")
        self.context_plot = self._make_plot("tokens", "")
        self.memory_plot.getAxis("left").setScale(1 / 2**30)
        self.tabs.addTab(self.memory_plot, "Memory")
        self.tabs.addTab(self.context_plot, "Context")
        self.tabs.currentChanged.connect(self._redraw)
        self._make_memory_curves()
        self._make_context_curves()

        # The plot's title, above it and wrapped: a pyqtgraph title is cut in a narrow
        # window.
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setObjectName("history_caption")
        top = QHBoxLayout()
        top.addWidget(self.caption, 1)
        top.addWidget(QLabel("Show the last"))
        top.addWidget(self.window_box)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.tabs, 1)

    def _make_memory_curves(self) -> None:
        """The memory plot's stacked areas and legend, created once."""
        # Memory: cumulative curves, created once, each filled down to zero and stacked
        # back to front (the largest sum behind), which draws the same picture as fills
        # between neighbours at a fraction of the cost (no path arithmetic per redraw).
        self._mem_curves = []
        self._legend_samples = []
        self._legend = self.memory_plot.plotItem.legend
        bg = self.palette().color(QPalette.ColorRole.Base)
        for z, kind in enumerate(MEMORY_KINDS):
            color = QColor(_color(kind))
            fill_color = _blend(color, bg, 0.67)  # opaque: layers must not show through
            curve = self.memory_plot.plot([], [], pen=pg.mkPen(color.darker(120), width=1),
                                          fillLevel=0, brush=fill_color)
            curve.setZValue(-z)
            _tune(curve)
            # The legend shows the area's colour: a sample item that is never plotted.
            sample = pg.PlotDataItem([0, 1], [1, 1], pen=pg.mkPen(color.darker(120)),
                                     fillLevel=0, fillBrush=fill_color)
            self._legend.addItem(sample, pools.LABEL[kind])
            self._legend_samples.append(sample)
            self._mem_curves.append(curve)
        self._total_line = pg.InfiniteLine(angle=0, movable=False,
                                           pen=pg.mkPen("#888", style=Qt.PenStyle.DashLine))
        self.memory_plot.addItem(self._total_line)

    def _make_context_curves(self) -> None:
        """The context plot's slot, forecast and limit lines, created once."""
        # Context: up to MAX_SLOT_CURVES curves, re-used across servers.
        self._slot_curves = []
        self._forecast_curves = []
        self._limit_lines = []
        for i in range(MAX_SLOT_CURVES):
            color = SLOT_COLORS[i % len(SLOT_COLORS)]
            c = self.context_plot.plot([], [], pen=pg.mkPen(color, width=2), antialias=True)
            _tune(c)
            fc = self.context_plot.plot([], [], pen=pg.mkPen(color, width=1.5,
                                                             style=Qt.PenStyle.DashLine),
                                        antialias=True)
            line = pg.InfiniteLine(angle=0, movable=False,
                                   pen=pg.mkPen(color, width=1, style=Qt.PenStyle.DotLine))
            line.setVisible(False)
            self.context_plot.addItem(line)
            self._slot_curves.append(c)
            self._forecast_curves.append(fc)
            self._limit_lines.append(line)
        self._forecast_label = pg.TextItem(
            anchor=(1, 1), color=self.palette().color(QPalette.ColorRole.Text))
        self.context_plot.addItem(self._forecast_label)

    def _make_plot(self, label: str, units: str) -> pg.PlotWidget:
        axis = pg.DateAxisItem(orientation="bottom")
        plot = pg.PlotWidget(axisItems={"bottom": axis})
        bg = self.palette().color(QPalette.ColorRole.Base)
        fg = self.palette().color(QPalette.ColorRole.Text)
        plot.setBackground(bg)
        for name in ("left", "bottom"):
            ax = plot.getAxis(name)
            ax.setPen(fg)
            ax.setTextPen(fg)
        plot.setLabel("left", f"{label} ({units})" if units else label)
        plot.getAxis("left").enableAutoSIPrefix(False)
        plot.showGrid(x=True, y=True, alpha=0.15)
        plot.setMenuEnabled(False)
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        if label == "memory":
            bg_half = QColor(bg)
            bg_half.setAlpha(200)
            plot.addLegend(offset=(8, 4), labelTextColor=fg, brush=bg_half, colCount=5)
        return plot

    # -- data --------------------------------------------------------------------
    def window_seconds(self) -> int:
        return int(self.window_box.currentData())

    def set_window_seconds(self, seconds: int) -> None:
        i = self.window_box.findData(seconds)
        if i >= 0:
            self.window_box.setCurrentIndex(i)

    def select(self, device_id: str | None, server_key: str | None) -> None:
        """Which pool and which server's slots to draw."""
        if (device_id, server_key) != (self._device_id, self._server_key):
            self._device_id, self._server_key = device_id, server_key
            self._redraw()

    def add_report(self, report: StatusReport) -> None:
        """Record ``report`` (always) and repaint if visible."""
        t = report.wall_time
        self._now_wall = t
        for view in pools.pool_views(report):
            self._pool_names[view.device.id] = view.device.name
            buf = self._memory.get(view.device.id)
            if buf is None:
                buf = self._memory[view.device.id] = RingBuffer(self.capacity, len(MEMORY_KINDS) + 1)
            values: list[float] = [view.bytes_of(k) for k in MEMORY_KINDS[:3]]
            values.append(view.bytes_of(pools.KV) + view.bytes_of(pools.RECURRENT))
            values.append(view.bytes_of(pools.COMPUTE) + view.bytes_of(pools.UNATTRIBUTED))
            values.append(view.device.total_bytes or np.nan)
            buf.append(t, values)
        seen = set()
        for server in report.servers:
            seen.add(server.key)
            slots = tuple(server.slots) + ((server.pool,) if server.pool else ())
            ids = tuple(s.id if s is not server.pool else -1 for s in slots)[:MAX_SLOT_CURVES]
            entry = self._slots.get(server.key)
            if entry is None or entry[0] != ids:
                entry = (ids, RingBuffer(self.capacity, len(ids)))
                self._slots[server.key] = entry
            entry[1].append(t, [np.nan if s.tokens is None else s.tokens
                                for s in slots[:MAX_SLOT_CURVES]])
            self._limits[server.key] = tuple(s.n_ctx for s in slots[:MAX_SLOT_CURVES])
            self._forecasts[server.key] = server
        for key in [k for k in self._forecasts if k not in seen]:
            del self._forecasts[key]  # the buffer stays: the server may come back
        if len(self._slots) > 32:  # bound the number of servers remembered
            for key in [k for k in self._slots if k not in seen][: len(self._slots) - 32]:
                del self._slots[key]
                self._limits.pop(key, None)
        if self._device_id is None and report.devices:
            self._device_id = report.devices[0].id
        if self._server_key is None and report.servers:
            self._server_key = report.servers[0].key
        if self._first_wall is None:
            self._first_wall = t
        self._dirty = True
        if self.isVisible() and not self._repaint_timer.isActive():
            self._redraw()
            self._repaint_timer.start(self.repaint_interval_ms())

    def repaint_interval_ms(self) -> int:
        """About one redraw per pixel of time shown, between 2 and 10 s (painting the
        stacked areas costs ~10 ms of CPU), so a window left open does not repaint on
        every poll."""
        span: float = self.window_seconds()
        if self._first_wall is not None:
            span = min(span, max(1.0, self._now_wall - self._first_wall))
        width = max(200, self.memory_plot.width())
        return int(1000 * min(10.0, max(MIN_REPAINT_S, span / width)))

    def _repaint_tick(self) -> None:
        if self._dirty and self.isVisible():
            self._redraw()
            self._repaint_timer.start(self.repaint_interval_ms())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt API)
        super().resizeEvent(event)
        # As many legend columns as fit (one entry is ~150 px): not cut in a narrow window.
        columns = max(1, min(len(self._legend_samples), event.size().width() // 150))
        if columns != self._legend.columnCount:
            self._legend.setColumnCount(columns)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        if self._dirty:
            self._redraw()
        self._repaint_timer.start(self.repaint_interval_ms())

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 (Qt API)
        super().hideEvent(event)
        self._repaint_timer.stop()  # polling goes on; painting waits

    def memory_series(self, device_id: str) -> np.ndarray | None:
        buf = self._memory.get(device_id)
        return None if buf is None else buf.view()

    def slot_series(self, server_key: str) -> tuple[tuple[int, ...], np.ndarray] | None:
        entry = self._slots.get(server_key)
        return None if entry is None else (entry[0], entry[1].view())

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._memory.values()) + sum(
            e[1].nbytes for e in self._slots.values())

    # -- drawing -----------------------------------------------------------------
    def _redraw(self, *_args: object) -> None:
        """Redraw the plot on the visible tab; the other one catches up when shown."""
        self._dirty = False
        self.redraws += 1
        window = self.window_seconds()
        now = self._now_wall
        start = now - window
        showing_memory = self.tabs.currentWidget() is self.memory_plot
        if showing_memory:
            self._draw_memory(start, now)
            names = self._pool_names
            if self._device_id in names:
                title = f"{names[self._device_id]}: memory by component"
                self._titles["memory"] = title
        else:
            self._draw_context(start, now, window)
        caption = self._titles.get("memory" if showing_memory else "context", "")
        if caption != self.caption.text():
            self.caption.setText(caption)

    def _draw_memory(self, start: float, now: float) -> None:
        data = self.memory_series(self._device_id) if self._device_id else None
        if data is None or len(data) == 0:
            for c in self._mem_curves:
                c.setData([], [])
            return
        first = np.searchsorted(data[:, 0], start)
        data = data[first:]
        t = data[:, 0]
        cumulative = np.cumsum(np.nan_to_num(data[:, 1:1 + len(MEMORY_KINDS)]), axis=1)
        total = data[-1, -1]
        # Scale to what is used (a small server on a big pool would be a flat line);
        # the pool's total is the dashed line when it is in view. Ranges are set before
        # the data so clipping and the fills use the same view.
        top = float(np.nanmax(cumulative[:, -1])) if len(cumulative) else 0.0
        if np.isfinite(total) and total > 0:
            self._total_line.setValue(total)
            top = total if top > 0.6 * total else top * 1.25
        if top > 0:
            self.memory_plot.setYRange(0, top * 1.02, padding=0)
        self.memory_plot.setXRange(_left_edge(start, float(t[0]), now), now, padding=0)
        for i, curve in enumerate(self._mem_curves):
            curve.setData(t, cumulative[:, i])

    def _draw_context(self, start: float, now: float, window: int) -> None:
        key = self._server_key
        entry = self._slots.get(key) if key else None
        server = self._forecasts.get(key) if key else None
        ids: tuple[int, ...] = entry[0] if entry else ()
        data = entry[1].view() if entry else None
        limits = self._limits.get(key, ()) if key else ()
        horizon = now
        label = ""
        for i in range(MAX_SLOT_CURVES):
            curve, fc, line = self._slot_curves[i], self._forecast_curves[i], self._limit_lines[i]
            if data is None or i >= len(ids) or len(data) == 0:
                curve.setData([], [])
                fc.setData([], [])
                line.setVisible(False)
                continue
            first = np.searchsorted(data[:, 0], start)
            curve.setData(data[first:, 0], data[first:, 1 + i])
            limit = limits[i] if i < len(limits) else None
            line.setVisible(limit is not None)
            if limit is not None:
                line.setValue(limit)
            slot = _slot_of(server, ids[i]) if server else None
            f = slot.forecast if slot else None
            tokens = data[-1, 1 + i]
            if (f is not None and f.seconds_left is not None and f.seconds_left > 0
                    and np.isfinite(tokens) and limit):
                end = now + f.seconds_left
                fc.setData([now, end], [tokens, limit])
                horizon = max(horizon, min(end, now + window))
                when = format_duration(f.seconds_left)
                who = "pool" if ids[i] == -1 else f"slot {ids[i]}"
                if not label:
                    at = time.strftime("%H:%M", time.localtime(end))
                    label = f"{who} full in {when} (~{at})"
            else:
                fc.setData([], [])
        self._forecast_label.setText(label)
        if limits:
            self._forecast_label.setPos(horizon, max(limits))
            self.context_plot.setYRange(0, max(limits) * 1.05, padding=0)
        first_t = start
        if data is not None and len(data):
            first_t = _left_edge(start, float(data[0, 0]), now)
        self.context_plot.setXRange(first_t, horizon, padding=0.02)
        name = server_label(server) if server else ""
        self._titles["context"] = (
            f"{name}: KV cells per slot · dotted = the slot's limit · dashed = forecast"
            if name else "")


def _left_edge(start: float, first_sample: float, now: float) -> float:
    """The plot's left edge: the first sample in the window, but at least MIN_SPAN_S back
    (one sample alone would give the time axis a zero span and unreadable ticks)."""
    return max(start, min(first_sample, now - MIN_SPAN_S))


def _slot_of(server: ServerReport, slot_id: int) -> SlotReport | None:
    if slot_id == -1:
        return server.pool
    for s in server.slots:
        if s.id == slot_id:
            return s
    return None


def _color(kind: str) -> str:
    from kvwall.widgets.gauge import COLORS

    return COLORS[kind].name()


def _blend(color: QColor, background: QColor, alpha: float) -> QColor:
    return QColor(*(round(alpha * a + (1 - alpha) * b) for a, b in (
        (color.red(), background.red()), (color.green(), background.green()),
        (color.blue(), background.blue()))))


def _tune(curve: pg.PlotDataItem) -> None:
    curve.setDownsampling(auto=True, method="peak")
    curve.setClipToView(True)
