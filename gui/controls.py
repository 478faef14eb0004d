"""The control panel: system preset and its parameters (:class:`~gui.system_form.SystemForm`),
plugin choices, training and simulation settings, and the run buttons.

The integrator, dt-predictor, replay-sampler, gate and external-field drop-downs are filled from
the plugin host's registries (:meth:`ControlPanel.refresh_plugins`), so a plugin installed by a third party shows
up with no change here. The training defaults come from ``TrainConfig``; values typed by the user
are validated by it, whose :class:`~nbtoolkit.errors.ConfigError` messages name the offending key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from nbtoolkit.errors import ConfigError
from nbtoolkit.plugin_manager import PluginHost
from nbtoolkit.training import TrainConfig
from nbtoolkit.training.config import read_toml

from .inputs import (
    DEFAULT_SPEED,
    MAX_INT,
    SPEED_SLIDER_STEPS,
    SimulationSettings,
    float_edit,
    format_float,
    format_options,
    int_spin,
    options_hint,
    parse_options,
    read_float,
    slider_from_speed,
    speed_from_slider,
)
from .modes import MODE_SIMULATE, MODE_TRAIN, check_mode
from .system_form import SystemForm

NO_REFERENCE = "(none)"
NO_FIELD = "none"
PREFERRED = {"integrator": "leapfrog", "predictor": "mlp", "sampler": "uniform", "gate": "energy",
             "reference": "freefall", "field": NO_FIELD}
MODEL_TRAINED = "model just trained"
MODEL_CHECKPOINT = "checkpoint file"


class ControlPanel(QWidget):
    """All settings and run buttons. The window connects the ``*_clicked`` signals."""

    start_clicked = pyqtSignal()
    pause_clicked = pyqtSignal()
    stop_clicked = pyqtSignal()
    save_clicked = pyqtSignal()
    speed_changed = pyqtSignal(float)  # steps per second, 0 = unlimited

    def __init__(self, host: PluginHost, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.host = host
        self._base_config: dict[str, Any] = TrainConfig().to_dict()
        defaults = TrainConfig()

        # ---- system
        self.system_form = SystemForm()

        # ---- plugins
        self.integrator_combo = QComboBox()
        self.predictor_combo = QComboBox()
        self.sampler_combo = QComboBox()
        self.gate_combo = QComboBox()
        self.reference_combo = QComboBox()
        self.integrator_combo.setToolTip("Integrator plugin (from the plugin registry)")
        self.predictor_combo.setToolTip("dt predictor plugin to train, e.g. mlp (from the plugin registry)")
        self.sampler_combo.setToolTip("Replay sampler plugin for Part 2 (from the plugin registry)")
        self.gate_combo.setToolTip("Gate that accepts or rejects every step, in training and in the Simulate guard "
                                   "(from the plugin registry): energy = whole-system |dE/E|")
        self.reference_combo.setToolTip("Classical dt rule drawn as a reference on the dt plot")
        self.field_combo = QComboBox()
        self.field_combo.setToolTip("External field the systems move in, in training and in Simulate "
                                    "(from the plugin registry); the energy then includes its potential")
        self.field_options_edit = QLineEdit()
        self.field_combo.currentTextChanged.connect(self._show_field_options)
        self.reload_button = QPushButton("Reload plugins")
        self.reload_button.setToolTip("Re-read the plugin registries")
        self.reload_button.clicked.connect(self.refresh_plugins)
        plugin_box = QGroupBox("Plugins")
        plugin_form = QFormLayout(plugin_box)
        plugin_form.addRow("integrator", self.integrator_combo)
        plugin_form.addRow("dt predictor", self.predictor_combo)
        plugin_form.addRow("replay sampler", self.sampler_combo)
        plugin_form.addRow("gate", self.gate_combo)
        plugin_form.addRow("field", self.field_combo)
        plugin_form.addRow("field options", self.field_options_edit)
        plugin_form.addRow("reference dt", self.reference_combo)
        plugin_form.addRow(self.reload_button)

        # ---- training
        self.threshold_edit = float_edit(defaults.energy_threshold,
                                         "Gate threshold: a step passes when the gate's error (|dE/E|) <= this")
        self.epochs_spin = int_spin(defaults.epochs, 1, MAX_INT, "Epochs (Part 1 + Part 2 each)")
        self.steps_spin = int_spin(defaults.steps_per_epoch, 1, MAX_INT, "Accepted Part 1 steps per system and epoch")
        self.batch_spin = int_spin(defaults.replay_batch_size, 1, MAX_INT, "Part 2 replay minibatch size")
        self.lr_edit = float_edit(defaults.learning_rate, "Optimizer learning rate")
        self.seed_spin = int_spin(defaults.seed, 0, MAX_INT, "Random seed of the model and the replay sampler")
        train_page = QWidget()
        train_form = QFormLayout(train_page)
        train_form.addRow("energy threshold", self.threshold_edit)
        train_form.addRow("epochs", self.epochs_spin)
        train_form.addRow("steps per epoch", self.steps_spin)
        train_form.addRow("replay batch size", self.batch_spin)
        train_form.addRow("learning rate", self.lr_edit)
        train_form.addRow("seed", self.seed_spin)

        # ---- simulation
        self.model_combo = QComboBox()
        self.model_combo.addItems([MODEL_TRAINED, MODEL_CHECKPOINT])
        self.model_combo.setToolTip("Play with the model trained in this window or one loaded from a checkpoint")
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("checkpoint file (.pt)")
        self.browse_button = QPushButton("Browse...")
        self.browse_button.clicked.connect(self._browse_checkpoint)
        checkpoint_row = QHBoxLayout()
        checkpoint_row.addWidget(self.checkpoint_edit, 1)
        checkpoint_row.addWidget(self.browse_button)
        self.sim_steps_spin = int_spin(0, 0, MAX_INT, "Steps to play (0 = until Stop)")
        self.sim_steps_spin.setSpecialValueText("until stopped")
        self.speed_slider = QSlider(Qt.Orientation.Horizontal)
        self.speed_slider.setRange(0, SPEED_SLIDER_STEPS)
        self.speed_slider.setValue(slider_from_speed(DEFAULT_SPEED))
        self.speed_slider.setToolTip("Playback speed in steps per second (rightmost: as fast as possible)")
        self.speed_label = QLabel()
        self.speed_label.setMinimumWidth(80)
        self.speed_slider.valueChanged.connect(self._on_speed_slider)
        speed_row = QHBoxLayout()
        speed_row.addWidget(self.speed_slider, 1)
        speed_row.addWidget(self.speed_label)
        self.guard_check = QCheckBox("halve dt when a step fails the gate")
        self.guard_check.setToolTip("Guard during playback: retry a step whose gate error exceeds the threshold "
                                    "with half the dt")
        sim_page = QWidget()
        sim_form = QFormLayout(sim_page)
        sim_form.addRow("model", self.model_combo)
        sim_form.addRow(checkpoint_row)
        sim_form.addRow("steps", self.sim_steps_spin)
        sim_form.addRow("speed", speed_row)
        sim_form.addRow(self.guard_check)

        self.mode_tabs = QTabWidget()
        self.mode_tabs.addTab(train_page, "Train")
        self.mode_tabs.addTab(sim_page, "Simulate")
        self.mode_tabs.currentChanged.connect(lambda _: self._update_start_text())
        tab_bar = self.mode_tabs.tabBar()
        assert tab_bar is not None  # a QTabWidget always has its tab bar
        self._tab_bar = tab_bar

        # ---- run buttons
        self.start_button = QPushButton()
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.save_button = QPushButton("Save checkpoint...")
        self.save_button.setToolTip("Write the trained model to a checkpoint file (taken between two steps)")
        self.start_button.clicked.connect(self.start_clicked)
        self.pause_button.clicked.connect(self.pause_clicked)
        self.stop_button.clicked.connect(self.stop_clicked)
        self.save_button.clicked.connect(self.save_clicked)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.stop_button):
            buttons.addWidget(button)

        settings = QWidget()
        settings_layout = QVBoxLayout(settings)
        settings_layout.addWidget(self.system_form)
        settings_layout.addWidget(plugin_box)
        settings_layout.addWidget(self.mode_tabs)
        settings_layout.addStretch(1)
        scroll = QScrollArea()  # the settings scroll; the run buttons below always stay visible
        scroll.setWidget(settings)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.save_button)
        self.setMinimumWidth(340)

        self.refresh_plugins()
        self._on_speed_slider(self.speed_slider.value())
        self._update_start_text()
        self.set_run_state(None, paused=False, can_save=False)

    # ------------------------------------------------------------------ plugins
    def refresh_plugins(self) -> None:
        """Fill the drop-downs from the host's registries, keeping the current choices if still there."""
        self._fill(self.integrator_combo, self.host.integrators.names(), PREFERRED["integrator"])
        self._fill(self.predictor_combo, self.host.predictors.names(), PREFERRED["predictor"])
        self._fill(self.sampler_combo, self.host.samplers.names(), PREFERRED["sampler"])
        self._fill(self.gate_combo, self.host.gates.names(), PREFERRED["gate"])
        self._fill(self.reference_combo, [NO_REFERENCE, *self.host.predictors.names()], PREFERRED["reference"])
        self._fill(self.field_combo, [NO_FIELD, *self.host.fields.names()], PREFERRED["field"])
        self._show_field_options()

    def _show_field_options(self) -> None:
        """Show the options that the chosen field declares (their defaults, help and what they accept)
        on the field options line."""
        name = self.field_combo.currentText()
        declared = self.host.fields.get(name).options() if name in self.host.fields else ()
        placeholder, listed = options_hint(declared)
        self.field_options_edit.setPlaceholderText(placeholder)
        self.field_options_edit.setToolTip("Options of the external field's factory, comma separated "
                                           "(as --field-option on the command line)" + (f":\n{listed}" if listed else ""))

    @staticmethod
    def _fill(combo: QComboBox, names: list[str], preferred: str) -> None:
        current = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        for choice in (current, preferred):
            index = combo.findText(choice)
            if choice and index >= 0:
                combo.setCurrentIndex(index)
                break
        combo.blockSignals(False)

    @staticmethod
    def _select(combo: QComboBox, name: str, what: str) -> None:
        index = combo.findText(name)
        if index < 0:
            known = ", ".join(combo.itemText(i) for i in range(combo.count())) or "(none)"
            raise ConfigError(f"{what} '{name}' is not registered; registered: {known}")
        combo.setCurrentIndex(index)

    def reference_name(self) -> str | None:
        """Name of the classical reference dt rule, or None."""
        name = self.reference_combo.currentText()
        return None if name in ("", NO_REFERENCE) else name

    def field_choice(self) -> tuple[str, dict[str, Any]]:
        """The external field chosen ("" = none) and its options, checked by building it here, so that a
        bad option is a ConfigError or PluginError before any run starts."""
        name = self.field_combo.currentText()
        name = "" if name == NO_FIELD else name
        options = parse_options(self.field_options_edit.text(), "field options")
        if not name:
            if options:
                raise ConfigError("field options need a field: choose one in the 'field' drop-down")
            return name, options
        self.host.fields.create(name, **options)
        return name, options

    # ------------------------------------------------------------------ training settings
    def train_config(self) -> TrainConfig:
        """The training configuration: the loaded (or default) config with the shown settings on top."""
        values = dict(self._base_config)
        field_name, field_options = self.field_choice()
        values.update(
            energy_threshold=read_float(self.threshold_edit, "energy threshold"),
            epochs=self.epochs_spin.value(),
            steps_per_epoch=self.steps_spin.value(),
            replay_batch_size=self.batch_spin.value(),
            learning_rate=read_float(self.lr_edit, "learning rate"),
            seed=self.seed_spin.value(),
            integrator=self.integrator_combo.currentText(),
            predictor=self.predictor_combo.currentText(),
            sampler=self.sampler_combo.currentText(),
            gate=self.gate_combo.currentText(),
            field=field_name,
            field_options=field_options,
        )
        return TrainConfig.from_dict(values)

    def integrator_options(self) -> dict:
        """The ``integrator_options`` of the loaded config when its integrator is the one selected, else none."""
        if self._base_config.get("integrator") != self.integrator_combo.currentText():
            return {}
        return dict(self._base_config.get("integrator_options") or {})

    def set_config(self, config: TrainConfig) -> None:
        """Show ``config`` (plugin names must be registered); keys without a widget are kept as the base."""
        self._select(self.integrator_combo, config.integrator, "integrator")
        self._select(self.predictor_combo, config.predictor, "dt predictor")
        self._select(self.sampler_combo, config.sampler, "replay sampler")
        self._select(self.gate_combo, config.gate, "gate")
        self._select(self.field_combo, config.field or NO_FIELD, "external field")
        self.field_options_edit.setText(format_options(config.field_options))
        self._base_config = config.to_dict()
        self.threshold_edit.setText(format_float(config.energy_threshold))
        self.epochs_spin.setValue(config.epochs)
        self.steps_spin.setValue(config.steps_per_epoch)
        self.batch_spin.setValue(config.replay_batch_size)
        self.lr_edit.setText(format_float(config.learning_rate))
        self.seed_spin.setValue(config.seed)

    def load_config(self, path: str | Path) -> None:
        """Load a training TOML file, including its ``[system]`` table (preset and parameters)."""
        data, system = read_toml(path)
        try:
            config = TrainConfig.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        self.set_config(config)
        if system:
            system = dict(system)
            preset = system.pop("preset", None)
            if preset is None:
                raise ConfigError(f"{path}: the [system] table needs a 'preset' key in the viewer")
            self.system_form.set_preset(str(preset), system)

    # ------------------------------------------------------------------ simulation settings
    @property
    def mode(self) -> str:
        """"train" or "simulate": what Start does."""
        return MODE_SIMULATE if self.mode_tabs.currentIndex() == 1 else MODE_TRAIN

    def set_mode(self, mode: str) -> None:
        self.mode_tabs.setCurrentIndex(1 if check_mode(mode) == MODE_SIMULATE else 0)

    def set_checkpoint(self, path: str | Path) -> None:
        """Use the checkpoint at ``path`` for Simulate."""
        self.checkpoint_edit.setText(str(path))
        self.model_combo.setCurrentText(MODEL_CHECKPOINT)

    def speed(self) -> float:
        """Playback speed in steps per second (0 = unlimited)."""
        return speed_from_slider(self.speed_slider.value())

    def set_speed(self, steps_per_second: float) -> None:
        self.speed_slider.setValue(slider_from_speed(steps_per_second))

    def simulation_settings(self) -> SimulationSettings:
        checkpoint = None
        if self.model_combo.currentText() == MODEL_CHECKPOINT:
            checkpoint = self.checkpoint_edit.text().strip()
            if not checkpoint:
                raise ConfigError("choose a checkpoint file to simulate with (or use the model just trained)")
        guard = read_float(self.threshold_edit, "energy threshold") if self.guard_check.isChecked() else None
        field_name, field_options = self.field_choice()
        return SimulationSettings(checkpoint, self.sim_steps_spin.value(), self.speed(), guard,
                                  self.gate_combo.currentText(), field_name, field_options)

    def _on_speed_slider(self, position: int) -> None:
        speed = speed_from_slider(position)
        self.speed_label.setText("max" if speed == 0 else f"{speed:.3g} steps/s")
        self.speed_changed.emit(speed)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load checkpoint", self.checkpoint_edit.text(),
                                              "Checkpoints (*.pt *.pth *.ckpt);;All files (*)")
        if path:
            self.set_checkpoint(path)

    # ------------------------------------------------------------------ run state
    def _update_start_text(self) -> None:
        self.start_button.setText("Start simulation" if self.mode == MODE_SIMULATE else "Start training")

    def set_run_state(self, running: str | None, *, paused: bool, can_save: bool) -> None:
        """Enable the widgets that make sense: ``running`` is the active mode or None when idle."""
        idle = running is None
        self.system_form.set_editable(idle)
        settings = (
            self.integrator_combo, self.predictor_combo, self.sampler_combo, self.gate_combo,
            self.field_combo, self.field_options_edit, self.reference_combo,
            self.reload_button, self._tab_bar, self.start_button, self.threshold_edit, self.epochs_spin,
            self.steps_spin, self.batch_spin, self.lr_edit, self.seed_spin, self.model_combo, self.checkpoint_edit,
            self.browse_button, self.sim_steps_spin, self.guard_check,
        )
        for widget in settings:
            widget.setEnabled(idle)
        # the playback speed stays adjustable while playing
        self.pause_button.setEnabled(not idle)
        self.pause_button.setText("Resume" if paused else "Pause")
        self.stop_button.setEnabled(not idle)
        self.save_button.setEnabled(can_save)
