"""Gates: the registry and its contract checks, the energy gate as before, and ``pair-energy``
against known answers (a planet's orbit the total energy hides, an isolated pair, the third-order
residual of a perturbed pair, padding bodies)."""

from __future__ import annotations

import math

import pytest
import torch
from systems import random_cluster, two_body_orbit

from nbtoolkit import NBodyState, hookimpl, relative_energy_error, state_energy
from nbtoolkit.cli import main
from nbtoolkit.contracts import checked_error
from nbtoolkit.errors import PluginError, UnknownNameError
from nbtoolkit.families import draw_family
from nbtoolkit.gate import EnergyGate, Gate
from nbtoolkit.physics import to_center_of_mass_frame
from nbtoolkit.simulate import simulate
from nbtoolkit.training import TrainConfig, Trainer, check_energy_threshold
from nbtoolkit.training.trainset import pad_systems
from plugins.gates import PairEnergyGate, companions


def circular(M: float, m: float, a: float, phase: float) -> tuple[list[float], list[float]]:
    """Position and velocity of a body of mass m on a circular orbit of radius a about a mass M at the origin."""
    v = math.sqrt((M + m) / a)
    return [a * math.cos(phase), a * math.sin(phase)], [-v * math.sin(phase), v * math.cos(phase)]


def star_with_two_planets() -> NBodyState:
    """A star, a light inner planet (1e-5, a = 0.3) and a heavy outer one (1e-2, a = 3), G = 1."""
    x1, v1 = circular(1.0, 1e-5, 0.3, 0.0)
    x2, v2 = circular(1.0, 1e-2, 3.0, 2.0)
    return to_center_of_mass_frame(NBodyState.from_arrays([1.0, 1e-5, 1e-2], [[0, 0], x1, x2], [[0, 0], v1, v2]))


def step(host, state: NBodyState, dt: float, integrator: str = "leapfrog") -> NBodyState:
    return host.integrators.create(integrator).step(state, torch.full((state.batch_size,), dt, dtype=state.dtype))


# ----------------------------------------------------------------------------- registry
def test_the_default_gates_are_registered_by_module_path(host):
    assert {"energy", "pair-energy"} <= set(host.gates.names())
    assert host.gates.get("energy").factory is EnergyGate and host.gates.get("energy").plugin == "plugins.gates"
    assert isinstance(host.gates.create("pair-energy"), PairEnergyGate)
    assert TrainConfig().gate == "energy"


def test_an_unknown_gate_name_lists_the_registered_ones(host, capsys):
    with pytest.raises(UnknownNameError, match=r"unknown gate 'nope'; known: ([\w-]+, )*energy, ([\w-]+, )*pair-energy"):
        host.gates.create("nope")
    state = two_body_orbit()[0]
    with pytest.raises(UnknownNameError, match="unknown gate 'nope'; known: .*pair-energy"):
        Trainer(TrainConfig(gate="nope"), state, host=host)
    assert main(["simulate", "--preset", "kepler", "--steps", "2", "--gate", "nope", "--quiet"]) == 2
    assert "unknown gate 'nope'; known: " in capsys.readouterr().err


class ScaledEnergyGate(EnergyGate):
    """Ten times the energy error: a stricter gate for tests."""

    label = "10 |dE/E|"

    def error(self, before, after, reference=None):
        return 10 * super().error(before, after, reference)


class FakeGatePlugin:
    @hookimpl
    def nbtoolkit_register_gates(self, register):
        register("test-strict", ScaledEnergyGate)


@pytest.fixture
def fake_gate(host, register_plugin):
    """The process-wide host (the command line's) with a fake gate plugin, unregistered afterwards."""
    register_plugin(FakeGatePlugin(), "test-gate-plugin")
    return host


