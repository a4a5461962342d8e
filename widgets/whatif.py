"""The what-if panel: one click (or a free choice) to see what a configuration change
would allocate, next to what the server holds now, and copy the command line; for a
server on GPUs, the offload rows of ``kvwall plan`` (listed off the GUI thread)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvwall.budget.alerts import server_label
from kvwall.budget.cachetypes import CACHE_TYPES
from kvwall.budget.memory import MemoryPlan
from kvwall.budget.report import ServerReport
from kvwall.budget.units import format_bytes
from kvwall.budget.whatif import WhatIf
from kvwall.widgets.gauge import StackedBar
from kvwall.widgets.viewmodels import pools
from kvwall.widgets.viewmodels.pools import Segment
from kvwall.widgets.viewmodels.whatif_inputs import (
    QUICK_CHANGES,
    QUICK_LABELS,
    OffloadRow,
    WhatIfInputs,
    WhatIfResult,
    offload_rows,
    quick_changes,
    run_what_if,
    with_turns,
)
from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)


def plan_segments(plan: MemoryPlan, gpu_only: bool = False) -> tuple[Segment, ...]:
    """A plan as bar segments (weights, KV, recurrent, compute, output buffer); with
    ``gpu_only``, what its GPU rows hold (what an offload row changes)."""
    if gpu_only:
        rows = [d for d in plan.devices if not d.is_host]
        parts = [(pools.WEIGHTS, sum(d.weights_bytes for d in rows)),
                 (pools.KV, sum(d.kv_bytes for d in rows)),
                 (pools.RECURRENT, sum(d.recurrent_bytes for d in rows)),
                 (pools.COMPUTE, sum(d.compute_bytes for d in rows))]
    else:
        parts = [(pools.WEIGHTS, plan.weights_bytes), (pools.KV, plan.kv_bytes),
                 (pools.RECURRENT, plan.recurrent_bytes),
                 (pools.COMPUTE, plan.compute_bytes + plan.output_bytes)]
    return tuple(Segment(k, int(b)) for k, b in parts if b > 0)


def _plan_bytes(plan: MemoryPlan, gpu_only: bool) -> int:
    return sum(d.total_bytes for d in plan.devices if not d.is_host) if gpu_only else plan.total_bytes


COPY_TEXT = "Copy command"
COPIED_TEXT = "Copied ✓"
COPIED_MS = 1500


OFFLOAD_PROMPT = "Choose a change that moves work to the CPU…"
OFFLOAD_LISTING = "Listing the offload changes…"


class _OffloadSignals(QObject):
    done = Signal(object, object)  # the _OffloadJob, its tuple[OffloadRow, ...] (empty on failure)


class _OffloadJob(QRunnable):
    """:func:`offload_rows` on the thread pool (a few hundred plans)."""

    def __init__(self, inputs: WhatIfInputs, server: ServerReport, made_for: tuple[object, ...]) -> None:
        super().__init__()
        self.setAutoDelete(False)  # _RUNNING keeps it until its result arrives
        self.inputs, self.server, self.made_for = inputs, server, made_for
        self.signals = _OffloadSignals()

    def run(self) -> None:
        try:
            rows = offload_rows(self.inputs, self.server)
        except Exception:  # a bug in the model must not take the window down
            import logging

            logging.getLogger(__name__).exception("offload what-ifs failed")
            rows = ()
        self.signals.done.emit(self, rows)


# Jobs running, kept alive here until their result arrives on the GUI thread.
_RUNNING: set[_OffloadJob] = set()


@dataclass(frozen=True)
class _Ready:
    """What a simulation needs: the server, its accepted plan and the model inputs."""

    server: ServerReport
    plan: MemoryPlan
    inputs: WhatIfInputs


class WhatIfPanel(QWidget):
    """What-ifs for one server. Feed it with :meth:`set_server`.

    Signals:
        simulated(object): the :class:`WhatIfResult` now shown.
        offload_listed(object): the server's offload rows (``tuple[OffloadRow, ...]``)
            are in the offload list.
    """

    simulated = Signal(object)
    offload_listed = Signal(object)

    def __init__(self, parent: QWidget | None = None,
                 simulate: Callable[..., WhatIf] | None = None) -> None:
        super().__init__(parent)
        self._simulate = simulate
        self._inputs: WhatIfInputs | None = None
        self._server: ServerReport | None = None
        self._result: WhatIfResult | None = None
        self._offload: tuple[OffloadRow, ...] = ()
        self._offload_for: tuple[object, ...] | None = None  # what the list was made for

        self.heading = QLabel("Select a server to try changes")
        self.heading.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)  # every pixel counts in an 800x600 window
        lay.addWidget(self.heading)
        lay.addLayout(self._quick_buttons())
        lay.addWidget(self._offload_bar())
        # The result right under the buttons that produce it: in view in a small window.
        lay.addWidget(self._result_frame())
        lay.addWidget(self._custom_box())
        lay.addStretch(1)
        self._set_enabled(False)
        self._clear_result()

    def _quick_buttons(self) -> QGridLayout:
        """One button per quick change (``q8_0 cache``, ``1 slot`` ...), three a row."""
        self.buttons: dict[str, QPushButton] = {}
        grid = QGridLayout()
        for i, kind in enumerate(QUICK_CHANGES):
            b = QPushButton(QUICK_LABELS[kind])
            b.setObjectName(f"whatif_{kind}")
            b.clicked.connect(lambda _=False, k=kind: self.try_quick(k))
            self.buttons[kind] = b
            grid.addWidget(b, i // 3, i % 3)
        return grid

    def _offload_bar(self) -> QWidget:
        """The offload list (GPU servers): -ngl, -ncmoe, -ot, -nkvo, -ts rows."""
        self.offload_box = QComboBox()
        self.offload_box.setObjectName("whatif_offload")
        self.offload_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.offload_box.setMinimumContentsLength(20)
        self.offload_box.activated.connect(self.try_offload)
        bar = QWidget()
        row = QHBoxLayout(bar)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Offload"))
        row.addWidget(self.offload_box, 1)
        bar.setVisible(False)
        self.offload_bar = bar
        return bar

    def _custom_box(self) -> QGroupBox:
        """Cache types, slots, context and flash attention of the user's own choosing."""
        self.ctk = QComboBox()
        self.ctv = QComboBox()
        for box in (self.ctk, self.ctv):
            box.addItems(CACHE_TYPES)
            box.setMinimumContentsLength(5)
        self.slots_box = QSpinBox()
        self.slots_box.setRange(1, 256)
        self.ctx_box = QSpinBox()
        self.ctx_box.setRange(0, 16 * 1024 * 1024)
        self.ctx_box.setSingleStep(4096)
        self.ctx_box.setSpecialValueText("keep")
        self.fa_box = QComboBox()
        self.fa_box.addItems(["auto", "on", "off"])
        self.custom_button = QPushButton("Simulate")
        self.custom_button.clicked.connect(self.try_custom)
        custom = QGroupBox("Your own choice")
        form = QGridLayout(custom)
        form.addWidget(QLabel("Cache K"), 0, 0)
        form.addWidget(self.ctk, 0, 1)
        form.addWidget(QLabel("V"), 0, 2)
        form.addWidget(self.ctv, 0, 3)
        form.addWidget(QLabel("Slots (-np)"), 0, 4)
        form.addWidget(self.slots_box, 0, 5)
        form.addWidget(QLabel("Context (-c)"), 1, 0)
        form.addWidget(self.ctx_box, 1, 1)
        form.addWidget(QLabel("FA"), 1, 2)
        form.addWidget(self.fa_box, 1, 3)
        form.addWidget(self.custom_button, 1, 4, 1, 2)
        return custom

    def _result_frame(self) -> QFrame:
        """The before/after bars, the facts, the caveat or refusal, and the command."""
        self.current_bar = StackedBar(height=20)
        self.new_bar = StackedBar(height=20)
        self.current_label = QLabel("Now")
        self.new_label = QLabel("After")
        bars = QGridLayout()
        bars.addWidget(self.current_label, 0, 0)
        bars.addWidget(self.current_bar, 0, 1)
        bars.addWidget(self.new_label, 1, 0)
        bars.addWidget(self.new_bar, 1, 1)
        bars.setColumnStretch(1, 1)

        self.result_title = QLabel()
        self.result_title.setWordWrap(True)
        self.saved_label = QLabel()
        self.max_ctx_label = QLabel()
        self.turns_label = QLabel()
        # Long facts ("capped by the model's trained context") wrap: never wider than the
        # panel, whose right edge (Copy command) would be cut.
        for lab in (self.max_ctx_label, self.turns_label):
            lab.setWordWrap(True)
        self.caveat_label = QLabel()
        self.caveat_label.setWordWrap(True)
        self.refused_label = QLabel()
        self.refused_label.setWordWrap(True)
        self.refused_label.setStyleSheet("color: #c62828;")
        self.command_view = QPlainTextEdit()
        self.command_view.setReadOnly(True)
        self.command_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        # Three lines: a typical command (binary, model path, flags) shows whole, and the
        # result still fits an 800x600 window.
        self.command_view.setMaximumHeight(
            3 * self.command_view.fontMetrics().lineSpacing() + 14)
        self.copy_button = QPushButton(COPY_TEXT)
        self.copy_button.clicked.connect(self.copy_command)
        self.copy_button.setEnabled(False)
        # "Copied" shows this long, then the button reads "Copy command" again.
        self._copied_timer = QTimer(self)
        self._copied_timer.setSingleShot(True)
        self._copied_timer.setInterval(COPIED_MS)
        self._copied_timer.timeout.connect(lambda: self.copy_button.setText(COPY_TEXT))

        result = QFrame()
        rl = QVBoxLayout(result)
        rl.setContentsMargins(0, 0, 0, 0)
        # Copy sits beside the title: visible even when the panel is short.
        title_row = QHBoxLayout()
        title_row.addWidget(self.result_title, 1)
        title_row.addWidget(self.copy_button)
        rl.addLayout(title_row)
        rl.addLayout(bars)
        facts = self._facts = QFormLayout()
        facts.addRow("Memory saved", self.saved_label)
        facts.addRow("Largest context", self.max_ctx_label)
        facts.addRow("Fullest slot full in", self.turns_label)
        rl.addLayout(facts)
        rl.addWidget(self.caveat_label)
        rl.addWidget(self.refused_label)
        rl.addWidget(self.command_view)
        self.result_frame = result
        return result

    # -- inputs ------------------------------------------------------------------
    def set_server(self, server: ServerReport | None, inputs: WhatIfInputs | None) -> None:
        """The server to simulate; without inputs the panel says why it cannot."""
        changed_server = (server.key if server else None) != (
            self._server.key if self._server else None)
        self._server, self._inputs = server, inputs
        plan = server.plan if server else None
        if server is None:
            self.heading.setText("Select a server to try changes")
        elif inputs is None or plan is None or not plan.ok:
            self.heading.setText(
                f"{server_label(server)}: what-ifs need the server's model file and command line "
                "(kvwall reads them from the local process; a URL-only server cannot be "
                "simulated).")
        else:
            self.heading.setText(f"What if {server_label(server)} ran with…")
        state = self._ready()
        ready = state is not None
        self._set_enabled(ready)
        # Ready, the window's box title names the server; the heading says only why not.
        self.heading.setVisible(not ready)
        if state is not None:
            for kind, b in self.buttons.items():
                applies = quick_changes(kind, state.plan, state.inputs.config) is not None
                b.setEnabled(applies)
                if kind == "half_slots":  # hidden where it equals "one fewer slot"
                    b.setVisible(applies)
            if changed_server:
                self.ctk.setCurrentText(state.plan.cache_type_k)
                self.ctv.setCurrentText(state.plan.cache_type_v)
                self.slots_box.setValue(state.plan.n_seq)
                self.ctx_box.setValue(0)
                self.fa_box.setCurrentText(state.inputs.config.flash_attn)
            self.current_bar.set_segments(plan_segments(state.plan), self._scale())
        else:  # not the previous server's bar under this one's name
            self.current_bar.set_segments(())
        self.result_frame.setVisible(ready)
        self._sync_offload(state)
        if changed_server or not ready:
            self._clear_result()
        elif self._result is not None and not self._result.what_if.refused:
            # Same server, newer poll: the slot grew, so "full in" moves on.
            fresh = with_turns(self._result.what_if, server)
            if fresh != self._result:
                self._result = fresh
                self._show_turns(fresh)

    # -- offload -------------------------------------------------------------------
    def _sync_offload(self, state: _Ready | None) -> None:
        """List the offload rows of a GPU server once per server and command line."""
        gpu = state is not None and bool(state.inputs.gpu_names)
        self.offload_bar.setVisible(gpu)
        if state is None or not gpu:
            self._offload, self._offload_for = (), None
            return
        wanted = (state.server.key, state.inputs.config.argv, state.inputs.model.path)
        if wanted == self._offload_for:
            return
        self._offload_for, self._offload = wanted, ()
        self.offload_box.clear()
        self.offload_box.addItem(OFFLOAD_LISTING)
        self.offload_box.setEnabled(False)
        job = _OffloadJob(state.inputs, state.server, wanted)
        job.signals.done.connect(self._offload_done)
        _RUNNING.add(job)
        QThreadPool.globalInstance().start(job)

    def _offload_done(self, job: _OffloadJob, rows: tuple[OffloadRow, ...]) -> None:
        _RUNNING.discard(job)
        if job.made_for != self._offload_for:
            return  # another server (or command line) is shown now
        self._offload = rows
        self.offload_box.clear()
        self.offload_box.addItem(OFFLOAD_PROMPT if rows else "No offload change for this server")
        for r in rows:
            self.offload_box.addItem(r.text)
        self.offload_box.setEnabled(bool(rows))
        self.offload_listed.emit(rows)

    def offload(self) -> tuple[OffloadRow, ...]:
        """The offload rows listed for the server shown."""
        return self._offload

    def try_offload(self, index: int) -> WhatIfResult | None:
        """Show offload row ``index`` of the list (0 is the prompt: nothing)."""
        if not 0 < index <= len(self._offload) or self._ready() is None:
            return None
        self.offload_box.setCurrentIndex(index)
        result = with_turns(self._offload[index - 1].result.what_if, self._server)
        self._show(result)
        self.simulated.emit(result)
        return result

    def ready(self) -> bool:
        """Whether the server shown can be simulated."""
        return self._ready() is not None

    def _set_enabled(self, on: bool) -> None:
        for b in self.buttons.values():
            b.setEnabled(on)
        for w in (self.ctk, self.ctv, self.slots_box, self.ctx_box, self.fa_box,
                  self.custom_button):
            w.setEnabled(on)

    def _scale(self, other: MemoryPlan | None = None, gpu_only: bool = False) -> int:
        plan = self._server.plan if self._server else None
        totals = [_plan_bytes(p, gpu_only) for p in (plan, other) if p is not None and p.ok]
        return max(totals, default=1)

    # -- actions -----------------------------------------------------------------
    def try_quick(self, kind: str) -> WhatIfResult | None:
        ready = self._ready()
        if ready is None:
            return None
        changes = quick_changes(kind, ready.plan, ready.inputs.config)
        if changes is None:
            return None
        return self.try_changes(changes, QUICK_LABELS[kind])

    def try_custom(self) -> WhatIfResult | None:
        ready = self._ready()
        if ready is None:
            return None
        plan = ready.plan
        changes: dict[str, Any] = {}
        if self.ctk.currentText() != plan.cache_type_k:
            changes["cache_type_k"] = self.ctk.currentText()
        if self.ctv.currentText() != plan.cache_type_v:
            changes["cache_type_v"] = self.ctv.currentText()
        if self.slots_box.value() != plan.n_seq:
            changes["n_parallel"] = self.slots_box.value()
        if self.ctx_box.value():
            changes["n_ctx"] = self.ctx_box.value()
        if self.fa_box.currentText() != ready.inputs.config.flash_attn:
            changes["flash_attn"] = self.fa_box.currentText()
        return self.try_changes(changes, None)

    def try_changes(self, changes: dict[str, Any], label: str | None) -> WhatIfResult | None:
        ready = self._ready()
        if ready is None:
            return None
        try:
            result = run_what_if(ready.inputs, ready.server, changes, label,
                                 simulate=self._simulate)
        except Exception as exc:  # a bug in the model must not take the window down
            import logging

            logging.getLogger(__name__).exception("what-if failed")
            self._clear_result()
            self.refused_label.setText(f"kvwall could not simulate this: {exc}")
            self._sync_visibility()
            return None
        self._show(result)
        self.simulated.emit(result)
        return result

    def _ready(self) -> _Ready | None:
        """The server, its plan and the simulator's inputs, when all are there."""
        server, inputs = self._server, self._inputs
        if server is None or inputs is None or server.plan is None or not server.plan.ok:
            return None
        return _Ready(server, server.plan, inputs)

    def _clear_result(self) -> None:
        self._result = None
        self.result_title.setText("Click a change above to see what it allocates.")
        self.new_bar.set_segments(())
        for lab in (self.saved_label, self.max_ctx_label, self.turns_label, self.caveat_label,
                    self.refused_label):
            lab.setText("")
        self._set_command("")
        self._sync_visibility()

    def _set_command(self, command: str) -> None:
        self._copied_timer.stop()
        self.copy_button.setText(COPY_TEXT)
        self.command_view.setPlainText(command)
        self.copy_button.setEnabled(bool(command))

    def _sync_visibility(self) -> None:
        """Show only the parts that have something to say (the panel then fits)."""
        shown = self._result is not None and not self._result.what_if.refused
        for w in (self.new_label, self.new_bar):
            w.setVisible(shown)
        for i in range(self._facts.rowCount()):
            self._facts.setRowVisible(i, shown)
        self.caveat_label.setVisible(bool(self.caveat_label.text()))
        self.refused_label.setVisible(bool(self.refused_label.text()))
        has_command = bool(self.command_view.toPlainText())
        self.command_view.setVisible(has_command)
        self.copy_button.setVisible(has_command)

    def _show(self, result: WhatIfResult) -> None:
        self._result = result
        wi = result.what_if
        self.result_title.setText(f"<b>{wi.label}</b>")
        if wi.refused:
            self.new_bar.set_segments(())
            self.refused_label.setText("llama.cpp would refuse this configuration: "
                                       + "; ".join(wi.plan.errors))
            for lab in (self.saved_label, self.max_ctx_label, self.turns_label):
                lab.setText("–")
            self.caveat_label.setText("")
            self._set_command("")
            self._sync_visibility()
            return
        self.refused_label.setText("")
        gpu_only = wi.offload is not None  # an offload row moves bytes off the GPUs
        scale = self._scale(wi.plan, gpu_only)
        current = self._server.plan if self._server is not None else None
        self.current_bar.set_segments(
            plan_segments(current, gpu_only) if current is not None else (), scale)
        self.new_bar.set_segments(plan_segments(wi.plan, gpu_only), scale)
        saved = wi.saves_bytes
        # "Memory saved: 2 MiB", but "Memory: costs 4 MiB more" (never "saved: costs").
        self.saved_label.setText(
            format_bytes(saved) if saved >= 0 else f"costs {format_bytes(-saved)} more")
        row_label = self._facts.labelForField(self.saved_label)
        if isinstance(row_label, QLabel):
            what = "GPU memory" if gpu_only else "Memory"
            row_label.setText(f"{what} saved" if saved >= 0 else what)
        self.max_ctx_label.setText(self._largest_context_text(wi))
        self._show_turns(result)
        self.caveat_label.setText(f"<i>{wi.caveat}</i>" if wi.caveat else "")
        self._set_command(wi.command)
        self._sync_visibility()

    def _largest_context_text(self, wi: WhatIf) -> str:
        """The largest ``-c``, saying when the model's trained context caps it, not memory."""
        train = self._inputs.model.n_ctx_train if self._inputs is not None else 0
        per_slot = wi.max_ctx if wi.plan.kv_unified else wi.max_ctx // max(1, wi.plan.n_seq)
        if train and per_slot >= train:
            return f"{wi.max_ctx:,} tokens (-c): capped by the model's trained context ({train:,})"
        return f"{wi.max_ctx:,} tokens (-c) with the memory free now"

    def _show_turns(self, result: WhatIfResult) -> None:
        if result.turns_left_after is None:
            self.turns_label.setText("– (no finished request seen yet)")
        else:
            self.turns_label.setText(
                f"{pools.requests_left(result.turns_left_after)} "
                f"(now {pools.requests_left(result.turns_left_now)})")

    def result(self) -> WhatIfResult | None:
        return self._result

    def copy_command(self) -> None:
        """Copy the command line to the clipboard; the button says "Copied" a moment."""
        if self._result is not None and not self._result.what_if.refused:
            QGuiApplication.clipboard().setText(self._result.what_if.command)
            self.copy_button.setText(COPIED_TEXT)
            self._copied_timer.start()

