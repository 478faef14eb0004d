"""The viewer driving real training and simulation runs in their own process (tiny configs)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("PyQt6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PyQt6.QtGui import QImage  # noqa: E402

from gui.jobs import reference_dt  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402
from nbtoolkit import hookimpl  # noqa: E402
from nbtoolkit.events import EpochEnd  # noqa: E402
from nbtoolkit.integrator import Integrator  # noqa: E402
from nbtoolkit.presets import make_preset  # noqa: E402
from nbtoolkit.training import TrainConfig, Trainer, load_predictor, read_checkpoint  # noqa: E402

TIMEOUT_MS = 60_000
TINY: dict[str, Any] = dict(steps_per_epoch=12, replay_batch_size=8, replay_steps=20, seed=0)


def engine_records(path: Path) -> list[dict]:
    """The events the engine fired in the run's process, as its metrics log wrote them."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def window(qtbot, host):
    win = MainWindow(host)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.shutdown()


def configure(window: MainWindow, **overrides) -> None:
    window.controls.set_config(TrainConfig.from_dict({**TINY, **overrides}))
    window.controls.system_form.set_preset("kepler", {"eccentricity": 0.5})


def wait_finished(qtbot, window: MainWindow):
    if window.is_running:
        with qtbot.waitSignal(window.run_finished, timeout=TIMEOUT_MS) as blocker:
            pass
        return blocker.args[0]
    return window.last_outcome


def test_training_fills_the_plots_with_the_engine_metrics_then_simulates_the_model(qtbot, window, host, tmp_path):
    log = tmp_path / "metrics.jsonl"
    configure(window, epochs=2, metrics_log=str(log))
    with qtbot.waitSignal(window.epoch_finished, timeout=TIMEOUT_MS) as blocker:
        assert window.start_training()
    assert isinstance(blocker.args[0], EpochEnd) and blocker.args[0].epoch == 0
    outcome = wait_finished(qtbot, window)
    assert outcome.kind == "finished", outcome.error
    window.refresh()

    records = engine_records(log)
    accepted = [r for r in records if r["event"] == "StepAccepted" and 0 in r["systems"]]
    rows = [r["systems"].index(0) for r in accepted]
    series = window.plots.series(0)
    assert len(accepted) == 2 * TINY["steps_per_epoch"]
    np.testing.assert_array_equal(series["step"], np.arange(1, len(accepted) + 1))
    np.testing.assert_allclose(series["rel_dE"], [r["rel_dE"][j] for r, j in zip(accepted, rows)])
    np.testing.assert_allclose(series["dt"], [r["dt"][j] for r, j in zip(accepted, rows)])
    np.testing.assert_array_equal(series["retrains"], [r["retrains"][j] for r, j in zip(accepted, rows)])
    x, y = window.plots.curves["dt"].getOriginalDataset()
    np.testing.assert_allclose(y, series["dt"])

    epochs = [r for r in records if r["event"] == "EpochEnd"]
    ep = window.plots.epoch_series()
    np.testing.assert_array_equal(ep["epoch"], [1, 2])
    np.testing.assert_array_equal(ep["replay_iterations"], [r["replay_iterations"] for r in epochs])
    np.testing.assert_allclose(ep["pass_rate"], [r["pass_rate"] for r in epochs])
    np.testing.assert_allclose(ep["loss"], [r["loss"] for r in epochs])
    assert f"accepted {sum(r['accepted_steps'] for r in epochs)}" in window.status_text()
    assert "epoch 2 / 2" in window.status_text()
    assert window.orbit.frames_drawn >= 1 and window.orbit.n_frames > 1

    # the finished run's model can be saved (by the run's process, still there) and loaded back
    saved = tmp_path / "after.pt"
    with qtbot.waitSignal(window.session.bridge.checkpoint_saved, timeout=TIMEOUT_MS):
        assert window.save_checkpoint(saved)
    assert isinstance(load_predictor(saved), torch.nn.Module)
    # the reference curve is the freefall rule on the accepted states; the last one is the final state
    final = read_checkpoint(saved)["state"]
    expected = reference_dt(host.predictors.create("freefall"), final["mass"].numpy(), final["position"].numpy(),
                            final["velocity"].numpy(), final["time"].numpy(), final["G"], final["softening"])
    assert series["reference_step"][-1] == len(accepted) + 1
    np.testing.assert_allclose(series["reference_dt"][-1], expected[0])

    # Simulate with the model just trained
    window.controls.set_mode("simulate")
    window.controls.sim_steps_spin.setValue(25)
    window.controls.set_speed(0)
    assert window.start()
    outcome = wait_finished(qtbot, window)
    assert outcome.kind == "finished", outcome.error
    window.refresh()
    assert outcome.result.steps == 25
    sim = window.plots.series(0)
    np.testing.assert_array_equal(sim["step"], np.arange(1, 26))
    assert np.all(sim["dt"] > 0) and len(sim["drift"]) == 25
    assert window.orbit.time == pytest.approx(float(np.sum(sim["dt"])))


