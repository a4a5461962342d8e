"""At 800x600 and 1280x800 the window shows what a user needs without a scrollbar: every
column of the servers table, the plot's whole title, and a what-if result."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import gui_factories as f
import pytest
from kvwall.app.desktop.poll_worker import PollResult
from kvwall.app.desktop.window import MainWindow
from kvwall.widgets.servers_table import COLUMNS, MODEL_COLUMN
from PySide6.QtCore import QCoreApplication, QPoint, QRect, Qt

SIZES = [(800, 600), (1280, 800)]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from kvwall.app.demo.tinymodels import write_model

    path = tmp_path_factory.mktemp("m") / "llama_gqa_f16.gguf"
    return str(write_model("llama", path, n_ctx_train=16384))


def _result(model_path, i=0):
    a, ia = f.whatif_result(model_path, tokens=(3000 + 20 * i, 900))
    b, ib = f.whatif_result(model_path, key="pid:200", url="http://127.0.0.1:8081",
                            tokens=(1000, 300))
    host = f.device("host", total=96 * f.MiB, used=48 * f.MiB, name="Host RAM", kind="host")
    report = f.report([a, b], [host], t=1000.0 + i, wall=1_760_000_000.0 + i)
    return PollResult(report, {a.key: ia, b.key: ib})


def _window(qtbot, model_path, size):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(*size)
    w.show()
    qtbot.waitExposed(w)
    for i in range(20):
        w.set_result(_result(model_path, i))
    qtbot.waitUntil(lambda: w.width() == size[0] and w.height() == size[1], timeout=2000)
    _settle()
    return w


def _settle() -> None:
    """Let every posted layout request run (a grab or a geometry read sees the result)."""
    for _ in range(5):
        QCoreApplication.sendPostedEvents()
        QCoreApplication.processEvents()


def _fully_visible(widget) -> bool:
    """The whole widget is on screen: shown, and not cut by a scroll area, a splitter or
    the window's edge (each parent clips its children to its own rectangle)."""
    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return False
    rect = QRect(QPoint(0, 0), widget.size())
    child, parent = widget, widget.parentWidget()
    while parent is not None:
        rect.translate(child.pos())
        if not QRect(QPoint(0, 0), parent.size()).contains(rect):
            return False
        child, parent = parent, parent.parentWidget()
    return True


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_column_fits_and_reads_whole(qtbot, model_path, size):
    w = _window(qtbot, model_path, size)
    table, header = w.table, w.table.horizontalHeader()
    assert not table.horizontalScrollBar().isVisible()
    right = header.sectionViewportPosition(len(COLUMNS) - 1) + header.sectionSize(
        len(COLUMNS) - 1)
    assert right <= table.viewport().width()
    for c in range(len(COLUMNS)):
        if c == MODEL_COLUMN:  # it gives way (elided, whole in the tooltip)
            assert header.sectionSize(c) >= 60
            continue
        # Not elided: as wide as its widest cell and its header.
        assert header.sectionSize(c) >= table.sizeHintForColumn(c), COLUMNS[c]
        assert header.sectionSize(c) >= header.sectionSizeFromContents(c).width(), COLUMNS[c]
    # Health and Time left are on screen, in the first row.
    for name in ("Time left", "Health"):
        c = COLUMNS.index(name)
        rect = table.visualRect(w.table_model.index(0, c))
        assert table.viewport().rect().contains(rect), name


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_plot_titles_are_whole(qtbot, model_path, size):
    w = _window(qtbot, model_path, size)
    h = w.history
    for tab in (h.memory_plot, h.context_plot):
        h.tabs.setCurrentWidget(tab)
        h._redraw()
        caption = h.caption
        assert caption.text() and caption.wordWrap()
        # Once laid out, the wrapped text needs no more height than the label has.
        qtbot.waitUntil(lambda c=caption: c.heightForWidth(c.width()) <= c.height(),
                        timeout=2000)
        assert _fully_visible(caption)
        assert "memory by component" in caption.text() or "KV cells per slot" in caption.text()
    assert "llama_gqa_f16:8080" in h.caption.text()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_whatif_result_shows_without_scrolling(qtbot, model_path, size):
    w = _window(qtbot, model_path, size)
    panel = w.whatif
    assert w.whatif_box.title() == "What if llama_gqa_f16:8080 ran with…"
    with qtbot.waitSignal(panel.simulated, timeout=3000):
        qtbot.mouseClick(panel.buttons["q8_0"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(panel.command_view.isVisible, timeout=2000)
    _settle()
    for part in (panel.result_title, panel.copy_button, panel.new_bar, panel.saved_label,
                 panel.max_ctx_label, panel.turns_label, panel.command_view):
        assert _fully_visible(part), part.objectName() or type(part).__name__
    assert _fully_visible(panel.buttons["q8_0"])  # and what was clicked is still there
    _screenshot(w, f"window-{size[0]}x{size[1]}.png")


def _screenshot(w, name: str) -> None:
    """Saved next to the test's output; copied to docs/screenshots with
    KVWALL_SCREENSHOTS=1 (how the docs' pictures are made)."""
    w.history._redraw()
    _settle()
    image = w.grab()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / name
    assert image.save(str(out))
    if os.environ.get("KVWALL_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, SCREENSHOTS / name)


def test_empty_state_offers_the_demo_and_a_command_at_800x600(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(800, 600)
    w.show()
    qtbot.waitExposed(w)
    w.set_result(PollResult(f.report([])))
    _settle()
    page = w.empty
    assert w.stack.currentWidget() is page
    for part in (page.demo_button, page.sample, page.copy_sample_button, page.plan_button,
                 page.url_edit):
        assert _fully_visible(part), type(part).__name__
    # The whole sample command reads in its field.
    assert page.sample.fontMetrics().horizontalAdvance(page.sample.text()) < (
        page.sample.width() - 8)
    _screenshot(w, "empty-state-800x600.png")
