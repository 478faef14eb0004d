"""A plugin integrator that breaks during training stops the run with a message naming it,
and the last checkpoint written before the fault stays intact and loadable."""

from __future__ import annotations

import pytest
import torch

from nbtoolkit import hookimpl
from nbtoolkit.cli import main
from nbtoolkit.errors import PluginError
from nbtoolkit.presets import make_preset
from nbtoolkit.training import TrainConfig, Trainer, read_checkpoint
from plugins.integrators import Leapfrog

BROKEN = {"now": False}


class FlakyLeapfrog(Leapfrog):
    """A leapfrog that returns NaN positions once ``BROKEN["now"]`` is set."""

    def step(self, state, dt):
        out = super().step(state, dt)
        if BROKEN["now"]:
            return out.replace(position=torch.full_like(out.position, float("nan")))
        return out


class FlakyPlugin:
    @hookimpl
    def nbtoolkit_register_integrators(self, register):
        register("flaky", FlakyLeapfrog)


@pytest.fixture
def flaky(host):
    name = host.register_plugin(FlakyPlugin(), name="flaky-plugin")
    yield name
    host.unregister_plugin(name)


class BreakAfterTwoEpochs:
    """Observer that breaks the flaky integrator once the second epoch has ended."""

    def __init__(self):
        self.ends = []

    @hookimpl
    def nbtoolkit_epoch_end(self, event):
        BROKEN["now"] = event.epoch >= 1

    @hookimpl
    def nbtoolkit_fit_end(self, event):
        self.ends.append(event)


def small_config(tmp_path, **changes):
    base = dict(integrator="flaky", epochs=6, steps_per_epoch=4, checkpoint_path=str(tmp_path / "model.pt"),
                checkpoint_every=1, replay_batch_size=8, predictor_options={"hidden_width": 8}, seed=3, calibrate_pass_rate=0)
    return TrainConfig(**{**base, **changes})


def test_a_faulty_integrator_stops_training_naming_the_plugin_and_keeps_the_checkpoint(host, flaky, tmp_path):
    BROKEN["now"] = False
    log = BreakAfterTwoEpochs()
    host.register_plugin(log, name="event-log")
    try:
        system = make_preset("kepler", eccentricity=0.5)
        trainer = Trainer(small_config(tmp_path), system.state, host=host)
        with pytest.raises(PluginError, match=r"integrator 'flaky'.*flaky-plugin.*(NaN|non-finite)"):
            trainer.fit()
    finally:
        host.unregister_plugin("event-log")
    (end,) = log.ends
    assert end.stopped and "flaky" in end.error
    saved = read_checkpoint(tmp_path / "model.pt")
    assert saved["epoch"] == 2  # the checkpoint of the last whole epoch before the fault
    resumed = Trainer.from_checkpoint(tmp_path / "model.pt", host=host, integrator="leapfrog")
    assert resumed.epoch == 2 and len(resumed.buffer) == 2 * 4  # every accepted sample of both epochs kept


def test_the_train_command_reports_the_fault_in_one_paragraph(host, flaky, tmp_path, capsys):
    BROKEN["now"] = True
    code = main(["train", "--preset", "kepler", "--integrator", "flaky", "--epochs", "2", "--steps-per-epoch", "4",
                 "--checkpoint", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("nbtoolkit train: error:") and "flaky-plugin" in err and "Traceback" not in err
