"""What the window shows when no server runs: how servers are found, a field to add a
server URL, a sample command to copy, the demo one click away, and the planner for a GGUF
file chosen from disk (``kvwall plan`` in a dialog).
"""

from __future__ import annotations

import html
from collections.abc import Callable

from kvwall.widgets.viewmodels.planner import PlanOutcome, plan_html
from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

EXPLANATION = (
    "<h3>No llama.cpp server is running</h3>"
    "<p>kvwall finds servers by itself: every <code>llama-server</code> (or "
    "<code>llama serve</code>) process on this computer, including ones started by "
    "Python wrappers and router-mode children. It reads each one's command line and asks "
    "it for <code>/props</code>, <code>/slots</code> and <code>/metrics</code> on "
    "localhost. Start a server and it appears here within a poll.</p>"
    "<p>A server in a container or on another machine cannot be seen as a process: add "
    "its URL below (and its API key in Settings if it needs one).</p>"
)


SAMPLE_COMMAND = "llama-server -m ~/models/your-model.gguf -c 16384 -np 2 --port 8080"
COPIED_MS = 1500  # how long "Copied" shows on the button


class EmptyState(QWidget):
    """The no-server page.

    Signals:
        url_added(str): the user asked to watch this server URL (not yet validated).
        demo_requested(): the user asked for the demo (a tiny server and agent).
    """

    url_added = Signal(str)
    demo_requested = Signal()

    def __init__(self, parent: QWidget | None = None,
                 memory_bytes: Callable[[], int | None] | None = None) -> None:
        super().__init__(parent)
        self._memory_bytes = memory_bytes  # free memory now, for the planner
        text = QLabel(EXPLANATION)
        text.setWordWrap(True)
        text.setTextFormat(Qt.TextFormat.RichText)
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("http://127.0.0.1:8080")
        self.url_edit.returnPressed.connect(self._add)
        self.add_button = QPushButton("Add server URL")
        self.add_button.clicked.connect(self._add)
        self.url_message = QLabel()
        row = QHBoxLayout()
        row.addWidget(self.url_edit, 1)
        row.addWidget(self.add_button)
        self.plan_button = QPushButton("Plan a GGUF model…")
        self.plan_button.setToolTip("Predict what llama-server would allocate for a model "
                                    "file, before you start it")
        self.plan_button.clicked.connect(self.choose_model)
        lay = QVBoxLayout(self)
        lay.addWidget(text)
        lay.addLayout(row)
        lay.addWidget(self.url_message)
        lay.addSpacing(12)
        lay.addWidget(QLabel("<b>No server yet?</b> Start one, for example:"))
        lay.addLayout(self._sample_row())
        lay.addWidget(QLabel("Or see what a model would need, or watch a tiny demo server "
                             "fill up (<code>kvwall --demo</code>):"))
        self.demo_button = QPushButton("Start demo")
        self.demo_button.setToolTip("Start a tiny llama-server and an agent whose context "
                                    "grows, to see kvwall at work within a minute")
        self.demo_button.clicked.connect(self._demo_clicked)
        self.demo_message = QLabel()
        self.demo_message.setWordWrap(True)
        plan_row = QHBoxLayout()
        plan_row.addWidget(self.demo_button)
        plan_row.addWidget(self.plan_button)
        plan_row.addStretch(1)
        lay.addLayout(plan_row)
        lay.addWidget(self.demo_message)
        lay.addStretch(1)
        self.dialog: PlanDialog | None = None

    def _sample_row(self) -> QHBoxLayout:
        """The sample command, selectable, and a button that copies it."""
        self.sample = QLineEdit(SAMPLE_COMMAND)
        self.sample.setReadOnly(True)
        self.sample.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.copy_sample_button = QPushButton("Copy")
        self.copy_sample_button.clicked.connect(self.copy_sample)
        self._copied_timer = QTimer(self)
        self._copied_timer.setSingleShot(True)
        self._copied_timer.setInterval(COPIED_MS)
        self._copied_timer.timeout.connect(lambda: self.copy_sample_button.setText("Copy"))
        row = QHBoxLayout()
        row.addWidget(self.sample, 1)
        row.addWidget(self.copy_sample_button)
        return row

    def copy_sample(self) -> None:
        """Copy the sample command; the button says "Copied" a moment."""
        QGuiApplication.clipboard().setText(self.sample.text())
        self.copy_sample_button.setText("Copied ✓")
        self._copied_timer.start()

    def _demo_clicked(self) -> None:
        self.set_demo_message("Starting the demo server…", busy=True)
        self.demo_requested.emit()

    def set_demo_message(self, text: str, busy: bool = False) -> None:
        """Say how the demo is going; the button is disabled while it starts."""
        self.demo_message.setText(text)
        self.demo_button.setEnabled(not busy)

    def _add(self) -> None:
        from kvwall.widgets.viewmodels.settings_model import InvalidSetting, normalise_url

        try:
            url = normalise_url(self.url_edit.text())
        except InvalidSetting as exc:
            self.url_message.setText(str(exc).replace("server URL: ", "Not a server URL: "))
            return
        self.url_message.setText(f"Watching {url}")
        self.url_edit.clear()
        self.url_added.emit(url)

    def choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a GGUF model", "",
                                              "GGUF models (*.gguf);;All files (*)")
        if path:
            self.open_planner(path)

    def open_planner(self, path: str) -> PlanDialog:
        free = self._memory_bytes() if self._memory_bytes else None
        self.dialog = PlanDialog(path, free, self)
        self.dialog.show()
        return self.dialog


