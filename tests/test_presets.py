"""Initial-condition presets: known physics of each system and the preset table's contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nbtoolkit import get_host
from nbtoolkit.errors import ConfigError, UnknownNameError
from nbtoolkit.physics import (
    angular_momentum,
    center_of_mass,
    kinetic_energy,
    linear_momentum,
    potential_energy,
    state_energy,
)
from nbtoolkit.presets import (
    FIGURE_EIGHT_PERIOD,
    PRESETS,
    PresetSystem,
    figure_eight,
    kepler,
    kepler_batch,
    kepler_period,
    make_preset,
    plummer,
    pythagorean,
)
from nbtoolkit.state import NBodyState


def relative_orbit(state: NBodyState) -> tuple[torch.Tensor, torch.Tensor]:
    """Separation |x2 - x1| (B,) and osculating eccentricity (B,) of two-body systems."""
    r = state.position[:, 1] - state.position[:, 0]
    v = state.velocity[:, 1] - state.velocity[:, 0]
    GM = state.G * state.mass.sum(-1)
    dist = r.norm(dim=-1)
    r3 = torch.nn.functional.pad(r, (0, 3 - r.shape[-1]))
    v3 = torch.nn.functional.pad(v, (0, 3 - v.shape[-1]))
    h = torch.linalg.cross(r3, v3, dim=-1)
    ecc_vec = torch.linalg.cross(v3, h, dim=-1) / GM[:, None] - r3 / dist[:, None]  # Laplace-Runge-Lenz
    return dist, ecc_vec.norm(dim=-1)


def assert_com_at_rest_at_origin(state: NBodyState) -> None:
    zero = torch.zeros(state.batch_size, state.dim, dtype=torch.float64)
    torch.testing.assert_close(center_of_mass(state.mass, state.position), zero, atol=1e-14, rtol=0)
    torch.testing.assert_close(linear_momentum(state.mass, state.velocity), zero, atol=1e-14, rtol=0)


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- Kepler
@pytest.mark.parametrize("e", [0.0, 0.5, 0.93])
@pytest.mark.parametrize("masses", [(1.0, 1.0), (1.0, 3.0)])
@pytest.mark.parametrize("start", ["apocentre", "pericentre", "apocenter", "pericenter"])
def test_kepler_energy_angular_momentum_and_start(e: float, masses: tuple[float, float], start: str) -> None:
    a, G = 2.0, 1.7
    m1, m2 = masses
    M, mu = m1 + m2, m1 * m2 / (m1 + m2)
    state = kepler(eccentricity=e, semi_major_axis=a, masses=masses, start=start, G=G)
    assert state.position.shape == (1, 2, 2) and state.G == G
    torch.testing.assert_close(state.mass, torch.tensor([[m1, m2]], dtype=torch.float64))
    torch.testing.assert_close(state_energy(state), f64(-G * m1 * m2 / (2 * a)), rtol=1e-13, atol=0)
    L = angular_momentum(state.mass, state.position, state.velocity)
    torch.testing.assert_close(L, f64(mu * math.sqrt(G * M * a * (1 - e * e))), rtol=1e-13, atol=0)
    separation, ecc = relative_orbit(state)
    expected = a * (1 + e) if start.startswith("apo") else a * (1 - e)
    torch.testing.assert_close(separation, f64(expected), rtol=1e-14, atol=0)
    torch.testing.assert_close(ecc, f64(e), rtol=0, atol=1e-12)
    assert_com_at_rest_at_origin(state)


def test_kepler_3d_lies_in_xy_plane() -> None:
    state = kepler(eccentricity=0.3, dim=3)
    assert state.position.shape == (1, 2, 3)
    assert torch.all(state.position[..., 2] == 0) and torch.all(state.velocity[..., 2] == 0)
    L = angular_momentum(state.mass, state.position, state.velocity)
    assert L[0, 2] > 0 and L[0, 0] == 0 and L[0, 1] == 0


def test_kepler_period_formula_and_one_orbit_returns_to_start() -> None:
    assert kepler_period(1.0, 1.0, 1.0) == pytest.approx(2 * math.pi)
    assert kepler_period(4.0, 2.0, 0.5) == pytest.approx(2 * math.pi * math.sqrt(64.0))
    preset = make_preset("kepler", eccentricity=0.5, semi_major_axis=1.3, masses=(0.7, 1.1))
    steps = 1000
    integrator = get_host().integrators.create("yoshida4")
    state = preset.state
    dt = preset.period / steps
    with torch.no_grad():
        for _ in range(steps):
            state = integrator.step(state, dt)
    torch.testing.assert_close(state.position, preset.state.position, atol=1e-6, rtol=0)
    torch.testing.assert_close(state.time, preset.period)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"eccentricity": 1.0}, "eccentricity"),
        ({"eccentricity": -0.1}, "eccentricity"),
        ({"eccentricity": float("nan")}, "eccentricity"),
        ({"semi_major_axis": 0.0}, "semi_major_axis"),
        ({"masses": (1.0, 0.0)}, "masses"),
        ({"masses": (1.0, 2.0, 3.0)}, "masses"),
        ({"start": "perihelion"}, "start"),
        ({"G": -1.0}, "G"),
        ({"dim": 4}, "dim"),
    ],
)
def test_kepler_rejects_invalid_parameters(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        kepler(**kwargs)


# ----------------------------------------------------------------------------- Kepler batch
def test_kepler_batch_eccentricities_in_range_and_reproducible() -> None:
    state = kepler_batch(num_orbits=64, e_min=0.2, e_max=0.7, seed=3, semi_major_axis=1.5)
    assert state.position.shape == (64, 2, 2)
    separation, ecc = relative_orbit(state)
    assert torch.all(ecc >= 0.2 - 1e-12) and torch.all(ecc <= 0.7 + 1e-12)
    assert float(ecc.max() - ecc.min()) > 0.3  # genuinely spread over the range
    torch.testing.assert_close(separation, 1.5 * (1 + ecc))  # every orbit starts at apocentre
    torch.testing.assert_close(state_energy(state), torch.full((64,), -1.0 / 3.0, dtype=torch.float64))
    assert_com_at_rest_at_origin(state)

    again = kepler_batch(num_orbits=64, e_min=0.2, e_max=0.7, seed=3, semi_major_axis=1.5)
    assert torch.equal(again.position, state.position) and torch.equal(again.velocity, state.velocity)
    other = kepler_batch(num_orbits=64, e_min=0.2, e_max=0.7, seed=4, semi_major_axis=1.5)
    assert not torch.equal(other.position, state.position)


def test_kepler_batch_pericentre_and_degenerate_range() -> None:
    state = kepler_batch(num_orbits=5, e_min=0.6, e_max=0.6, start="pericentre")
    separation, ecc = relative_orbit(state)
    torch.testing.assert_close(ecc, torch.full((5,), 0.6, dtype=torch.float64))
    torch.testing.assert_close(separation, torch.full((5,), 0.4, dtype=torch.float64))


def test_kepler_batch_preset_period_shape() -> None:
    preset = make_preset("kepler-batch", num_orbits=6, masses=(1.0, 3.0), semi_major_axis=2.0)
    assert preset.state.batch_size == 6
    assert preset.period is not None and preset.period.shape == (6,)
    torch.testing.assert_close(preset.period, torch.full((6,), 2 * math.pi * math.sqrt(8.0 / 4.0), dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_orbits": 0}, "num_orbits"),
        ({"e_min": 0.8, "e_max": 0.5}, "e_max"),
        ({"e_max": 1.0}, "e_max"),
        ({"e_min": -0.1}, "e_min"),
    ],
)
def test_kepler_batch_rejects_invalid_parameters(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        kepler_batch(**kwargs)


# ----------------------------------------------------------------------------- three-body
def test_figure_eight_energy_momentum_and_period() -> None:
    state = figure_eight()
    assert state.position.shape == (1, 3, 2)
    assert_com_at_rest_at_origin(state)
    x = state.position[0].numpy()
    v = state.velocity[0].numpy()
    by_hand = 0.5 * (v**2).sum() - sum(1.0 / np.linalg.norm(x[i] - x[j]) for i, j in ((0, 1), (0, 2), (1, 2)))
    assert state_energy(state).item() == pytest.approx(by_hand, rel=1e-14)
    assert by_hand == pytest.approx(-1.2871, abs=1e-4)
    assert abs(angular_momentum(state.mass, state.position, state.velocity).item()) < 1e-7

    preset = make_preset("figure-eight")
    torch.testing.assert_close(preset.period, torch.tensor([FIGURE_EIGHT_PERIOD], dtype=torch.float64))
    steps = 1000
    integrator = get_host().integrators.create("yoshida4")
    evolved = state
    with torch.no_grad():
        for _ in range(steps):
            evolved = integrator.step(evolved, preset.period / steps)
    torch.testing.assert_close(evolved.position, state.position, atol=1e-5, rtol=0)
    torch.testing.assert_close(evolved.velocity, state.velocity, atol=1e-5, rtol=0)


def test_pythagorean_at_rest_on_a_3_4_5_triangle() -> None:
    state = pythagorean()
    assert torch.equal(state.mass, torch.tensor([[3.0, 4.0, 5.0]], dtype=torch.float64))
    assert torch.all(state.velocity == 0)
    assert_com_at_rest_at_origin(state)
    x = state.position[0]
    # each mass faces the side of the same length
    assert (x[1] - x[2]).norm().item() == pytest.approx(3.0)
    assert (x[0] - x[2]).norm().item() == pytest.approx(4.0)
    assert (x[0] - x[1]).norm().item() == pytest.approx(5.0)
    assert state_energy(state).item() == pytest.approx(-(3 * 4 / 5 + 3 * 5 / 4 + 4 * 5 / 3))
    assert make_preset("pythagorean").period is None


# ----------------------------------------------------------------------------- Plummer
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("softening", [0.0, 0.05])
def test_plummer_is_in_henon_units(dim: int, softening: float) -> None:
    state = plummer(n=32, seed=7, dim=dim, softening=softening, num_systems=3)
    assert state.position.shape == (3, 32, dim) and state.softening == softening
    torch.testing.assert_close(state.mass, torch.full((3, 32), 1 / 32, dtype=torch.float64))
    T = kinetic_energy(state.mass, state.velocity)
    U = potential_energy(state.mass, state.position, state.G, state.softening)
    torch.testing.assert_close(T + U, torch.full((3,), -0.25, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(2 * T / U.abs(), torch.ones(3, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_com_at_rest_at_origin(state)


def test_plummer_reproducible_under_seed_and_different_across_seeds() -> None:
    a, b, c = plummer(n=16, seed=11), plummer(n=16, seed=11), plummer(n=16, seed=12)
    assert torch.equal(a.position, b.position) and torch.equal(a.velocity, b.velocity)
    assert not torch.equal(a.position, c.position)
    assert make_preset("plummer", n=16, seed=11).period is None


def test_plummer_has_the_plummer_half_mass_radius() -> None:
    # In Henon units a Plummer sphere has scale radius 3 pi / 16 and half-mass radius
    # (2^(2/3) - 1)^(-1/2) * 3 pi / 16 = 0.7686; a uniform ball would give 0.953.
    state = plummer(n=512, seed=1, num_systems=8)
    radius = state.position.norm(dim=-1)
    half_mass = radius.median(dim=-1).values.mean().item()
    assert half_mass == pytest.approx((2 ** (2 / 3) - 1) ** -0.5 * 3 * math.pi / 16, rel=0.05)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"n": 1}, "n"), ({"softening": 0.9, "n": 10}, "softening"), ({"dim": 1}, "dim"), ({"num_systems": 0}, "num_systems")],
)
def test_plummer_rejects_invalid_parameters(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        plummer(**kwargs)


# ----------------------------------------------------------------------------- preset table
def test_table_names_and_every_preset_builds_with_defaults() -> None:
    assert set(PRESETS) == {"kepler", "kepler-batch", "figure-eight", "pythagorean", "plummer"}
    for name, spec in PRESETS.items():
        assert spec.name == name and spec.description
        system = make_preset(name)
        assert isinstance(system, PresetSystem) and system.name == name
        assert system.params == spec.params
        system.state.validate()
        if system.period is not None:
            assert system.period.shape == (system.state.batch_size,) and torch.all(system.period > 0)


def test_make_preset_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        make_preset("kepler3")
    message = str(info.value)
    assert "kepler3" in message
    assert all(name in message for name in PRESETS)


def test_make_preset_unknown_parameter_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(ConfigError) as info:
        make_preset("kepler", ecc=0.3)
    message = str(info.value)
    assert "'ecc'" in message and "eccentricity" in message and "semi_major_axis" in message
    with pytest.raises(ConfigError, match="does not take parameter 'n'"):
        make_preset("figure-eight", n=3)


def test_make_preset_none_means_default_and_values_are_converted() -> None:
    system = make_preset("kepler", eccentricity=None, semi_major_axis="2.5", masses="1,3", start=None)
    assert system.params == {"eccentricity": 0.5, "semi_major_axis": 2.5, "masses": (1.0, 3.0),
                             "start": "apocentre", "G": 1.0, "dim": 2}
    separation, _ = relative_orbit(system.state)
    assert separation.item() == pytest.approx(2.5 * 1.5)
    batch = make_preset("kepler-batch", **{"num-orbits": "3", "e-min": 0.1, "e_max": 0.2})
    assert batch.state.batch_size == 3 and batch.params["num_orbits"] == 3 and batch.params["e_min"] == 0.1


@pytest.mark.parametrize(
    "name, params, key",
    [
        ("kepler", {"eccentricity": "high"}, "eccentricity"),
        ("kepler", {"eccentricity": 1.5}, "eccentricity"),
        ("kepler", {"masses": (1.0, -2.0)}, "masses"),
        ("kepler-batch", {"num_orbits": 2.5}, "num_orbits"),
        ("plummer", {"n": True}, "n"),
        ("plummer", {"seed": "x"}, "seed"),
        ("kepler", {"start": 3}, "start"),
    ],
)
def test_make_preset_invalid_values_name_the_parameter(name: str, params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make_preset(name, **params)
