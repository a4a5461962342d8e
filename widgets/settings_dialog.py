"""The preferences dialog, generated from ``kvwall.widgets.viewmodels.settings_model.SCHEMA``."""

from __future__ import annotations

from kvwall.widgets.viewmodels.settings_model import (
    NOTIFY_KINDS,
    SCHEMA,
    InvalidSetting,
    ServerEntry,
    SettingField,
    Settings,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QStyledItemDelegate,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)


class _KeyDelegate(QStyledItemDelegate):
    """Shows an API key as dots and edits it in a password field."""

    def displayText(self, value, locale) -> str:  # noqa: N802 (Qt API)
        return "•" * 8 if value else ""

    def createEditor(self, parent, option, index):  # noqa: N802 (Qt API)
        edit = QLineEdit(parent)
        edit.setEchoMode(QLineEdit.EchoMode.Password)
        return edit


class ServersEditor(QWidget):
    """URL + API key rows."""

    def __init__(self, servers: tuple[ServerEntry, ...], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["URL", "API key"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setItemDelegateForColumn(1, _KeyDelegate(self.table))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setMinimumHeight(110)
        for s in servers:
            self.add_row(s.url, s.api_key or "")
        add = QPushButton("Add")
        add.clicked.connect(lambda: self.add_row("", "", edit=True))
        remove = QPushButton("Remove")
        remove.clicked.connect(self.remove_selected)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.table)
        lay.addLayout(buttons)

    def add_row(self, url: str, key: str, edit: bool = False) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        self.table.setItem(row, 0, QTableWidgetItem(url))
        self.table.setItem(row, 1, QTableWidgetItem(key))
        if edit:
            self.table.editItem(self.table.item(row, 0))

    def remove_selected(self) -> None:
        for row in sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True):
            self.table.removeRow(row)

    def value(self) -> list[dict]:
        out = []
        for row in range(self.table.rowCount()):
            url = (self.table.item(row, 0).text() if self.table.item(row, 0) else "").strip()
            key = (self.table.item(row, 1).text() if self.table.item(row, 1) else "").strip()
            if url or key:
                out.append({"url": url, "api_key": key or None})
        return out


class SettingsDialog(QDialog):
    """One widget per schema field, grouped; :meth:`result_settings` validates."""

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("kvwall settings")
        self._settings = settings
        self.editors: dict[str, QWidget] = {}
        lay = QVBoxLayout(self)
        groups: dict[str, QFormLayout] = {}
        for f in SCHEMA:
            if f.group not in groups:
                box = QGroupBox(f.group)
                groups[f.group] = QFormLayout(box)
                lay.addWidget(box)
            editor = self._editor(f, settings[f.key])
            self.editors[f.key] = editor
            label = QLabel(f.label)
            if f.help:
                label.setToolTip(f.help)
                editor.setToolTip(f.help)
            if f.kind in ("servers", "kinds"):
                groups[f.group].addRow(editor)
            else:
                groups[f.group].addRow(label, editor)
        self.error_label = QLabel()
        self.error_label.setStyleSheet("color: #c62828;")
        self.error_label.setWordWrap(True)
        lay.addWidget(self.error_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.new_settings: Settings | None = None

    def _editor(self, f: SettingField, value) -> QWidget:
        if f.kind == "bool":
            w = QCheckBox()
            w.setChecked(bool(value))
            return w
        if f.kind == "int":
            w = QSpinBox()
            w.setRange(int(f.minimum if f.minimum is not None else -1e9),
                       int(f.maximum if f.maximum is not None else 1e9))
            w.setValue(int(value))
            if f.unit:
                w.setSuffix(f" {f.unit}")
            return w
        if f.kind == "float":
            w = QDoubleSpinBox()
            w.setDecimals(1)
            w.setRange(f.minimum if f.minimum is not None else -1e9,
                       f.maximum if f.maximum is not None else 1e9)
            w.setValue(float(value))
            if f.unit:
                w.setSuffix(f" {f.unit}")
            return w
        if f.kind == "kinds":
            box = QWidget()
            v = QVBoxLayout(box)
            v.setContentsMargins(0, 0, 0, 0)
            box.checks = {}
            for kind, text in NOTIFY_KINDS.items():
                c = QCheckBox(text)
                c.setChecked(kind in value)
                box.checks[kind] = c
                v.addWidget(c)
            return box
        if f.kind == "servers":
            return ServersEditor(value)
        raise ValueError(f"no editor for {f.kind}")

    def values(self) -> dict:
        out = {}
        for f in SCHEMA:
            w = self.editors[f.key]
            if f.kind == "bool":
                out[f.key] = w.isChecked()
            elif f.kind in ("int", "float"):
                out[f.key] = w.value()
            elif f.kind == "kinds":
                out[f.key] = [k for k, c in w.checks.items() if c.isChecked()]
            elif f.kind == "servers":
                out[f.key] = w.value()
        return out

    def result_settings(self) -> Settings:
        """The edited settings.

        Raises:
            InvalidSetting: a value does not fit (the message names it).
        """
        return self._settings.replace(**self.values())

    def accept(self) -> None:
        try:
            self.new_settings = self.result_settings()
        except InvalidSetting as exc:
            self.error_label.setText(str(exc))
            return
        super().accept()
