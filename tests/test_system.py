"""System: a state with the orbital period of each of its systems, as presets build it and evaluation takes it."""

from __future__ import annotations

import argparse

import pytest
import torch

from nbtoolkit.cli_system import load_system
from nbtoolkit.errors import ConfigError, InvalidStateError
from nbtoolkit.evaluate import evaluate_predictor, greedy_oracle, tune_rule
from nbtoolkit.io import save_state
from nbtoolkit.presets import PresetSystem, make_preset
from nbtoolkit.state import System


def test_a_preset_is_a_system_and_index_keeps_each_period():
    preset = make_preset("kepler-batch", num_orbits=3, semi_major_axis=1.0)
    assert isinstance(preset, PresetSystem) and isinstance(preset, System)
    stretched = System(preset.state, preset.period * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    one = stretched.index(2)
    assert type(one) is System and one.state.batch_size == 1
    assert torch.equal(one.period, stretched.period[2:]) and torch.equal(one.state.position, preset.state.position[2:])
    last_two = stretched.index(torch.tensor([1, 2]))
    assert torch.equal(last_two.period, stretched.period[1:])
    assert System(preset.state).index(0).period is None


@pytest.mark.parametrize("period, message", [
    (torch.ones(2, dtype=torch.float64), r"shape \(B,\) = \(3,\); got \(2,\)"),
    (6.28, r"got float"),
    (torch.tensor([1.0, 0.0, 1.0]), "finite and > 0; system 1 has 0.0"),
    (torch.tensor([1.0, 1.0, float("inf")]), "system 2 has inf"),
])
def test_a_period_of_the_wrong_shape_or_sign_is_refused(period, message):
    state = make_preset("kepler-batch", num_orbits=3).state
    with pytest.raises(InvalidStateError, match=message):
        System(state, period)


def test_evaluation_without_a_period_names_what_is_missing(host):
    system = System(make_preset("plummer", n=4).state)
    integrator = host.integrators.create("leapfrog")
    with pytest.raises(ConfigError, match="evaluate_predictor runs a number of orbits and needs the period"):
        evaluate_predictor(system, integrator, host.predictors.create("freefall"), orbits=1)
    with pytest.raises(ConfigError, match="tune_rule .* needs the period"):
        tune_rule(host, "constant", system, integrator, orbits=1)
    with pytest.raises(ConfigError, match="greedy_oracle .* needs the period"):
        greedy_oracle(system, integrator, orbits=1)


def test_the_command_line_system_carries_the_preset_period_and_none_for_a_state_file(tmp_path):
    def args(**given: object) -> argparse.Namespace:
        flags = {k: None for k in ("state", "preset", "eccentricity", "semi_major_axis", "masses", "start",
                                   "num_orbits", "e_min", "e_max", "n", "seed")}
        return argparse.Namespace(**{**flags, **given})

    kepler = load_system(args(preset="kepler", semi_major_axis=4.0))
    assert torch.allclose(kepler.period, torch.tensor([2 * torch.pi * 4.0**1.5 / 2**0.5], dtype=torch.float64))
    path = save_state(tmp_path / "s.npz", kepler.state)
    from_file = load_system(args(state=path))
    assert from_file.period is None and torch.equal(from_file.state.position, kepler.state.position)
