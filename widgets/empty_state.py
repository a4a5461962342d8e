"""What the window shows when no server runs: how servers are found, a field to add a
server URL, and the planner for a GGUF file chosen from disk (``kvwall plan`` in a dialog).
"""

from __future__ import annotations

import html
from collections.abc import Callable

from kvwall.widgets.viewmodels.planner import PlanOutcome, plan_html
from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal
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


class EmptyState(QWidget):
    """The no-server page.

    Signals:
        url_added(str): the user asked to watch this server URL (not yet validated).
    """

    url_added = Signal(str)

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
        lay.addWidget(QLabel("<b>No server yet?</b> See what a model would need, or run "
                             "<code>kvwall --demo</code> to watch a tiny server fill up:"))
        plan_row = QHBoxLayout()
        plan_row.addWidget(self.plan_button)
        plan_row.addStretch(1)
        lay.addLayout(plan_row)
        lay.addStretch(1)
        self.dialog: PlanDialog | None = None

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
