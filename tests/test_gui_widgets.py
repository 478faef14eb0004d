"""Viewer building blocks tested with synthetic engine events (no training run needed)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PyQt6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")


from gui.app import build_parser, create_window, display_available  # noqa: E402
from gui.bridge import EngineBridge  # noqa: E402
from gui.control import WorkerControl  # noqa: E402
from gui.controls import ControlPanel  # noqa: E402
from gui.inputs import slider_from_speed, speed_from_slider  # noqa: E402
from gui.jobs import EventRelay, PlaybackFrame, reference_dt  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402
from gui.orbit_items import MAX_MASS_CLASSES, TrailBuffer, mass_classes  # noqa: E402
from gui.orbit_view import OrbitView  # noqa: E402
from gui.plots import REL_DE_DISPLAY_RANGE, LivePlots  # noqa: E402
from gui.session import RunState  # noqa: E402
from gui.status import RunCounters  # noqa: E402
from nbtoolkit import RunStopped, hookimpl  # noqa: E402
from nbtoolkit.errors import ConfigError, PluginError  # noqa: E402
from nbtoolkit.events import EpochEnd, ReplayIteration, StepAccepted, StepRejected  # noqa: E402
from nbtoolkit.presets import PRESETS  # noqa: E402
from nbtoolkit.training import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def accepted_event(systems: list[int], step: int = 0, *, n: int = 2, seed: int = 0) -> StepAccepted:
    """A StepAccepted for ``systems`` of N = ``n`` bodies in 2-D at well separated positions."""
    rng = np.random.default_rng(seed)
    k = len(systems)
    position = rng.normal(size=(k, n, 2)) + np.arange(n)[None, :, None] * 3.0
    return StepAccepted(
        epoch=0, step=step, systems=np.array(systems), dt=rng.uniform(0.01, 0.1, k), rel_dE=rng.uniform(1e-7, 1e-4, k),
        retrains=rng.integers(0, 4, k), time=rng.uniform(0, 1, k), position=position,
        velocity=rng.normal(size=(k, n, 2)), mass=np.ones((k, n)),
    )


def rejected_event(systems: list[int], rel: float = 3e-3) -> StepRejected:
    k = len(systems)
    return StepRejected(epoch=0, step=0, attempt=1, systems=np.array(systems), dt=np.full(k, 0.2),
                        rel_dE=np.full(k, rel), loss=1.5)


def epoch_event(epoch: int, iterations: int, pass_rate: float, loss: float) -> EpochEnd:
    return EpochEnd(epoch=epoch, accepted_steps=10, retrains=2, replay_iterations=iterations, replay_converged=True,
                    replay_skipped=False, pass_rate=pass_rate, loss=loss, mean_dt=0.05, buffer_size=10, wall_time=1.0)


# ----------------------------------------------------------------------------- relay and bridge
def test_relay_sends_every_hook_event_on_with_the_reference_dt(host):
    freefall = host.predictors.create("freefall")
    sent: list[tuple[str, object]] = []
    relay = EventRelay(lambda kind, payload: sent.append((kind, payload)), freefall, G=1.0, softening=0.0)
    host.register_plugin(relay, name=relay.plugin_name)
    try:
        event, epoch = accepted_event([0, 1], n=3), epoch_event(0, 3, 1.0, 0.1)
        host.hook.nbtoolkit_step_accepted(event=event)
        host.hook.nbtoolkit_epoch_end(event=epoch)
    finally:
        host.unregister_plugin(relay.plugin_name)
    host.hook.nbtoolkit_step_accepted(event=event)  # unregistered: no longer called
    assert [kind for kind, _ in sent] == ["step_accepted", "epoch_end"]
    (received, ref), received_epoch = sent[0][1], sent[1][1]
    assert received is event and received_epoch is epoch
    expected = reference_dt(freefall, event.mass, event.position, event.velocity, event.time, 1.0, 0.0)
    np.testing.assert_allclose(ref, expected)
    assert ref.shape == (2,) and np.all(ref > 0)


def test_relay_survives_a_broken_reference_rule():
    class Broken(torch.nn.Module):
        def forward(self, state, history=None):
            raise RuntimeError("no dt today")

    sent: list[tuple[str, object]] = []
    relay = EventRelay(lambda kind, payload: sent.append((kind, payload)), Broken(), G=1.0, softening=0.0)  # type: ignore[arg-type]
    relay.nbtoolkit_step_accepted(accepted_event([0]))
    relay.nbtoolkit_step_accepted(accepted_event([0]))
    assert [kind for kind, _ in sent] == ["notice", "step_accepted", "step_accepted"]
    assert "no dt today" in str(sent[0][1])
    assert [payload[1] for kind, payload in sent if kind == "step_accepted"] == [None, None]


def test_bridge_emits_the_signal_of_each_message_kind(qtbot):
    bridge = EngineBridge()
    got: list[tuple] = []
    bridge.step_accepted.connect(lambda event, ref: got.append(("accepted", event, ref)))
    bridge.epoch_ended.connect(lambda event: got.append(("epoch", event)))
    bridge.checkpoint_failed.connect(lambda path, message: got.append(("failed", path, message)))
    bridge.notice.connect(lambda message: got.append(("notice", message)))
    event, epoch, ref = accepted_event([0]), epoch_event(0, 1, 1.0, 0.0), np.array([0.1])
    bridge.deliver("step_accepted", (event, ref))
    bridge.deliver("epoch_end", epoch)
    bridge.deliver("checkpoint_failed", ("x.pt", "disk full"))
    bridge.deliver("notice", "hello")
    assert got == [("accepted", event, ref), ("epoch", epoch), ("failed", "x.pt", "disk full"), ("notice", "hello")]
    with pytest.raises(ValueError, match="unknown message kind 'bogus'"):
        bridge.deliver("bogus", None)


# ----------------------------------------------------------------------------- worker control
def test_worker_control_runs_tasks_between_steps_even_while_paused():
    control = WorkerControl()
    ran: list[str] = []
    control.pause()
    finished = threading.Event()

    def loop() -> None:
        try:
            control.checkpoint()
        except RunStopped:
            ran.append("stopped")
        finished.set()

    thread = threading.Thread(target=loop)
    thread.start()
    deadline = time.monotonic() + 5
    while not control.parked and time.monotonic() < deadline:
        time.sleep(0.005)
    assert control.parked
    control.submit(lambda: ran.append("task"))
    deadline = time.monotonic() + 5
    while "task" not in ran and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ran == ["task"] and control.parked and not finished.is_set()
    control.stop()
    thread.join(5)
    assert ran == ["task", "stopped"] and not control.parked


def test_worker_control_sleep_returns_early_on_stop():
    control = WorkerControl()
    threading.Timer(0.05, control.stop).start()
    start = time.monotonic()
    control.sleep(30.0)
    assert time.monotonic() - start < 10.0
    with pytest.raises(RunStopped):
        control.checkpoint()


# ----------------------------------------------------------------------------- plots
def test_plots_record_events_per_system_and_push_them_to_the_curves(qtbot):
    plots = LivePlots()
    qtbot.addWidget(plots)
    plots.reset("train", n_systems=2, energy_threshold=2e-4, band=(1e-6, 1e-4), reference_name="freefall")
    plots.add_rejected(rejected_event([1], rel=float("inf")))
    first = accepted_event([0, 1], seed=1)
    plots.add_accepted(first, reference_dt=np.array([0.5, 0.6]))
    plots.add_rejected(rejected_event([0], rel=5e-3))
    second = accepted_event([0], seed=2)
    plots.add_accepted(second)
    plots.add_epoch(epoch_event(0, iterations=7, pass_rate=0.75, loss=0.3))
    plots.add_epoch(epoch_event(1, iterations=1, pass_rate=1.0, loss=0.0))

    s0, s1 = plots.series(0), plots.series(1)
    np.testing.assert_array_equal(s0["step"], [1, 2])
    np.testing.assert_allclose(s0["rel_dE"], [first.rel_dE[0], second.rel_dE[0]])
    np.testing.assert_allclose(s0["dt"], [first.dt[0], second.dt[0]])
    np.testing.assert_allclose(s0["retrains"], [first.retrains[0], second.retrains[0]])
    np.testing.assert_array_equal(s0["rejected_step"], [2])  # tried for step 2 of system 0
    np.testing.assert_array_equal(s1["rejected_step"], [1])
    np.testing.assert_array_equal(s1["rejected_rel_dE"], [np.inf])
    np.testing.assert_array_equal(s0["reference_step"], [2])  # the state after step 1 starts step 2
    np.testing.assert_allclose(s1["reference_dt"], [0.6])

    assert plots.redraws == 0
    plots.show_system(1)
    assert plots.refresh() and not plots.refresh()
    x, y = plots.curves["rel_dE"].getOriginalDataset()
    np.testing.assert_array_equal(x, [1])
    np.testing.assert_allclose(y, [first.rel_dE[1]])
    _, y_rej = plots.curves["rejected_rel_dE"].getOriginalDataset()
    assert y_rej[0] == REL_DE_DISPLAY_RANGE[1]  # a blown-up attempt is drawn at the ceiling
    x_ep, y_it = plots.curves["replay_iterations"].getOriginalDataset()
    np.testing.assert_array_equal(x_ep, [1, 2])
    np.testing.assert_array_equal(y_it, [7, 1])
    np.testing.assert_allclose(plots.curves["pass_rate"].getOriginalDataset()[1], [0.75, 1.0])
    np.testing.assert_allclose(plots.curves["loss"].getOriginalDataset()[1], [0.3, 0.0])
    assert plots.threshold_line.value() == pytest.approx(np.log10(2e-4))

    plots.reset("simulate", n_systems=1, energy_threshold=None)
    assert len(plots.series()["step"]) == 0 and not plots.threshold_line.isVisible()


def test_plots_record_simulation_frames(qtbot):
    plots = LivePlots()
    qtbot.addWidget(plots)
    plots.reset("simulate", n_systems=2, energy_threshold=1e-3, reference_name="aarseth")
    frames = [
        PlaybackFrame(step=k, time=np.array([0.1 * k, 0.2 * k]), position=np.zeros((2, 3, 2)),
                      dt=np.array([0.1, 0.2]), rel_dE=np.array([1e-6, 2e-6]) * k, drift=np.array([1e-6, 3e-6]) * k,
                      halvings=np.array([0, k % 2]), reference_dt=np.array([0.05, 0.07]))
        for k in (1, 2, 3)
    ]
    plots.add_frames(frames)
    s1 = plots.series(1)
    np.testing.assert_array_equal(s1["step"], [1, 2, 3])
    np.testing.assert_allclose(s1["drift"], [3e-6, 6e-6, 9e-6])
    np.testing.assert_array_equal(s1["retrains"], [1, 0, 1])
    np.testing.assert_array_equal(s1["reference_step"], [1, 2, 3])
    assert plots.epoch_view.isHidden()


# ----------------------------------------------------------------------------- orbit view
def test_mass_classes_cover_every_body_once_and_grow_with_mass():
    kepler = mass_classes(np.array([1.0, 1e-3]))
    assert len(kepler) == 2
    light, heavy = sorted(kepler, key=lambda c: c.size)
    assert list(light.bodies) == [1] and list(heavy.bodies) == [0]
    many = np.random.default_rng(0).lognormal(size=500)
    classes = mass_classes(many)
    assert 1 < len(classes) <= MAX_MASS_CLASSES
    assert sorted(np.concatenate([c.bodies for c in classes]).tolist()) == list(range(500))
    assert len(mass_classes(np.ones(1000))) == 1


def test_trail_buffer_keeps_the_newest_frames_in_order():
    buffer = TrailBuffer(4, n_bodies=1, dim=2)
    for k in range(6):
        buffer.push(np.full((1, 2), k))
    np.testing.assert_array_equal(buffer.ordered()[:, 0, 0], [2, 3, 4, 5])
    np.testing.assert_array_equal(buffer.resized(2).ordered()[:, 0, 0], [4, 5])


def test_orbit_view_draws_only_on_refresh_with_trails_and_projection(qtbot):
    view = OrbitView(trail_length=100)
    qtbot.addWidget(view)
    n = 1000
    mass = np.where(np.arange(n) < 10, 5.0, 1.0)
    view.set_system(mass, dim=3)
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(150, n, 3))
    for k, frame in enumerate(frames):
        view.push_frame(frame, time=0.01 * k)
    assert view.frames_drawn == 0  # pushing data never redraws
    assert view.n_frames == 101
    assert view.refresh() and not view.refresh()
    assert view.frames_drawn == 1
    assert view.time_label.text() == f"t = {0.01 * 149:.6g}"
    xs = np.concatenate([s.getData()[0] for s in view._dots])
    assert sorted(xs.tolist()) == sorted(frames[-1, :, 0].tolist())
    segments = sum(len(c.getData()[0]) for bands in view._trails for c in bands)
    assert segments == 2 * 100 * n  # 100 segments per body, two ends each
    view.plane_combo.setCurrentText("x-z")
    assert view.refresh()
    ys = np.concatenate([s.getData()[1] for s in view._dots])
    assert sorted(ys.tolist()) == sorted(frames[-1, :, 2].tolist())
    view.trail_spin.setValue(10)
    assert view.n_frames == 11


def test_orbit_view_merges_sub_pixel_trail_segments_unless_asked_not_to(qtbot):
    view = OrbitView(trail_length=100)
    qtbot.addWidget(view)
    view.resize(500, 500)
    view.show()
    n = 200
    view.set_system(np.ones(n), dim=2)
    rng = np.random.default_rng(1)
    base = rng.normal(size=(n, 2))
    spread = np.array([[-5.0, -5.0], [5.0, 5.0]])  # two bodies far out fix the view to about +-5
    for k in range(101):
        frame = base + 1e-4 * k  # every body creeps by far less than a pixel per point
        frame[:2] = spread
        view.push_frame(frame, time=k)
    view.refresh()
    assert view.stride > 1
    x, _ = view._dots[0].getData()
    np.testing.assert_allclose(np.sort(x), np.sort(frame[:, 0]))  # the newest positions are always drawn
    thinned = sum(len(c.getData()[0]) for c in view._trails[0])
    view.level_of_detail = False
    view.push_frame(frame, time=101)
    view.refresh()
    assert view.stride == 1
    assert sum(len(c.getData()[0]) for c in view._trails[0]) == 2 * 100 * n > thinned


# ----------------------------------------------------------------------------- controls
class FakePlugin:
    """A third-party plugin providing one of each kind of registry entry."""

    @hookimpl
    def nbtoolkit_register_integrators(self, register):
        register("test-fake-integrator", lambda: None)

    @hookimpl
    def nbtoolkit_register_dt_predictors(self, register):
        register("test-fake-dt", lambda: None)

    @hookimpl
    def nbtoolkit_register_replay_samplers(self, register):
        register("test-fake-sampler", lambda: None)

    @hookimpl
    def nbtoolkit_register_gates(self, register):
        register("test-fake-gate", lambda: None)

    @hookimpl
    def nbtoolkit_register_external_fields(self, register):
        register("test-fake-field", lambda: None)


def combo_items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def test_dropdowns_list_the_registries_including_a_plugin_registered_at_run_time(qtbot, host):
    name = host.register_plugin(FakePlugin(), name="test-fake-plugin")
    try:
        panel = ControlPanel(host)
        qtbot.addWidget(panel)
        assert combo_items(panel.integrator_combo) == host.integrators.names()
        assert "test-fake-integrator" in combo_items(panel.integrator_combo)
        assert "leapfrog" in combo_items(panel.integrator_combo)
        assert "test-fake-dt" in combo_items(panel.predictor_combo)
        assert "test-fake-sampler" in combo_items(panel.sampler_combo)
        assert combo_items(panel.gate_combo) == host.gates.names() and "test-fake-gate" in combo_items(panel.gate_combo)
        assert panel.integrator_combo.currentText() == "leapfrog"  # the default stays preselected
        assert panel.gate_combo.currentText() == "energy"
        assert combo_items(panel.field_combo) == ["none", *host.fields.names()]
        assert {"plummer-host", "point-mass-host", "test-fake-field"} <= set(combo_items(panel.field_combo))
        assert panel.field_combo.currentText() == "none"  # no field unless one is chosen
    finally:
        host.unregister_plugin(name)
    panel.refresh_plugins()
    assert "test-fake-integrator" not in combo_items(panel.integrator_combo)


def test_controls_build_the_config_and_the_preset_from_the_widgets(qtbot, host):
    panel = ControlPanel(host)
    qtbot.addWidget(panel)
    panel.system_form.set_preset("kepler", {"eccentricity": 0.7, "masses": (1.0, 0.5)})
    panel.threshold_edit.setText("5e-4")
    panel.epochs_spin.setValue(3)
    panel.steps_spin.setValue(11)
    panel.batch_spin.setValue(32)
    panel.lr_edit.setText("2e-3")
    panel.seed_spin.setValue(7)
    config = panel.train_config()
    assert (config.energy_threshold, config.epochs, config.steps_per_epoch) == (5e-4, 3, 11)
    assert (config.replay_batch_size, config.learning_rate, config.seed) == (32, 2e-3, 7)
    assert (config.integrator, config.predictor, config.sampler, config.gate) == ("leapfrog", "mlp", "uniform", "energy")
    panel.gate_combo.setCurrentText("pair-energy")
    panel.guard_check.setChecked(True)
    assert panel.train_config().gate == "pair-energy"
    assert (panel.simulation_settings().gate, panel.simulation_settings().guard_threshold) == ("pair-energy", 5e-4)
    system = panel.system_form.build_system()
    assert system.params["eccentricity"] == 0.7 and system.params["masses"] == (1.0, 0.5)
    assert set(panel.system_form.preset_params()) == set(PRESETS["kepler"].params)

    panel.system_form.param_widgets["eccentricity"].setText("1.5")
    with pytest.raises(ConfigError, match="eccentricity"):
        panel.system_form.build_system()
    panel.lr_edit.setText("fast")
    with pytest.raises(ConfigError, match="learning rate"):
        panel.train_config()
    with pytest.raises(ConfigError, match="does not take parameter 'nope'"):
        panel.system_form.set_preset("kepler", {"nope": 1})


def test_field_choice_reaches_the_config_and_the_simulation_settings(qtbot, host):
    panel = ControlPanel(host)
    qtbot.addWidget(panel)
    assert (panel.train_config().field, panel.train_config().field_options) == ("", {})
    assert panel.simulation_settings().field_name == ""
    panel.field_combo.setCurrentText("plummer-host")
    assert panel.field_options_edit.placeholderText() == "mass=100.0, radius=10.0"  # the declared defaults
    assert "\nradius = 10: scale radius of the Plummer sphere, a (a finite number > 0)" in panel.field_options_edit.toolTip()
    panel.field_options_edit.setText(" mass=50, radius = 2.5 ,")
    config = panel.train_config()
    assert (config.field, config.field_options) == ("plummer-host", {"mass": 50, "radius": 2.5})
    settings = panel.simulation_settings()
    assert (settings.field_name, settings.field_options) == ("plummer-host", {"mass": 50, "radius": 2.5})

    for text, error, match in [
        ("mass", ConfigError, "field options: expected KEY=VALUE, got 'mass'"),
        ("mass=1, mass=2", ConfigError, "field options mass is given twice"),
        ("depth=3", PluginError, r"does not take option\(s\) depth; it takes: mass, radius"),
        ("mass=-1", PluginError, r"option 'mass' of external field 'plummer-host' \(plugin 'plugins.fields'\) "
                                 "must be finite and > 0; got -1.0"),
        ("radius=wide", PluginError, "option 'radius' of external field 'plummer-host' .* must be a number"),
    ]:
        panel.field_options_edit.setText(text)
        with pytest.raises(error, match=match):
            panel.train_config()
        with pytest.raises(error, match=match):
            panel.simulation_settings()
    panel.field_combo.setCurrentText("none")
    assert panel.field_options_edit.placeholderText() == "KEY=VALUE, ..."
    panel.field_options_edit.setText("mass=5")
    with pytest.raises(ConfigError, match="field options need a field"):
        panel.train_config()

    panel.set_config(TrainConfig(field="point-mass-host", field_options={"mass": 1000.0, "distance": 50, "phase": 0.1}))
    assert panel.field_combo.currentText() == "point-mass-host"
    config = panel.train_config()
    assert (config.field, config.field_options) == ("point-mass-host", {"mass": 1000.0, "distance": 50, "phase": 0.1})
    panel.set_config(TrainConfig())
    assert (panel.field_combo.currentText(), panel.field_options_edit.text()) == ("none", "")
    with pytest.raises(ConfigError, match="external field 'nope' is not registered"):
        panel.set_config(TrainConfig(field="nope"))


def test_controls_load_a_toml_config_with_its_system_table(qtbot, host, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 4\nreplay_steps = 17\nenergy_threshold = 1e-3\ngate = "pair-energy"\n\n'
                    '[system]\npreset = "plummer"\nn = 12\nseed = 3\n')
    panel = ControlPanel(host)
    qtbot.addWidget(panel)
    panel.load_config(path)
    assert panel.system_form.preset_name() == "plummer" and panel.system_form.preset_params()["n"] == 12
    config = panel.train_config()
    assert (config.epochs, config.replay_steps, config.energy_threshold) == (4, 17, 1e-3)
    assert panel.gate_combo.currentText() == config.gate == "pair-energy"
    path.write_text('integrator = "warp-drive"\n')
    with pytest.raises(ConfigError, match="warp-drive"):
        panel.load_config(path)
    path.write_text('gate = "nope"\n')
    with pytest.raises(ConfigError, match="gate 'nope' is not registered; registered: energy, pair-energy"):
        panel.load_config(path)


def test_speed_slider_maps_log_scale_and_max():
    assert speed_from_slider(slider_from_speed(0)) == 0.0
    for speed in (1.0, 30.0, 120.0, 5000.0):
        assert speed_from_slider(slider_from_speed(speed)) == pytest.approx(speed, rel=0.06)


# ----------------------------------------------------------------------------- window
def test_window_redraws_on_its_frame_timer_not_per_event(qtbot, host):
    window = MainWindow(host)
    qtbot.addWidget(window)
    window.frame_timer.stop()
    window.controls.system_form.set_preset("kepler")
    window.plots.reset("train", n_systems=1, energy_threshold=2e-4)
    drawn = window.orbit.frames_drawn, window.plots.redraws
    for k in range(300):
        window.session.bridge.deliver("step_accepted", (accepted_event([0], step=k, seed=k), None))
    qtbot.wait(50)
    assert len(window.plots.accepted) == 300
    assert (window.orbit.frames_drawn, window.plots.redraws) == drawn
    window.frame_timer.start()
    qtbot.waitUntil(lambda: window.plots.redraws > drawn[1], timeout=5000)
    assert window.orbit.frames_drawn > drawn[0]
    assert window.orbit.frames_drawn - drawn[0] < 300


def test_setup_errors_show_in_the_window_and_leave_it_usable(qtbot, host):
    window = MainWindow(host)
    qtbot.addWidget(window)
    window.controls.system_form.set_preset("kepler")
    window.controls.system_form.param_widgets["eccentricity"].setText("2")
    assert window.start_training() is False
    assert "eccentricity" in window.error_text() and not window.is_running
    window.controls.set_mode("simulate")
    window.controls.system_form.param_widgets["eccentricity"].setText("0.5")
    assert window.start() is False  # no model trained yet and no checkpoint chosen
    assert "no trained model" in window.error_text()
    assert window.controls.start_button.isEnabled()


def test_display_available_follows_the_environment(monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert display_available() is False
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert display_available() is True
    monkeypatch.delenv("WAYLAND_DISPLAY")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert display_available() is True


def test_create_window_preloads_options_and_reports_bad_ones(qtbot, tmp_path):
    config = tmp_path / "cfg.toml"
    config.write_text('epochs = 2\n[system]\npreset = "figure-eight"\n')
    args = build_parser().parse_args(["--config", str(config), "--checkpoint", str(tmp_path / "missing.pt")])
    window = create_window(args)
    qtbot.addWidget(window)
    assert window.controls.system_form.preset_name() == "figure-eight"
    assert window.controls.epochs_spin.value() == 2
    assert "missing.pt" in window.error_text()
    args = build_parser().parse_args(["--preset", "pythagorean"])
    other = create_window(args)
    qtbot.addWidget(other)
    assert other.controls.system_form.preset_name() == "pythagorean" and other.error_text() == ""
    assert other.orbit.n_frames == 1  # the initial state is shown before any run


def test_python_m_gui_without_a_display_exits_with_a_message():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    proc = subprocess.run([sys.executable, "-m", "gui", "--preset", "kepler"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no display" in proc.stderr


def test_the_viewer_flies_with_the_loaded_configs_integrator_options(qtbot, host):
    from nbtoolkit.training import TrainConfig as _TrainConfig

    panel = ControlPanel(host)
    qtbot.addWidget(panel)
    panel.set_config(_TrainConfig(integrator="rk4", integrator_options={"x": 1}))
    assert panel.integrator_options() == {"x": 1}
    panel.integrator_combo.setCurrentText("leapfrog")
    assert panel.integrator_options() == {}


def test_log_axes_label_whole_decades_only_and_legends_stay_off_the_data(qtbot):
    from gui.plots import DecadeAxis

    plots = LivePlots()
    qtbot.addWidget(plots)
    axis = plots.dt_plot.getAxis("left")
    assert isinstance(axis, DecadeAxis) and axis.logMode
    labels = axis.tickStrings([-2.0, -1.9542, -1.0, np.log10(0.02), -6.0], 1.0, 0.1)
    assert labels == ["0.01", "", "0.1", "", "1e-6"]  # minor ticks of a short range no longer overprint
    for plot in (plots.err_plot, plots.dt_plot):
        assert plot.legend.parentItem() is plot  # in the title row, not inside the view box over the data


def test_status_counters_follow_the_run_and_format_its_state():
    counters = RunCounters()
    counters.step_accepted(accepted_event([0, 1]))
    counters.step_rejected(rejected_event([0]))
    texts = counters.texts(RunState.RUNNING, "train", 61.25)
    assert (texts["state"], texts["epoch"], texts["steps"], texts["retrains"], texts["elapsed"]) == \
        ("training", "epoch 1", "accepted 2", "retrains 1", "01:01.2")
    assert texts["part2"] == "" and texts["time"] == ""
    counters.replay_iteration(ReplayIteration(epoch=0, iteration=3, batch_size=8, pass_count=6, fail_count=2,
                                              mean_rel_dE=1e-5, max_rel_dE=1e-4, loss=0.1))
    assert counters.texts(RunState.PAUSED, "train", 0.0)["part2"] == "Part 2 it 3: 6/8 pass"
    counters.epoch_ended(epoch_event(0, 3, 0.75, 0.1))  # the engine's own counts win
    texts = counters.texts(RunState.STOPPING, "train", 0.0)
    assert (texts["state"], texts["steps"], texts["retrains"], texts["part2"]) == \
        ("stopping", "accepted 10", "retrains 2", "")
    counters.reset()
    frame = PlaybackFrame(step=7, time=np.array([0.5, 2.5]), position=np.zeros((2, 2, 2)), dt=np.ones(2),
                          rel_dE=np.zeros(2), drift=np.zeros(2), halvings=np.zeros(2), reference_dt=None)
    counters.frames([frame], system=1)
    texts = counters.texts(RunState.IDLE, None, 0.0)
    assert (texts["state"], texts["steps"], texts["time"], texts["epoch"]) == ("idle", "step 7", "t = 2.5", "")
