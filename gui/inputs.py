"""Small pieces of the control panel: simulation settings, number inputs, option lines, the speed
slider's scale."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PyQt6.QtGui import QDoubleValidator
from PyQt6.QtWidgets import QLineEdit, QSpinBox

from nbtoolkit import validate
from nbtoolkit.errors import ConfigError
from nbtoolkit.options import Setting, format_default

#: playback speeds offered by the slider (steps per second); the last slider position is "max"
SPEED_RANGE = (1.0, 5000.0)
SPEED_SLIDER_STEPS = 100
DEFAULT_SPEED = 120.0
#: the largest value of an integer input
MAX_INT = 2**31 - 1


@dataclass(frozen=True)
class SimulationSettings:
    """What Simulate plays: the model source (a checkpoint path, or None for the model just
    trained), steps (0 = until stopped), speed in steps per second (0 = as fast as possible),
    the guard threshold (None = off), the gate that judges the steps (a registry name) and the
    external field the systems move in (a registry name, "" = none) with its factory's options."""

    checkpoint: str | None
    steps: int
    speed: float
    guard_threshold: float | None
    gate: str
    field_name: str = ""
    field_options: dict[str, Any] = dataclasses.field(default_factory=dict)


def format_float(value: float) -> str:
    return f"{value:.6g}"


def float_edit(value: float, tooltip: str) -> QLineEdit:
    """A line edit for a float (scientific notation allowed)."""
    edit = QLineEdit(format_float(value))
    validator = QDoubleValidator()
    validator.setNotation(QDoubleValidator.Notation.ScientificNotation)
    edit.setValidator(validator)
    edit.setToolTip(tooltip)
    return edit


def int_spin(value: int, low: int, high: int, tooltip: str) -> QSpinBox:
    """A spin box for an int in [low, high] that reports a value once editing ends."""
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tooltip)
    spin.setKeyboardTracking(False)
    return spin


def read_float(edit: QLineEdit, key: str) -> float:
    """The float in ``edit``; a ConfigError naming ``key`` when it is not a number."""
    text = edit.text().strip()
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{key} must be a number; got {text!r}") from None


def parse_options(text: str, key: str) -> dict[str, Any]:
    """The options of a line ``KEY=VALUE, KEY=VALUE`` (values read as on the command line, see
    :func:`nbtoolkit.validate.option_pair`); a ConfigError naming ``key`` when one is malformed."""
    pairs = []
    for item in text.split(","):
        if item.strip():
            try:
                pairs.append(validate.option_pair(item.strip()))
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    return validate.option_dict(pairs, key)


def format_options(options: dict[str, Any]) -> str:
    """``options`` as a line that :func:`parse_options` reads back (strings without commas)."""
    return ", ".join(f"{key}={_option_text(value)}" for key, value in options.items())


def options_hint(declared: Sequence[Setting]) -> tuple[str, str]:
    """(placeholder, list) for an option line of a plugin that declares ``declared``: its defaults as a
    line that :func:`parse_options` reads (``KEY=VALUE, ...`` when it declares none), and one line
    per option with its default, help and what it accepts."""
    placeholder = format_options({s.name: s.default for s in declared if s.default is not None}) or "KEY=VALUE, ..."
    listed = "\n".join(f"{s.name} = {format_default(s.default)}: {s.help} ({s.rule})" for s in declared)
    return placeholder, listed


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and validate.option_pair(f"v={value}")[1] != value:
        return json.dumps(value)  # a string that would read as a number or boolean
    return repr(value) if isinstance(value, float) else str(value)


def speed_from_slider(position: int) -> float:
    """Steps per second for a slider position (log scale); the last position means 0 = unlimited."""
    if position >= SPEED_SLIDER_STEPS:
        return 0.0
    lo, hi = (math.log10(v) for v in SPEED_RANGE)
    return float(10 ** (lo + (hi - lo) * position / (SPEED_SLIDER_STEPS - 1)))


def slider_from_speed(speed: float) -> int:
    """The slider position closest to ``speed`` steps per second (0 = unlimited)."""
    if speed <= 0:
        return SPEED_SLIDER_STEPS
    lo, hi = (math.log10(v) for v in SPEED_RANGE)
    frac = (math.log10(min(max(speed, SPEED_RANGE[0]), SPEED_RANGE[1])) - lo) / (hi - lo)
    return int(round(frac * (SPEED_SLIDER_STEPS - 1)))