def test_pause_stops_new_data_and_resume_restarts_it(qtbot, window, tmp_path):
    log = tmp_path / "metrics.jsonl"
    configure(window, epochs=10_000, metrics_log=str(log))
    assert window.start_training()
    qtbot.waitUntil(lambda: len(window.plots.accepted) >= 3, timeout=TIMEOUT_MS)
    window.pause()
    assert window.controls.pause_button.text() == "Resume"
    qtbot.waitUntil(lambda: window.session.parked, timeout=TIMEOUT_MS)  # everything sent before is delivered
    engine_events, shown = len(engine_records(log)), len(window.plots.accepted) + len(window.plots.rejected)
    qtbot.wait(400)
    assert len(engine_records(log)) == engine_events
    assert len(window.plots.accepted) + len(window.plots.rejected) == shown
    assert "paused" in window.status_text()
    # a checkpoint requested while paused is written by the run between two steps
    saved = tmp_path / "paused.pt"
    with qtbot.waitSignal(window.session.bridge.checkpoint_saved, timeout=TIMEOUT_MS) as blocker:
        assert window.save_checkpoint(saved)
    assert blocker.args == [str(saved)] and saved.is_file()
    assert len(engine_records(log)) == engine_events
    window.resume()
    qtbot.waitUntil(lambda: len(window.plots.accepted) > shown + 2, timeout=TIMEOUT_MS)
    assert len(engine_records(log)) > engine_events
    window.stop()
    assert wait_finished(qtbot, window).kind == "stopped"


def test_stop_ends_the_run_and_reenables_the_controls_and_closing_reaps_its_process(qtbot, window):
    configure(window, epochs=10_000)
    assert window.start_training()
    assert not window.controls.start_button.isEnabled()
    qtbot.waitUntil(lambda: len(window.plots.accepted) >= 2, timeout=TIMEOUT_MS)
    run = window.session.worker
    with qtbot.waitSignal(window.run_finished, timeout=TIMEOUT_MS) as blocker:
        window.stop()
    outcome = blocker.args[0]
    assert outcome.kind == "stopped" and outcome.result.stopped
    assert not window.is_running and window.session.worker is None and not run.active
    assert window.controls.start_button.isEnabled() and not window.controls.stop_button.isEnabled()
    assert window.controls.save_button.isEnabled()  # the partly trained model can be saved
    assert run.alive  # its process stays to write that checkpoint
    window.close()
    assert not run.alive and run.exitcode == 0  # exited on its own and reaped: no zombie


class ExplodingIntegrator(Integrator):
    order = 2

    def step(self, state, dt):
        raise RuntimeError("integrator exploded on purpose")


class ExplodingPlugin:
    @hookimpl
    def nbtoolkit_register_integrators(self, register):
        register("test-exploding", ExplodingIntegrator)


def test_a_training_error_shows_in_the_window_and_the_app_stays_usable(qtbot, host):
    name = host.register_plugin(ExplodingPlugin(), name="test-exploding-plugin")
    try:
        win = MainWindow(host)  # built after the plugin arrived: it is in the drop-down
        qtbot.addWidget(win)
        configure(win, epochs=1, integrator="test-exploding")
        assert win.controls.integrator_combo.currentText() == "test-exploding"
        assert win.start_training()
        outcome = wait_finished(qtbot, win)
        assert outcome.kind == "failed"
        assert "integrator exploded on purpose" in win.error_text()
        assert "integrator exploded on purpose" in (outcome.details or "")
        assert win.controls.start_button.isEnabled()
        # usable afterwards: a good run starts and produces data
        win.controls.integrator_combo.setCurrentText("leapfrog")
        with qtbot.waitSignal(win.epoch_finished, timeout=TIMEOUT_MS):
            assert win.start_training()
        assert win.error_text() == ""
        win.stop()
        wait_finished(qtbot, win)
    finally:
        host.unregister_plugin(name)


