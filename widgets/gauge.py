"""Memory gauges: a stacked bar per pool (other processes, each server's parts, free).

A bar reads a :class:`kvwall.widgets.viewmodels.pools.PoolView`; it repaints only when the view changes.
Hovering a segment shows its bytes and what it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvwall.budget.report import StatusReport
from kvwall.budget.units import format_bytes
from kvwall.widgets.viewmodels import pools
from kvwall.widgets.viewmodels.pools import PoolView, Segment
from PySide6.QtCore import QEvent, QRectF, QSize, Qt
from PySide6.QtGui import (
    QColor,
    QHelpEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPalette,
    QPen,
)
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QToolTip, QVBoxLayout, QWidget

COLORS = {
    pools.OTHER: QColor("#9aa0a6"),
    pools.OVERHEAD: QColor("#b39ddb"),
    pools.WEIGHTS: QColor("#4a7fd4"),
    pools.KV: QColor("#f29d38"),
    pools.RECURRENT: QColor("#26a69a"),
    pools.COMPUTE: QColor("#5cb85c"),
    pools.UNATTRIBUTED: QColor("#e05d5d"),
    pools.FREE: QColor(0, 0, 0, 0),
}


def segment_color(kind: str, palette: QPalette | None = None) -> QColor:
    if kind == pools.FREE and palette is not None:
        return palette.color(QPalette.ColorRole.Base)
    return COLORS[kind]


class StackedBar(QWidget):
    """A horizontal bar of segments drawn to a shared byte scale.

    ``scale_bytes`` is the byte count of the full width (so two bars can be compared);
    by default the sum of the segments.
    """

    def __init__(self, parent: QWidget | None = None, height: int = 26) -> None:
        super().__init__(parent)
        self._segments: tuple[Segment, ...] = ()
        self._scale: int | None = None
        self._rects: list[tuple[QRectF, Segment]] = []
        self._bar_height = height
        self.setMinimumHeight(height + 2)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMouseTracking(True)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(320, self._bar_height + 2)

    def set_segments(self, segments: Sequence[Segment], scale_bytes: int | None = None) -> bool:
        """Show ``segments``; returns True (and repaints) only if something changed."""
        segments = tuple(segments)
        if segments == self._segments and scale_bytes == self._scale:
            return False
        self._segments, self._scale = segments, scale_bytes
        self._rects = []
        self.update()
        return True

    def segments(self) -> tuple[Segment, ...]:
        return self._segments

    def scale_bytes(self) -> int:
        total = sum(s.bytes for s in self._segments)
        return max(self._scale or 0, total, 1)

    def segment_rects(self) -> list[tuple[QRectF, Segment]]:
        """Where each segment is drawn (widget coordinates)."""
        scale = self.scale_bytes()
        width = max(1.0, float(self.width() - 2))
        top = (self.height() - self._bar_height) / 2
        x = 1.0
        out = []
        for seg in self._segments:
            w = width * seg.bytes / scale
            out.append((QRectF(x, top, w, self._bar_height), seg))
            x += w
        return out

    def segment_at(self, x: float) -> Segment | None:
        for rect, seg in self.segment_rects():
            if rect.left() <= x < rect.right():
                return seg
        return None

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        scale = self.scale_bytes()
        width = float(self.width() - 2)
        top = (self.height() - self._bar_height) / 2
        outline = QRectF(1, top, width, self._bar_height)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(pal.color(QPalette.ColorRole.Base))
        p.drawRoundedRect(outline, 4, 4)
        p.save()
        path = QPainterPath()
        path.addRoundedRect(outline, 4, 4)
        p.setClipPath(path)
        previous_server = None
        for rect, seg in self.segment_rects():
            p.fillRect(rect, segment_color(seg.kind, pal))
            if seg.server_key and seg.server_key != previous_server and previous_server is not None:
                p.setPen(QPen(pal.color(QPalette.ColorRole.Window), 2))
                p.drawLine(rect.topLeft(), rect.bottomLeft())
                p.setPen(Qt.PenStyle.NoPen)
            if seg.kind == pools.UNATTRIBUTED:
                p.setBrush(Qt.BrushStyle.BDiagPattern)
                p.fillRect(rect, QColor(255, 255, 255, 90))
            previous_server = seg.server_key or previous_server
        p.restore()
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(QPen(pal.color(QPalette.ColorRole.Mid), 1))
        p.drawRoundedRect(outline, 4, 4)
        if scale and self._segments:
            used = sum(s.bytes for s in self._segments if s.kind != pools.FREE)
            p.setPen(pal.color(QPalette.ColorRole.Text))
            text = f"{format_bytes(used)} used"
            p.drawText(outline.adjusted(6, 0, -6, 0),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, text)
        p.end()

    def event(self, e: QEvent) -> bool:
        if e.type() == QEvent.Type.ToolTip and isinstance(e, QHelpEvent):
            seg = self.segment_at(e.position().x() if hasattr(e, "position") else e.x())
            if seg is None:
                QToolTip.hideText()
            else:
                QToolTip.showText(e.globalPos(), tooltip_text(seg, self.scale_bytes()), self)
            return True
        return super().event(e)


def tooltip_text(seg: Segment, scale_bytes: int) -> str:
    share = 100.0 * seg.bytes / scale_bytes if scale_bytes else 0.0
    return (f"<b>{seg.label}</b><br>{format_bytes(seg.bytes)} "
            f"({seg.bytes:,} bytes, {share:.1f}%)<br><i>{pools.MEANING[seg.kind]}</i>")


class PoolGauge(QWidget):
    """One memory pool: its name and figures, then its stacked bar."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.figures = QLabel()
        self.figures.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.bar = StackedBar(self)
        head = QHBoxLayout()
        head.setContentsMargins(0, 0, 0, 0)
        head.addWidget(self.title, 1)
        head.addWidget(self.figures)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addLayout(head)
        lay.addWidget(self.bar)
        self._view: PoolView | None = None

    def set_view(self, view: PoolView) -> bool:
        """Show ``view``; True when something changed."""
        if view == self._view:
            return False
        self._view = view
        d = view.device
        self.title.setText(d.name + ("  (unified)" if d.unified and d.kind != "host" else ""))
        bits = []
        if d.free_bytes is not None and d.total_bytes:
            bits.append(f"{format_bytes(d.free_bytes)} free of "
                        f"{format_bytes(d.total_bytes)}")
        if d.error:
            bits.append(d.error)
        self.figures.setText("  ·  ".join(bits))
        self.setToolTip(d.hint or "")
        self.bar.set_segments(view.segments, view.device.total_bytes)
        return True

    def view(self) -> PoolView | None:
        return self._view

    def segments(self) -> tuple[Segment, ...]:
        return self.bar.segments()


