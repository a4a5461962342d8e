"""What the window shows when no server runs: how servers are found, a field to add a
server URL, and the planner for a GGUF file chosen from disk (``kvwall plan`` in a dialog).
"""

from __future__ import annotations

import html
import logging
import shlex
from dataclasses import dataclass

from kvwall.budget.units import format_bytes
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

log = logging.getLogger(__name__)

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

    def __init__(self, parent: QWidget | None = None, memory_bytes=None) -> None:
        super().__init__(parent)
        self._memory_bytes = memory_bytes  # callable -> int | None: free memory now
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


# --- the planner -----------------------------------------------------------------------

@dataclass(frozen=True)
class PlanOutcome:
    """What planning a model gave: the plan and its what-if table, or an error."""

    path: str
    flags: str
    html: str
    error: str | None = None


def plan_html(path: str, flags: str, memory_bytes: int | None) -> PlanOutcome:
    """Read the model and plan it (file I/O: call it off the GUI thread)."""
    from kvwall.budget.config import ConfigError, parse_command_line
    from kvwall.budget.memory import plan_memory, what_if_table
    from kvwall.monitors.gguf import GGUFError, read_model

    try:
        extra = shlex.split(flags)
        config = parse_command_line(["llama-server", "-m", path, *extra])
        model = read_model(path)
        plan = plan_memory(model, config, free_bytes=memory_bytes)
        table = (what_if_table(model, config, memory_bytes=memory_bytes)
                 if memory_bytes and plan.ok else [])
    except (GGUFError, ConfigError, ValueError, OSError) as exc:
        return PlanOutcome(path, flags, "", str(exc))
    except Exception as exc:  # never a traceback to the user
        log.exception("planning %s failed", path)
        return PlanOutcome(path, flags, "", f"kvwall could not plan this model: {exc}")
    e = html.escape
    out = [f"<h3>{e(model.name)}</h3><p>{e(path)}<br>{e(model.architecture)}, "
           f"{model.n_layer_all} layers, trained context {model.n_ctx_train:,}</p>"]
    if not plan.ok:
        out.append("<p style='color:#c62828'><b>llama.cpp would refuse this "
                   "configuration:</b><br>" + "<br>".join(e(x) for x in plan.errors) + "</p>")
        return PlanOutcome(path, flags, "".join(out))
    fb = format_bytes
    out.append(f"<p>Context {plan.n_ctx:,} cells, {plan.n_ctx_seq:,} per slot × {plan.n_seq} "
               f"slot(s){' (unified KV)' if plan.kv_unified else ''}; cache "
               f"{e(plan.cache_type_k)}/{e(plan.cache_type_v)}, flash attention "
               f"{e(plan.flash_attn)}</p>")
    out.append("<table cellspacing=0 cellpadding=3 border=1><tr><th>Device</th><th>Weights"
               "</th><th>KV cache</th><th>Compute</th><th>Total</th></tr>")
    for d in plan.devices:
        out.append(f"<tr><td>{e(d.name)}</td><td>{fb(d.weights_bytes)}</td><td>"
                   f"{fb(d.kv_bytes + d.recurrent_bytes)}</td><td>{fb(d.compute_bytes)}</td>"
                   f"<td><b>{fb(d.total_bytes)}</b></td></tr>")
    out.append(f"<tr><td><b>All</b></td><td>{fb(plan.weights_bytes)}</td><td>"
               f"{fb(plan.kv_bytes + plan.recurrent_bytes)}</td><td>{fb(plan.compute_bytes)}"
               f"</td><td><b>{fb(plan.total_bytes)}</b></td></tr></table>")
    if table:
        out.append(f"<h4>What if (largest context within {fb(memory_bytes)} free)</h4>"
                   "<table cellspacing=0 cellpadding=3 border=1><tr><th>Change</th>"
                   "<th>Saves</th><th>Largest -c</th><th>Command</th></tr>")
        for wi in table:
            if wi.refused:
                out.append(f"<tr><td>{e(wi.label)}</td><td colspan=3>refused: "
                           f"{e('; '.join(wi.plan.errors))}</td></tr>")
            else:
                out.append(f"<tr><td>{e(wi.label)}</td><td>{fb(wi.saves_bytes)}</td>"
                           f"<td>{wi.max_ctx:,}</td><td><code>{e(wi.command)}</code></td></tr>")
        out.append("</table>")
    if plan.assumptions:
        out.append("<h4>Assumptions</h4><ul>" + "".join(
            f"<li>{e(a)}</li>" for a in plan.assumptions) + "</ul>")
    return PlanOutcome(path, flags, "".join(out))


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
