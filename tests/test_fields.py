"""External fields: the built-in potentials, the field carried into every force and energy, the hook,
the command line and the refusal of faulty fields."""

from __future__ import annotations

import math

import pytest
import torch
from systems import random_cluster

from nbtoolkit import ExternalField, NBodyState, PluginError, hookimpl, state_energy, total_energy
from nbtoolkit.cli import main
from nbtoolkit.contracts import checked_step
from nbtoolkit.errors import OptionError, UnknownNameError
from nbtoolkit.field import field_accelerations
from nbtoolkit.gate import EnergyGate
from nbtoolkit.physics import accelerations, state_accelerations
from nbtoolkit.simulate import simulate
from nbtoolkit.training import TrainConfig, Trainer
from plugins.fields import PlummerHost, PointMassHost


def run(integrator, state: NBodyState, dt: float, steps: int) -> NBodyState:
    h = torch.full((state.batch_size,), dt, dtype=state.dtype)
    for _ in range(steps):
        state = checked_step(integrator, state, h)
    return state


def binary(field: ExternalField | None) -> NBodyState:
    """An eccentric equal-mass binary of total mass 1 (3-D, tilted), optionally in ``field``."""
    state = NBodyState.from_arrays([0.5, 0.5], [[-0.5, 0.0, 0.1], [0.5, 0.0, -0.1]],
                                   [[0.0, -0.4, 0.0], [0.0, 0.4, 0.0]])
    return state.replace(field=field)


@pytest.mark.parametrize("field", [PlummerHost(mass=50.0, radius=3.0), PointMassHost(mass=800.0, distance=30.0, phase=0.3)])
@pytest.mark.parametrize("dim", [2, 3])
def test_acceleration_is_minus_the_gradient_of_the_potential(field, dim):
    state = random_cluster(3, 5, dim=dim, seed=dim)
    state = state.replace(time=torch.tensor([0.0, 1.7, 40.0], dtype=torch.float64), field=field)
    x = state.position.clone().requires_grad_(True)
    energy = field.potential_energy(state.replace(position=x))
    (grad,) = torch.autograd.grad(energy.sum(), x)
    expected = -grad / state.mass.unsqueeze(-1)
    assert torch.allclose(field.accelerations(state), expected, rtol=1e-12, atol=1e-14)
    assert torch.allclose(state_accelerations(state), accelerations(state.mass, state.position) + expected,
                          rtol=1e-12, atol=1e-14)


