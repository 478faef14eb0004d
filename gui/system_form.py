"""The control panel's "System" box: the preset to train on or simulate and one input per parameter.

The presets and their parameters come from ``nbtoolkit.presets.PRESETS``; values typed by the user
are converted and checked by :func:`~nbtoolkit.presets.make_preset`, whose
:class:`~nbtoolkit.errors.ConfigError` messages name the offending parameter.
"""

from __future__ import annotations

from typing import Any

from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from nbtoolkit.errors import ConfigError
from nbtoolkit.presets import PRESETS, PresetSystem, make_preset

from .inputs import MAX_INT, format_float


class SystemForm(QGroupBox):
    """A preset drop-down, the preset's description and an input for each of its parameters
    (``param_widgets``, by parameter name)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("System", parent)
        self.param_widgets: dict[str, QWidget] = {}
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(PRESETS))
        self.preset_combo.setToolTip("Initial condition to train on or simulate")
        self.preset_description = QLabel()
        self.preset_description.setWordWrap(True)
        self.preset_description.setStyleSheet("color: gray;")
        self.params_form = QFormLayout()
        layout = QVBoxLayout(self)
        layout.addWidget(self.preset_combo)
        layout.addWidget(self.preset_description)
        layout.addLayout(self.params_form)
        self.preset_combo.currentTextChanged.connect(self._build_param_widgets)
        self._build_param_widgets(self.preset_combo.currentText())

    def set_preset(self, name: str, params: dict[str, Any] | None = None) -> None:
        """Choose preset ``name`` and set some of its parameters (others keep their defaults)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset '{name}'; known: {', '.join(sorted(PRESETS))}")
        self.preset_combo.setCurrentText(name)
        self._build_param_widgets(name)
        for raw_key, value in (params or {}).items():
            key = raw_key.replace("-", "_")
            widget = self.param_widgets.get(key)
            if widget is None:
                raise ConfigError(f"preset '{name}' does not take parameter '{raw_key}'; "
                                  f"it takes: {', '.join(self.param_widgets) or '(none)'}")
            self._set_param_widget(widget, value)

    def _build_param_widgets(self, name: str) -> None:
        while self.params_form.rowCount():
            self.params_form.removeRow(0)
        self.param_widgets = {}
        spec = PRESETS[name]
        self.preset_description.setText(spec.description)
        for key, default in spec.params.items():
            widget: QWidget
            if isinstance(default, bool):
                widget = QCheckBox()
            elif isinstance(default, int):
                widget = QSpinBox()
                widget.setRange(-MAX_INT, MAX_INT)
                widget.setKeyboardTracking(False)
            else:
                widget = QLineEdit()
            self._set_param_widget(widget, default)
            widget.setToolTip(f"{name}: {key} (default {default!r})")
            self.params_form.addRow(key.replace("_", " "), widget)
            self.param_widgets[key] = widget

    @staticmethod
    def _set_param_widget(widget: QWidget, value: Any) -> None:
        if isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, QSpinBox):
            widget.setValue(int(value))
        elif isinstance(widget, QLineEdit):
            if isinstance(value, (tuple, list)):
                widget.setText(", ".join(format_float(v) if isinstance(v, float) else str(v) for v in value))
            elif isinstance(value, float):
                widget.setText(format_float(value))
            else:
                widget.setText(str(value))

    def preset_name(self) -> str:
        return self.preset_combo.currentText()

    def preset_params(self) -> dict[str, Any]:
        """The parameter values shown (text fields as typed; ``make_preset`` converts them)."""
        params: dict[str, Any] = {}
        for key, widget in self.param_widgets.items():
            if isinstance(widget, QCheckBox):
                params[key] = widget.isChecked()
            elif isinstance(widget, QSpinBox):
                params[key] = widget.value()
            elif isinstance(widget, QLineEdit):
                params[key] = widget.text().strip()
        return params

    def build_system(self) -> PresetSystem:
        """Build the chosen preset with the shown parameters (raises ConfigError naming a bad one)."""
        return make_preset(self.preset_name(), **self.preset_params())

    def set_editable(self, editable: bool) -> None:
        """Let the user change the preset and its parameters, or not (while a run is active)."""
        for widget in (self.preset_combo, *self.param_widgets.values()):
            widget.setEnabled(editable)