# Always in the key; the others only while a bar shows them (recurrent models, a
# measurement the model cannot explain).
BASE_KINDS = (pools.OTHER, pools.OVERHEAD, pools.WEIGHTS, pools.KV, pools.COMPUTE, pools.FREE)
ALL_KINDS = (pools.OTHER, pools.OVERHEAD, pools.WEIGHTS, pools.KV, pools.RECURRENT,
             pools.COMPUTE, pools.UNATTRIBUTED, pools.FREE)


class Legend(QWidget):
    """The colour key for the gauges: :data:`BASE_KINDS`, plus the other kinds while
    :meth:`show_kinds` says a bar draws them."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(12)
        self._entries: dict[str, tuple[QWidget, QLabel]] = {}
        for kind in ALL_KINDS:
            swatch = _Swatch(kind)
            label = QLabel(pools.LABEL[kind])
            label.setToolTip(pools.MEANING[kind])
            swatch.setToolTip(pools.MEANING[kind])
            row = QHBoxLayout()
            row.setSpacing(4)
            row.addWidget(swatch)
            row.addWidget(label)
            lay.addLayout(row)
            self._entries[kind] = (swatch, label)
        lay.addStretch(1)
        self.show_kinds(())

    def show_kinds(self, kinds: Sequence[str]) -> None:
        """Show the keys of :data:`BASE_KINDS` and of ``kinds``."""
        for kind, widgets in self._entries.items():
            for w in widgets:
                w.setVisible(kind in BASE_KINDS or kind in kinds)

    def shown_kinds(self) -> tuple[str, ...]:
        return tuple(k for k, (_, label) in self._entries.items() if not label.isHidden())


class _Swatch(QWidget):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.setFixedSize(12, 12)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setPen(QPen(self.palette().color(QPalette.ColorRole.Mid), 1))
        p.setBrush(segment_color(self.kind, self.palette()))
        p.drawRect(QRectF(0.5, 0.5, 11, 11))
        p.end()


class GaugePanel(QWidget):
    """One :class:`PoolGauge` per memory pool of the latest report."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(8)
        self._gauges: dict[str, PoolGauge] = {}
        self.legend = Legend()
        self._layout.addWidget(self.legend)

    def set_report(self, report: StatusReport) -> None:
        views = pools.pool_views(report)
        ids = [v.device.id for v in views]
        if ids != list(self._gauges):
            for g in self._gauges.values():
                self._layout.removeWidget(g)
                g.deleteLater()
            self._gauges = {}
            for i, dev_id in enumerate(ids):
                g = PoolGauge(self)
                self._gauges[dev_id] = g
                self._layout.insertWidget(i, g)
        for v in views:
            self._gauges[v.device.id].set_view(v)
        self.legend.show_kinds(sorted({s.kind for v in views for s in v.segments}))

    def gauges(self) -> dict[str, PoolGauge]:
        return dict(self._gauges)