def test_a_circular_orbit_in_the_plummer_host_keeps_its_analytic_period(host):
    """A test particle on a circular orbit of radius r returns to its start after
    T = 2 pi sqrt((r^2 + a^2)^(3/2) / (G M)) and is on the far side at T / 2."""
    field = PlummerHost(mass=20.0, radius=2.0)
    r = 3.0
    speed = math.sqrt(field.mass * r * r / (r * r + field.radius**2) ** 1.5)
    period = field.circular_period(r)
    state = NBodyState.from_arrays([1e-6], [[r, 0.0]], [[0.0, speed]]).replace(field=field)
    e0 = state_energy(state)
    leapfrog, n = host.integrators.create("leapfrog"), 2000
    half = run(leapfrog, state, period / n, n // 2)
    assert torch.allclose(half.position, -state.position, atol=1e-4 * r)
    full = run(leapfrog, half, period / n, n // 2)
    assert torch.allclose(full.position, state.position, atol=1e-4 * r)
    assert float((state_energy(full) - e0).abs() / e0.abs()) < 1e-6
    # the period is the field's, not a free particle's: a 10% lighter host is clearly off after one period
    lighter = run(leapfrog, state.replace(field=PlummerHost(mass=18.0, radius=2.0)), period / n, n)
    assert float((lighter.position - state.position).norm()) > 0.1 * r


def test_point_mass_host_is_the_inertial_kepler_problem_seen_from_the_guiding_centre(host):
    """A particle's inertial position X = x + C(t) (C the guiding centre, on its circular orbit
    around the host) keeps the Kepler energy 1/2 |V|^2 - G M / |X| of the fixed host."""
    field = PointMassHost(mass=1000.0, distance=50.0, phase=0.4)
    state = NBodyState.from_arrays([1.0], [[2.0, 1.0, 0.5]], [[0.1, -0.3, 0.0]]).replace(field=field)
    omega = field.angular_velocity(1.0)

    def kepler_energy(s: NBodyState) -> float:
        angle = omega * s.time + field.phase
        c = field.distance * torch.stack([angle.cos(), angle.sin(), torch.zeros_like(angle)], -1)
        c_dot = field.distance * omega * torch.stack([-angle.sin(), angle.cos(), torch.zeros_like(angle)], -1)
        X, V = s.position[0, 0] + c[0], s.velocity[0, 0] + c_dot[0]
        return float(0.5 * V.square().sum() - field.mass / X.norm())

    k0 = kepler_energy(state)
    end = run(host.integrators.create("rk4"), state, 0.05, 400)
    assert abs(kepler_energy(end) - k0) < 1e-9 * abs(k0)
    assert float(end.position.norm()) > 1.0  # it moved: the check is not vacuous


def test_point_mass_host_conserves_the_jacobi_energy_at_second_order(host):
    field = PointMassHost(mass=1000.0, distance=50.0)
    state = binary(field).replace(position=binary(None).position * 4)  # a wide, tidally perturbed binary
    leapfrog = host.integrators.create("leapfrog")
    e0 = state_energy(state)
    errors = [float((state_energy(run(leapfrog, state, dt, round(20 / dt))) - e0).abs() / e0.abs())
              for dt in (0.04, 0.02)]
    assert 3.2 < errors[0] / errors[1] < 4.8, errors
    # without the frame term -Omega L_z the energy is not conserved: the field does work
    end = run(leapfrog, state, 0.02, 1000)
    plain = [float(total_energy(s.mass, s.position, s.velocity) + field.potential_energy(s)) for s in (state, end)]
    assert abs(plain[1] - plain[0]) / abs(plain[0]) > 100 * errors[1]


def test_a_third_party_integrator_is_split_around_the_field(host):
    """pefrl (no field_aware) is stepped through the splitting: second order in the field coupling,
    a conserved energy, and the same trajectory as leapfrog to the order of both."""
    pefrl = host.integrators.create("pefrl")
    assert not pefrl.field_aware
    state = binary(PlummerHost(mass=5.0, radius=1.0))
    e0 = state_energy(state)
    errors = [float((state_energy(run(pefrl, state, dt, round(5 / dt))) - e0).abs() / e0.abs()) for dt in (0.02, 0.01)]
    assert errors[1] < 1e-4 and 3.2 < errors[0] / errors[1] < 4.8, errors
    reference = run(host.integrators.create("yoshida4"), state, 0.005, 1000)
    assert torch.allclose(run(pefrl, state, 0.005, 1000).position, reference.position, atol=1e-4)


def test_without_a_field_every_step_and_energy_is_bit_identical_to_the_bare_physics(host):
    """No field is the default, and it changes nothing: the integrators' steps equal the textbook
    kick-drift-kick on the bodies' gravity alone, bit for bit, and the energy is T + U."""
    state = random_cluster(2, 6, softening=0.05)
    assert state.field is None
    h = torch.tensor([0.01, 0.02], dtype=torch.float64)
    x, v = state.position, state.velocity
    a = accelerations(state.mass, x, softening=0.05)
    for _ in range(20):
        v_half = torch.addcmul(v, h[:, None, None], a, value=0.5)
        x = torch.addcmul(x, h[:, None, None], v_half)
        a = accelerations(state.mass, x, softening=0.05)
        v = torch.addcmul(v_half, h[:, None, None], a, value=0.5)
    new, leapfrog = state, host.integrators.create("leapfrog")
    for _ in range(20):
        new = checked_step(leapfrog, new, h)
    assert torch.equal(new.position, x) and torch.equal(new.velocity, v)
    assert torch.equal(state_energy(new), total_energy(new.mass, new.position, new.velocity, softening=0.05))


def test_padding_bodies_feel_no_field_and_add_no_energy():
    field = PlummerHost(mass=10.0, radius=1.0)
    real = random_cluster(1, 3, seed=4)
    padded = NBodyState.from_arrays(
        torch.cat([real.mass, torch.zeros(1, 1, dtype=torch.float64)], 1),
        torch.cat([real.position, torch.full((1, 1, 3), 1e3, dtype=torch.float64)], 1),
        torch.cat([real.velocity, torch.zeros(1, 1, 3, dtype=torch.float64)], 1), validate=False)
    assert torch.equal(field_accelerations(padded.replace(field=field))[0, 3], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(state_energy(padded.replace(field=field)), state_energy(real.replace(field=field)),
                          rtol=1e-14)


# ----------------------------------------------------------------------------- the hook and its faults
class UniformField(ExternalField):
    """A uniform field g along x: a = (g, 0[, 0]), Phi = -g x."""

    def __init__(self, g: float = 0.5) -> None:
        self.g = float(g)

    def accelerations(self, state):
        a = torch.zeros_like(state.position)
        a[..., 0] = self.g
        return a

    def potential_energy(self, state):
        return -self.g * (state.mass * state.position[..., 0]).sum(-1)


class WrongShape(UniformField):
    def accelerations(self, state):
        return super().accelerations(state)[..., :1]


class NaNEnergy(UniformField):
    def potential_energy(self, state):
        return super().potential_energy(state) * float("nan")


class FakeFieldPlugin:
    @hookimpl
    def nbtoolkit_register_external_fields(self, register):
        register("test-uniform", UniformField)
        register("test-wrong-shape", WrongShape)
        register("test-nan-energy", NaNEnergy)


@pytest.fixture
def fake_field(host, register_plugin):
    """The process-wide host (the command line's) with a fake field plugin, unregistered afterwards."""
    register_plugin(FakeFieldPlugin(), "test-field-plugin")
    return host


def test_a_fake_field_plugin_registers_moves_the_system_and_unregisters(fake_field, capsys):
    host = fake_field
    entry = host.fields.get("test-uniform")
    assert entry.plugin == "test-field-plugin"
    assert "nbtoolkit_register_external_fields" in host.plugin_hooks("test-field-plugin")
    state = binary(host.fields.create("test-uniform", g=0.5))
    end = run(host.integrators.create("leapfrog"), state, 0.01, 200)  # t = 2: the centre of mass falls g t^2 / 2
    com = (end.mass.unsqueeze(-1) * end.position).sum(-2) / end.mass.sum(-1, keepdim=True)
    assert float(com[0, 0]) == pytest.approx(0.5 * 0.5 * 2.0**2, rel=1e-10)
    # the field only moves the centre of mass: the binary's energy error is the one it has without it
    alone = run(host.integrators.create("leapfrog"), binary(None), 0.01, 200)
    assert float((state_energy(end) - state_energy(state)) - (state_energy(alone) - state_energy(binary(None)))) \
        == pytest.approx(0.0, abs=1e-12)
    assert main(["plugins"]) == 0
    assert ["external", "field", "test-uniform", "test-field-plugin", "object", "test-field-plugin"] in [
        line.split() for line in capsys.readouterr().out.splitlines()]
    assert main(["simulate", "--preset", "kepler", "--orbits", "1", "--field", "test-uniform", "--field-option",
                 "g=0.01", "--predictor", "freefall", "--eta", "0.05", "--quiet"]) == 0
    assert "final |dE/E|" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "message"), [
    ("test-wrong-shape", r"external field 'test-wrong-shape' \(plugin 'test-field-plugin'.*accelerations\(\) returned shape"),
    ("test-nan-energy", r"external field 'test-nan-energy' \(plugin 'test-field-plugin'.*non-finite value for system 0"),
])
def test_a_faulty_field_is_refused_with_its_plugin_name(fake_field, name, message):
    state = binary(fake_field.fields.create(name))
    with pytest.raises(PluginError, match=message):
        state_energy(checked_step(fake_field.integrators.create("leapfrog"), state, torch.tensor([0.01], dtype=torch.float64)))


def test_unknown_field_names_and_bad_options_are_named(host, capsys):
    with pytest.raises(UnknownNameError, match="unknown external field 'nope'; known: .*plummer-host, point-mass-host"):
        host.fields.create("nope")
    assert main(["simulate", "--preset", "kepler", "--steps", "1", "--field", "nope"]) == 2
    assert "known: " in capsys.readouterr().err
    with pytest.raises(PluginError, match="does not take option.*radiu; it takes: mass, radius"):
        host.fields.create("plummer-host", radiu=2.0)
    with pytest.raises(OptionError, match="option 'distance' of external field 'point-mass-host' "
                                          r"\(plugin 'plugins.fields'\) must be finite and > 0; got -3.0"):
        host.fields.create("point-mass-host", distance=-3)
    with pytest.raises(OptionError, match="option 'phase' of external field 'point-mass-host' .* must be a number"):
        host.fields.create("point-mass-host", phase="north")
    with pytest.raises(OptionError, match="option 'radius' of PlummerHost must be finite and > 0; got 0.0"):
        PlummerHost(radius=0)  # built directly: the declaration still checks
    assert main(["simulate", "--preset", "kepler", "--steps", "1", "--field", "plummer-host", "--field-option",
                 "mass=heavy"]) == 2
    assert "option 'mass' of external field 'plummer-host' (plugin 'plugins.fields') must be a number; got 'heavy'" \
        in capsys.readouterr().err
    assert main(["simulate", "--preset", "kepler", "--steps", "1", "--field-option", "mass=2"]) == 2
    assert "--field-option needs --field" in capsys.readouterr().err


# ----------------------------------------------------------------------------- simulate, evaluate, train
def test_simulate_and_evaluate_judge_steps_by_the_conserved_energy(host, capsys):
    field = PointMassHost(mass=1000.0, distance=50.0)
    state = binary(field)
    traj = simulate(state, host.integrators.create("leapfrog"), host.predictors.create("constant", dt=0.01),
                    steps=100, guard_threshold=2e-4, gate=EnergyGate())
    assert traj.summary()["final_rel_dE"] < 1e-5
    assert main(["evaluate", "--preset", "plummer", "--n", "4", "--t-end", "0.5", "--rules", "freefall",
                 "--field", "plummer-host", "--field-option", "mass=10", "--json"]) == 0
    assert '"system 0: freefall' in capsys.readouterr().out


def test_training_in_a_field_gates_on_the_field_energy(host):
    config = TrainConfig(epochs=1, steps_per_epoch=4, replay_batch_size=8, replay_steps=3, calibrate_pass_rate=0.0,
                         field="point-mass-host", field_options={"mass": 1000.0, "distance": 50.0},
                         predictor_options={"hidden_width": 8})
    trainer = Trainer(config, binary(None))
    assert isinstance(trainer.state.field, PointMassHost)
    trainer.fit()
    replayed, _ = trainer.buffer.gather(torch.arange(len(trainer.buffer)))
    assert replayed.field is trainer.field and len(trainer.buffer) >= 4
    with pytest.raises(Exception, match="'field_options' is set but 'field' names no external field"):
        Trainer(TrainConfig(field_options={"mass": 2.0}), binary(None))