def test_a_fake_gate_plugin_registers_judges_and_unregisters(fake_gate, capsys):
    host = fake_gate
    assert host.gates.get("test-strict").plugin == "test-gate-plugin"
    assert "nbtoolkit_register_gates" in host.plugin_hooks("test-gate-plugin")
    state, period = two_body_orbit(e=0.5)
    new = step(host, state, period / 50)
    strict = checked_error(host.gates.create("test-strict"), state, new)
    assert float(strict) == pytest.approx(10 * float(EnergyGate().error(state, new)), rel=1e-14)
    # chosen by name on the command line: the stricter gate makes the guard shrink more steps
    guarded = []
    for gate in ("energy", "test-strict"):
        assert main(["simulate", "--preset", "kepler", "--eccentricity", "0.9", "--orbits", "1", "--predictor",
                     "freefall", "--eta", "0.05", "--guard", "--gate", gate, "--quiet"]) == 0
        out = capsys.readouterr().out
        guarded.append(int(out.split("guarded steps")[1].split()[0]))
        assert ("max gate error" in out) == (gate != "energy")
    assert guarded[1] > guarded[0]
    assert main(["plugins"]) == 0
    assert ["gate", "test-strict", "test-gate-plugin", "object", "test-gate-plugin"] in [
        line.split() for line in capsys.readouterr().out.splitlines()]


def test_a_second_plugin_registering_a_gate_name_is_reported_and_the_first_kept(host, register_plugin):
    class Clash:
        @hookimpl
        def nbtoolkit_register_gates(self, register):
            register("energy", ScaledEnergyGate)

    with pytest.warns(RuntimeWarning, match="gate 'energy' is registered twice: by plugin 'plugins.gates' and by plugin 'clash'"):
        register_plugin(Clash(), "clash")
    assert host.gates.get("energy").factory is EnergyGate


# ----------------------------------------------------------------------------- contract
class BrokenGate(Gate):
    def __init__(self, answer: str = "shape") -> None:
        self.answer = answer

    def error(self, before, after, reference=None):
        if self.answer == "raise":
            raise ValueError("no idea")
        if self.answer == "shape":
            return torch.zeros(before.batch_size, 2, dtype=before.dtype)
        if self.answer == "int":
            return torch.zeros(before.batch_size, dtype=torch.long)
        value = {"nan": math.nan, "negative": -1e-3}[self.answer]
        return torch.full((before.batch_size,), value, dtype=before.dtype)


class BrokenGatePlugin:
    @hookimpl
    def nbtoolkit_register_gates(self, register):
        register("test-broken", BrokenGate)


@pytest.mark.parametrize("answer, message", [
    ("shape", r"returned shape \(3, 2\); expected \(3,\)"),
    ("int", "dtype torch.int64; expected a floating-point tensor"),
    ("nan", "returned nan for system 0; errors must be >= 0, and \\+inf \\(not NaN\\)"),
    ("negative", "returned -0.001 for system 0"),
    ("raise", "raised ValueError in error\\(\\): no idea"),
])
def test_a_gate_breaking_its_contract_is_refused_naming_its_plugin(host, register_plugin, answer, message):
    register_plugin(BrokenGatePlugin(), "test-broken-plugin")
    state = random_cluster(3, 4)
    new = step(host, state, 1e-3)
    gate = host.gates.create("test-broken", answer=answer)
    origin = "gate 'test-broken' \\(plugin 'test-broken-plugin' from object test-broken-plugin\\)"
    with pytest.raises(PluginError, match=f"{origin} .*{message}"):
        checked_error(gate, state, new)
    with pytest.raises(PluginError, match=origin):  # training and simulate check it the same way
        check_energy_threshold(state, new, 2e-4, gate=gate)
    with pytest.raises(PluginError, match=origin):
        simulate(state, host.integrators.create("leapfrog"), host.predictors.create("constant", dt=1e-3), steps=2,
                 gate=gate)


