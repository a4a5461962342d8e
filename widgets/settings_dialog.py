"""The preferences dialog, generated from ``kvwall.widgets.viewmodels.settings_model.SCHEMA``."""

from __future__ import annotations

from typing import Any

from kvwall.widgets.viewmodels.settings_model import (
    NOTIFY_KINDS,
    SCHEMA,
    InvalidSetting,
    ServerEntry,
    SettingField,
    Settings,
)
from PySide6.QtCore import QLocale, QModelIndex, QPersistentModelIndex
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
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)


class _KeyDelegate(QStyledItemDelegate):
    """Shows an API key as dots and edits it in a password field."""

    def displayText(self, value: object, locale: QLocale | QLocale.Language) -> str:  # noqa: N802 (Qt API)
        return "•" * 8 if value else ""

    def createEditor(self, parent: QWidget, option: QStyleOptionViewItem,  # noqa: N802 (Qt API)
                     index: QModelIndex | QPersistentModelIndex) -> QWidget:
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
        item = self.table.item(row, 0)
        if edit and item is not None:
            self.table.editItem(item)

    def remove_selected(self) -> None:
        for row in sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True):
            self.table.removeRow(row)

    def value(self) -> list[dict[str, str | None]]:
        out: list[dict[str, str | None]] = []
        for row in range(self.table.rowCount()):
            url, key = (self._text(row, 0), self._text(row, 1))
            if url or key:
                out.append({"url": url, "api_key": key or None})
        return out

    def _text(self, row: int, column: int) -> str:
        item = self.table.item(row, column)
        return (item.text() if item else "").strip()


class KindsEditor(QWidget):
    """One check box per notification kind."""

    def __init__(self, chosen: tuple[str, ...], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        v = QVBoxLayout(self)
        v.setContentsMargins(0, 0, 0, 0)
        self.checks: dict[str, QCheckBox] = {}
        for kind, text in NOTIFY_KINDS.items():
            c = QCheckBox(text)
            c.setChecked(kind in chosen)
            self.checks[kind] = c
            v.addWidget(c)

    def value(self) -> list[str]:
        return [k for k, c in self.checks.items() if c.isChecked()]


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

    def _editor(self, f: SettingField, value: Any) -> QWidget:
        if f.kind == "bool":
            check = QCheckBox()
            check.setChecked(bool(value))
            return check
        if f.kind == "int":
            spin = QSpinBox()
            spin.setRange(int(f.minimum if f.minimum is not None else -1e9),
                          int(f.maximum if f.maximum is not None else 1e9))
            spin.setValue(int(value))
            if f.unit:
                spin.setSuffix(f" {f.unit}")
            return spin
        if f.kind == "float":
            fspin = QDoubleSpinBox()
            fspin.setDecimals(1)
            fspin.setRange(f.minimum if f.minimum is not None else -1e9,
                           f.maximum if f.maximum is not None else 1e9)
            fspin.setValue(float(value))
            if f.unit:
                fspin.setSuffix(f" {f.unit}")
            return fspin
        if f.kind == "kinds":
            return KindsEditor(value)
        if f.kind == "servers":
            return ServersEditor(value)
        raise ValueError(f"no editor for {f.kind}")

    def values(self) -> dict[str, Any]:
        """What each editor holds now, by setting key (not yet validated)."""
        out: dict[str, Any] = {}
        for f in SCHEMA:
            w = self.editors[f.key]
            if isinstance(w, QCheckBox):
                out[f.key] = w.isChecked()
            elif isinstance(w, (QSpinBox, QDoubleSpinBox, KindsEditor, ServersEditor)):
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