# --- the planner dialog (the planning itself: kvwall.widgets.viewmodels.planner) ---------

class _PlanSignals(QObject):
    done = Signal(object)


class _PlanJob(QRunnable):
    def __init__(self, path: str, flags: str, memory_bytes: int | None) -> None:
        super().__init__()
        self.setAutoDelete(False)  # the dialog keeps it until its result arrives
        self.args = (path, flags, memory_bytes)
        self.signals = _PlanSignals()

    def run(self) -> None:
        self.signals.done.emit(plan_html(*self.args))


class PlanDialog(QDialog):
    """``kvwall plan MODEL.gguf [flags]`` in a window; planning runs off the GUI thread.

    Signals:
        planned(PlanOutcome): a result is shown.
    """

    planned = Signal(object)

    def __init__(self, path: str, memory_bytes: int | None, parent: QWidget | None = None,
                 flags: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle("kvwall plan")
        self.resize(760, 560)
        self.path = path
        self.memory_bytes = memory_bytes
        self.flags_edit = QLineEdit(flags)
        self.flags_edit.setPlaceholderText("llama-server flags, e.g. -c 32768 -np 2 -ctk q8_0")
        self.flags_edit.returnPressed.connect(self.replan)
        run = QPushButton("Plan")
        run.clicked.connect(self.replan)
        self.view = QTextBrowser()
        self.status = QLabel()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(QLabel("Flags"))
        row.addWidget(self.flags_edit, 1)
        row.addWidget(run)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.status)
        lay.addWidget(self.view, 1)
        lay.addWidget(buttons)
        self._jobs: list[_PlanJob] = []
        self.outcome: PlanOutcome | None = None
        self.replan()

    def replan(self) -> None:
        self.status.setText("Reading the model…")
        job = _PlanJob(self.path, self.flags_edit.text(), self.memory_bytes)
        job.signals.done.connect(self._show, Qt.ConnectionType.QueuedConnection)
        self._jobs.append(job)
        QThreadPool.globalInstance().start(job)

    def _show(self, outcome: PlanOutcome) -> None:
        self._jobs = [j for j in self._jobs if j.args[:2] != (outcome.path, outcome.flags)]
        self.outcome = outcome
        if outcome.error:
            self.status.setText(f"<span style='color:#c62828'>{html.escape(outcome.error)}</span>")
            self.view.setHtml("")
        else:
            self.status.setText("")
            self.view.setHtml(outcome.html)
        self.planned.emit(outcome)