def test_the_energy_gate_is_the_relative_energy_error_bit_for_bit(host):
    state = random_cluster(4, 5)
    new = step(host, state, 0.05)
    expected = relative_energy_error(state_energy(state), state_energy(new))
    gate = host.gates.create("energy")
    assert torch.equal(gate.error(state, new), expected)
    assert torch.equal(gate.error(state, new, gate.reference(state)), expected)
    assert torch.equal(check_energy_threshold(state, new, 2e-4)[1], expected)
    # a run judged by the registered energy gate is the default run, to the last bit
    runs = [simulate(state, host.integrators.create("leapfrog"), host.predictors.create("freefall", eta=0.2), steps=30,
                     guard_threshold=1e-5, **kw) for kw in ({}, {"gate": gate})]
    assert runs[1].gate_error is None and runs[0].guarded.any()
    for key in ("position", "velocity", "dt", "rel_dE", "guarded", "force_evals"):
        assert (getattr(runs[0], key) == getattr(runs[1], key)).all(), key


# ----------------------------------------------------------------------------- pair-energy, known answers
def test_pair_energy_sees_a_planet_that_the_total_energy_hides(host):
    """Eight leapfrog steps per inner orbit: the light inner planet's orbit is wrong by 2 % in
    energy, but it holds 1 % of the total, so the energy gate passes the step."""
    state = star_with_two_planets()
    period = 2 * math.pi * 0.3**1.5
    new = step(host, state, period / 8)
    alone = to_center_of_mass_frame(state.replace(mass=state.mass[:, :2], position=state.position[:, :2],
                                                  velocity=state.velocity[:, :2]))
    alone_error = float(EnergyGate().error(alone, step(host, alone, period / 8)))  # the planet without the outer one
    total = float(host.gates.create("energy").error(state, new))
    pair = float(host.gates.create("pair-energy").error(state, new))
    assert total < 2e-4 < 1e-2 < pair
    assert pair == pytest.approx(alone_error, rel=1e-3)
    partner, _, weight = companions(state)
    assert partner.tolist() == [[2, 0, 0]] and weight.tolist() == [[0.0, 0.0, 0.0]]


def test_pair_energy_is_the_energy_error_for_an_isolated_pair(host):
    for e in (0.0, 0.5, 0.9):
        state, period = two_body_orbit(e=e, m2=0.3)
        new = step(host, state, period / 40, "rk4")
        assert float(host.gates.create("pair-energy").error(state, new)) == pytest.approx(
            float(EnergyGate().error(state, new)), rel=1e-9)


def test_the_work_of_the_other_bodies_is_accounted_to_third_order(host):
    """On a strongly perturbed triple (outer mass = inner mass, period ratio 4) each pair's energy
    changes at first order in dt through the third body; what the gate reports is the rest, which
    falls 8x when dt halves (a second-order step's energy error per step)."""
    draw = draw_family("triple", 1, torch.Generator().manual_seed(5), outer_mass_ratio=1.0, period_ratio=4.0,
                       inner_eccentricity=0.3)[0]
    state = NBodyState.from_arrays(draw.mass, draw.position, draw.velocity)
    gate = host.gates.create("pair-energy")
    errors = [float(gate.error(state, step(host, state, dt))) for dt in (0.02, 0.01, 0.005)]
    assert all(7.5 < errors[k] / errors[k + 1] < 8.5 for k in range(2)), errors


def test_companions_follow_the_hierarchy():
    """A planet beyond the star's most bound partner is judged on its orbit about the centre of
    mass of that pair; the pair's own members, and planets inside it, on their orbit about each other."""
    x = [[0.0, 0.0], [0.5, 0.0], [0.0, 1.0], [-4.0, 0.0]]
    masses = [1.0, 1e-4, 1e-2, 1e-4]  # the star's most bound partner is the heavy planet at r = 1
    v = [[0.0, 0.0]] + [circular(1.0, m, math.hypot(*p), math.atan2(p[1], p[0]))[1] for m, p in zip(masses[1:], x[1:])]
    state = NBodyState.from_arrays(masses, x, v)
    partner, inner, weight = companions(state)
    assert partner.tolist() == [[2, 0, 0, 0]]
    assert weight.tolist() == [[0.0, 0.0, 0.0, 1.0]] and int(inner[0, 3]) == 2


