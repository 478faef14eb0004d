"""The error banner above the views: the last error, dismissable, its traceback in the tooltip."""

from __future__ import annotations

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget


class ErrorBanner(QFrame):
    """A dismissable red banner showing the last error; the traceback is in its tooltip."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setStyleSheet("ErrorBanner { background: #5c1a1a; border: 1px solid #a33; border-radius: 3px; }"
                           "QLabel { color: #ffdede; }")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QPushButton("Dismiss")
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(close)
        self.hide()

    def show_message(self, text: str, details: str | None = None) -> None:
        self.label.setText(text)
        self.setToolTip(details or "")
        self.show()

    def text(self) -> str:
        return self.label.text()