def test_screenshot_during_training_is_not_blank(qtbot, window, tmp_path):
    configure(window, epochs=10_000)
    assert window.start_training()
    qtbot.waitUntil(lambda: len(window.plots.accepted) >= 8 and window.plots.redraws >= 2, timeout=TIMEOUT_MS)
    qtbot.wait(100)
    path = tmp_path / "training.png"
    assert window.grab().save(str(path))
    window.stop()
    image = QImage(str(path)).convertToFormat(QImage.Format.Format_RGB32)
    assert image.width() > 600 and image.height() > 400
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    pixels = np.frombuffer(ptr, dtype=np.uint32).reshape(image.height(), image.bytesPerLine() // 4)
    assert len(np.unique(pixels)) > 50
    orbit = window.orbit.plot.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)
    optr = orbit.constBits()
    optr.setsize(orbit.sizeInBytes())
    orbit_pixels = np.frombuffer(optr, dtype=np.uint32)
    background = np.bincount(orbit_pixels & 0xFFFFFF).argmax()
    assert np.count_nonzero((orbit_pixels & 0xFFFFFF) != background) > 200  # bodies, trails, axes
    wait_finished(qtbot, window)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of a model trained headless for one tiny epoch on the Kepler preset."""
    path = tmp_path_factory.mktemp("gui") / "kepler.pt"
    trainer = Trainer(TrainConfig(epochs=1, **TINY), make_preset("kepler", eccentricity=0.5).state)
    trainer.fit()
    trainer.save_checkpoint(path)
    return path


def test_simulate_mode_with_a_checkpoint_animates_frames(qtbot, host, checkpoint, monkeypatch):
    from plugins.gates import PairEnergyGate

    window = MainWindow(host, isolation="thread")  # the run in this process, where the gate is watched
    qtbot.addWidget(window)
    window.show()
    judged = []
    original = PairEnergyGate.error
    monkeypatch.setattr(PairEnergyGate, "error", lambda self, *a: judged.append(1) or original(self, *a))
    window.controls.system_form.set_preset("kepler", {"eccentricity": 0.5})
    window.controls.set_mode("simulate")
    window.controls.set_checkpoint(checkpoint)
    window.controls.sim_steps_spin.setValue(60)
    window.controls.set_speed(300)
    window.controls.guard_check.setChecked(True)
    window.controls.gate_combo.setCurrentText("pair-energy")
    drawn_times: list[float] = []
    window.frame_timer.timeout.connect(lambda: drawn_times.append(window.orbit.time))
    start_frames = window.orbit.frames_drawn
    with qtbot.waitSignal(window.frames_received, timeout=TIMEOUT_MS):
        assert window.start()
    assert window.mode == "simulate"
    outcome = wait_finished(qtbot, window)
    assert outcome.kind == "finished", outcome.error
    window.refresh()
    assert outcome.result.steps == 60
    assert window.orbit.frames_drawn - start_frames >= 2
    shown = [t for t in drawn_times if np.isfinite(t) and t > 0]
    assert len(set(shown)) >= 2 and shown == sorted(shown)  # time moved forward across several frames
    series = window.plots.series()
    threshold = float(window.controls.threshold_edit.text())
    assert len(series["step"]) == 60 and np.all(series["rel_dE"] <= threshold)  # the guard held every step
    assert len(judged) >= 60  # under the gate chosen in the drop-down
    assert "step 60" in window.status_text()


FIELD_OPTIONS = {"mass": 5.0, "radius": 2.0}


def choose_field(window: MainWindow, text: str = "mass=5.0, radius=2") -> None:
    window.controls.field_combo.setCurrentText("plummer-host")
    window.controls.field_options_edit.setText(text)


def test_training_in_the_field_chosen_in_the_viewer_carries_it_to_the_run(qtbot, window, tmp_path):
    log = tmp_path / "metrics.jsonl"
    configure(window, epochs=1, metrics_log=str(log))
    choose_field(window)
    assert window.start_training()
    outcome = wait_finished(qtbot, window)
    assert outcome.kind == "finished", outcome.error
    (fit_start,) = [r for r in engine_records(log) if r["event"] == "FitStart"]
    assert fit_start["config"]["field"] == "plummer-host"  # what the run's process was configured with
    assert fit_start["config"]["field_options"] == FIELD_OPTIONS
    path = tmp_path / "field.pt"
    with qtbot.waitSignal(window.session.bridge.checkpoint_saved, timeout=TIMEOUT_MS):
        assert window.save_checkpoint(path)
    config = read_checkpoint(path)["config"]
    assert (config["field"], config["field_options"]) == ("plummer-host", FIELD_OPTIONS)


def test_simulation_flies_in_the_chosen_field_and_its_energy_includes_the_potential(qtbot, window, checkpoint, host):
    from nbtoolkit.physics import relative_energy_error, state_energy
    from nbtoolkit.simulate import iter_steps

    steps = 40
    window.controls.system_form.set_preset("kepler", {"eccentricity": 0.5})
    window.controls.set_mode("simulate")
    window.controls.set_checkpoint(checkpoint)
    window.controls.sim_steps_spin.setValue(steps)
    window.controls.set_speed(0)
    choose_field(window)
    assert window.start()
    outcome = wait_finished(qtbot, window)
    assert outcome.kind == "finished", outcome.error
    window.refresh()
    drift = window.plots.series(0)["drift"]
    assert len(drift) == steps

    # the same run here: the preset in the field, the checkpoint's model, the viewer's integrator and gate
    start = make_preset("kepler", eccentricity=0.5).state
    state = start.replace(field=host.fields.create("plummer-host", **FIELD_OPTIONS))
    predictor = load_predictor(checkpoint, host=host)
    predictor.eval()
    stepper = iter_steps(state, host.integrators.create("leapfrog"), predictor, gate=host.gates.create("energy"))
    expected, without_field = [], []
    with torch.no_grad():
        energy0, bare0 = state_energy(state), state_energy(start)
        for _ in range(steps):
            state = next(stepper).state
            expected.append(float(relative_energy_error(energy0, state_energy(state))[0]))
            without_field.append(float(relative_energy_error(bare0, state_energy(state.replace(field=None)))[0]))
    np.testing.assert_allclose(drift, expected, rtol=1e-6, atol=1e-12)
    # without the field's potential the energy of that trajectory would change by far more
    assert np.max(np.abs(without_field)) > 100 * np.max(np.abs(expected))


def test_a_bad_field_option_is_reported_without_starting_a_run(qtbot, window, checkpoint):
    configure(window, epochs=1)
    choose_field(window, "mass=5, depth=3")
    with qtbot.waitSignal(window.error_shown, timeout=TIMEOUT_MS) as blocker:
        assert not window.start_training()
    assert blocker.args[0].startswith("Cannot start training") and "does not take option(s) depth" in blocker.args[0]
    window.controls.set_mode("simulate")
    window.controls.set_checkpoint(checkpoint)
    choose_field(window, "mass")
    with qtbot.waitSignal(window.error_shown, timeout=TIMEOUT_MS) as blocker:
        assert not window.start()
    assert "field options: expected KEY=VALUE, got 'mass'" in window.error_text()
    assert not window.is_running and window.session.worker is None and window.session.trainer is None


def test_closing_the_window_during_a_paused_run_stops_it_and_reaps_its_process(qtbot, host):
    win = MainWindow(host)
    qtbot.addWidget(win)
    win.show()
    configure(win, epochs=10_000)
    assert win.start_training()
    qtbot.waitUntil(lambda: len(win.plots.accepted) >= 2, timeout=TIMEOUT_MS)
    run = win.session.worker
    win.pause()
    win.close()
    assert not run.alive and run.exitcode == 0
    assert not win.is_running
    assert win.last_outcome is not None and win.last_outcome.kind == "stopped"