def test_padding_bodies_are_neither_judged_nor_partners(host):
    g = torch.Generator().manual_seed(2)
    draws = draw_family("kepler", 1, g, eccentricity=0.6) + draw_family("triple", 1, g) + draw_family("planets", 1, g,
                                                                                                     planets=3)
    padded = pad_systems(draws)
    new = step(host, padded, 0.02)
    gate = host.gates.create("pair-energy")
    together = gate.error(padded, new)
    for b, draw in enumerate(draws):
        one = NBodyState.from_arrays(draw.mass, draw.position, draw.velocity)
        assert float(together[b]) == pytest.approx(float(gate.error(one, step(host, one, 0.02))), rel=1e-9)
    assert bool((companions(padded)[0] < torch.tensor([[2], [3], [4]])).all())


def test_pair_energy_is_differentiable_and_inf_for_a_blown_up_step(host):
    state = star_with_two_planets()
    dt = torch.tensor([0.05], dtype=torch.float64, requires_grad=True)
    gate = host.gates.create("pair-energy")
    error = gate.error(state, host.integrators.create("leapfrog").step(state, dt))
    (grad,) = torch.autograd.grad(error.sum(), dt)
    assert torch.isfinite(grad).all() and float(grad) > 0  # a longer step, a larger error
    blown = state.replace(position=state.position * math.inf)
    assert checked_error(gate, state, blown).tolist() == [math.inf]


# ----------------------------------------------------------------------------- training with a gate
def test_training_accepts_only_what_its_gate_passes_and_records_it(host, tmp_path):
    draws = draw_family("planets", 2, torch.Generator().manual_seed(4), planets=2)
    state = pad_systems(draws)
    config = TrainConfig(gate="pair-energy", epochs=1, steps_per_epoch=4, replay_steps=2, replay_batch_size=8,
                         predictor_options={"hidden_width": 8}, seed=0, calibrate_steps=8,
                         checkpoint_path=str(tmp_path / "m.pt"))
    trainer = Trainer(config, state, host=host)
    calls = []
    original = PairEnergyGate.error
    PairEnergyGate.error = lambda self, *a: calls.append(1) or original(self, *a)  # type: ignore[method-assign]
    try:
        trainer.fit()
        assert calls
        calls.clear()
        trainer.calibrate()  # calibration judges with the training gate too
        assert calls
    finally:
        PairEnergyGate.error = original  # type: ignore[method-assign]
    assert len(trainer.buffer) == 8
    assert trainer.buffer.rel_dE.max().item() <= config.energy_threshold
    from nbtoolkit.training import read_checkpoint

    saved = read_checkpoint(tmp_path / "m.pt")
    assert saved["config"]["gate"] == "pair-energy" and saved["plugins"]["gate"]["plugin"] == "plugins.gates"


# ----------------------------------------------------------------------------- the command line
def test_the_command_line_takes_the_gate_by_name(capsys, tmp_path):
    import json

    from nbtoolkit.cli import build_parser
    from nbtoolkit.training.cli import _flag_overrides

    args = ["evaluate", "--preset", "figure-eight", "--orbits", "0.5", "--rules", "freefall"]
    assert main(args + ["--gate", "pair-energy"]) == 0
    out = capsys.readouterr().out
    assert "max pair |dE/E|" in out.splitlines()[0]
    assert main(args + ["--gate", "pair-energy", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["pass_fraction"] == 1.0 and 0 < row["max_step_error"] <= 2e-4
    assert main(args) == 0
    assert "pair" not in capsys.readouterr().out  # the default table is unchanged
    parsed = build_parser().parse_args(["train", "--gate", "pair-energy"])
    assert _flag_overrides(parsed)["gate"] == "pair-energy"
    path = tmp_path / "run.toml"
    path.write_text('gate = "pair-energy"\n')
    assert TrainConfig.from_toml(path).gate == "pair-energy"
