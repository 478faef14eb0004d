"""System families, training sets in TOML, padding of mixed-N batches, and the safety calibration."""

from __future__ import annotations

import math

import pytest
import torch

from nbtoolkit import NBodyState
from nbtoolkit.errors import ConfigError, InvalidStateError
from nbtoolkit.families import FAMILIES, draw_family, hyperbolic_relative, kepler_relative
from nbtoolkit.gate import EnergyGate
from nbtoolkit.physics import angular_momentum, closest_free_fall_time, linear_momentum, state_energy, total_energy
from nbtoolkit.training import TrainConfig
from nbtoolkit.training.calibrate import calibrate_safety, max_passing_scale
from nbtoolkit.training.steps import _predict_and_step, padding_groups, predict_and_step
from nbtoolkit.training.trainset import (
    SOFTENING_UNIT,
    TrainingSet,
    builtin_training_sets,
    load_training_set,
    pad_systems,
)


def test_kepler_relative_has_the_energy_and_angular_momentum_of_its_elements():
    a = torch.tensor([1.0, 2.5, 0.3], dtype=torch.float64)
    e = torch.tensor([0.0, 0.6, 0.99], dtype=torch.float64)
    mu = torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64)
    x, v = kepler_relative(a, e, mu, torch.tensor([0.3, 2.0, 3.1], dtype=torch.float64))
    energy = 0.5 * v.square().sum(-1) - mu / x.norm(dim=-1)
    h = torch.linalg.cross(x, v, dim=-1).norm(dim=-1)
    assert torch.allclose(energy, -mu / (2 * a), rtol=1e-12)
    assert torch.allclose(h, (mu * a * (1 - e**2)).sqrt(), rtol=1e-10)


def test_hyperbolic_relative_reaches_its_pericentre_at_the_time_it_gives():
    q = torch.tensor([0.1, 1.0, 0.02], dtype=torch.float64)
    e = torch.tensor([1.02, 1.5, 10.0], dtype=torch.float64)
    mu = torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64)
    x, v, t = hyperbolic_relative(q, e, mu, 30 * q)
    assert torch.allclose(x.norm(dim=-1), 30 * q, rtol=1e-12) and bool(((x * v).sum(-1) < 0).all())  # inbound
    energy = 0.5 * v.square().sum(-1) - mu / x.norm(dim=-1)
    assert torch.allclose(energy, mu * (e - 1) / (2 * q), rtol=1e-12)  # mu / (2 |a|)
    assert torch.allclose(torch.linalg.cross(x, v, dim=-1).norm(dim=-1), (mu * q * (1 + e)).sqrt(), rtol=1e-12)

    def rate(y: torch.Tensor) -> torch.Tensor:  # (B, 6): the relative orbit's d/dt of (x, v)
        r = y[:, :3]
        return torch.cat([y[:, 3:], -mu[:, None] * r / r.norm(dim=-1, keepdim=True) ** 3], -1)

    y, steps = torch.cat([x, v], -1), 4000
    h = (t / steps)[:, None]
    for _ in range(steps):  # classical RK4 over each orbit's own time to pericentre
        k1 = rate(y)
        k2 = rate(y + 0.5 * h * k1)
        k3 = rate(y + 0.5 * h * k2)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + rate(y + h * k3))
    assert torch.allclose(y[:, :3].norm(dim=-1), q, rtol=1e-6)
    assert bool(((y[:, :3] * y[:, 3:]).sum(-1).abs() < 1e-4 * q * y[:, 3:].norm(dim=-1)).all())  # turning


@pytest.mark.parametrize("low, high", [(0.9, 0.999), (1.001, 11.0)])
def test_a_range_on_one_side_of_one_is_drawn_log_uniformly_in_its_distance_from_one(low, high):
    from nbtoolkit.family_sampling import Sampler

    sampler = Sampler("f", {"eccentricity": [low, high]}, {}, torch.Generator().manual_seed(1))
    x = sampler.draw_from_one("eccentricity", 4000)
    assert bool(((x >= low) & (x <= high)).all())
    # log |1 - x| is uniform: every decade of the distance from one holds the same share of the draws
    ends = sorted((math.log10(abs(1 - low)), math.log10(abs(1 - high))))
    decades = round(ends[1] - ends[0])
    counts = torch.histc(torch.log10((1 - x).abs()), bins=decades, min=ends[0], max=ends[1])
    assert int(counts.sum()) == 4000 and bool(((counts - 4000 / decades).abs() < 0.1 * 4000 / decades).all())


def test_hyperbolic_pairs_are_unbound_inbound_and_within_their_ranges():
    draws = draw_family("hyperbolic", 40, torch.Generator().manual_seed(3), eccentricity=[1.1, 4.0],
                        pericentre=[0.05, 0.5], distance=[20.0, 40.0], mass_ratio=0.25)
    for d in draws:
        x, v = d.position[1] - d.position[0], d.velocity[1] - d.velocity[0]
        mu = float(d.mass.sum())
        ecc = float((((v.square().sum() - mu / x.norm()) * x - (x @ v) * v) / mu).norm())
        pericentre = float(torch.linalg.cross(x, v, dim=-1).square().sum()) / (mu * (1 + ecc))
        assert 1.1 - 1e-9 <= ecc <= 4.0 + 1e-9 and 0.05 - 1e-9 <= pericentre <= 0.5 + 1e-9
        assert 20 - 1e-9 <= float(x.norm()) / pericentre <= 40 + 1e-9 and float(x @ v) < 0
        assert math.isclose(float(d.mass[1] / d.mass[0]), 0.25, rel_tol=1e-12)
    with pytest.raises(ConfigError, match="family 'hyperbolic': eccentricity must be above 1"):
        draw_family("hyperbolic", 1, torch.Generator().manual_seed(0), eccentricity=[0.9, 2.0])
    with pytest.raises(ConfigError, match="distance .* must be >= 1; got 0.5"):
        draw_family("hyperbolic", 1, torch.Generator().manual_seed(0), distance=0.5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_draws_bound_systems_at_rest_in_their_centre_of_mass_frame(family):
    draws = draw_family(family, 3, torch.Generator().manual_seed(4))
    assert len(draws) == 3
    for d in draws:
        assert d.position.shape == (d.n_bodies, 3) and bool((d.mass > 0).all())
        assert float(total_energy(d.mass, d.position, d.velocity)) < 0 or family in ("democratic", "encounter",
                                                                                     "hyperbolic")
        assert float(linear_momentum(d.mass, d.velocity).norm()) < 1e-12 * float(d.mass.sum() * d.velocity.norm())
        assert float((d.mass.unsqueeze(-1) * d.position).sum(0).norm()) < 1e-10 * float(d.position.norm())


def test_families_are_reproducible_and_respect_their_ranges():
    a = draw_family("kepler", 20, torch.Generator().manual_seed(1), eccentricity=[0.2, 0.3], mass_ratio=0.5)
    b = draw_family("kepler", 20, torch.Generator().manual_seed(1), eccentricity=[0.2, 0.3], mass_ratio=0.5)
    assert all(torch.equal(x.position, y.position) for x, y in zip(a, b))
    for d in a:
        assert math.isclose(float(d.mass[1] / d.mass[0]), 0.5, rel_tol=1e-12)
        rel_x, rel_v = d.position[1] - d.position[0], d.velocity[1] - d.velocity[0]
        mu = float(d.mass.sum())
        ecc = ((rel_v.square().sum() - mu / rel_x.norm()) * rel_x - (rel_x @ rel_v) * rel_v) / mu
        assert 0.2 - 1e-9 <= float(ecc.norm()) <= 0.3 + 1e-9
    plummer = draw_family("plummer", 10, torch.Generator().manual_seed(0), n=[4, 9])
    assert all(4 <= d.n_bodies <= 9 for d in plummer)


def test_plummer_clusters_take_a_mass_spectrum_and_a_virial_ratio():
    equal = draw_family("plummer", 4, torch.Generator().manual_seed(2), n=[8, 16])
    assert all(torch.equal(d.mass, torch.full_like(d.mass, 1 / d.n_bodies)) for d in equal)
    for d in draw_family("plummer", 6, torch.Generator().manual_seed(2), n=[8, 16], mass_ratio=[0.01, 0.1],
                         virial_ratio=[0.1, 0.2]):
        spread = float(d.mass.max() / d.mass.min())
        assert 1.0 < spread <= 100.0 + 1e-9 and math.isclose(float(d.mass.sum()), 1.0, rel_tol=1e-12)
        kinetic = 0.5 * float((d.mass * d.velocity.square().sum(-1)).sum())
        potential = float(total_energy(d.mass, d.position, d.velocity)) - kinetic
        assert 0.1 - 1e-12 <= kinetic / abs(potential) <= 0.2 + 1e-12


def test_encounters_bring_an_unbound_intruder_from_the_given_distance_to_a_bound_binary():
    for d in draw_family("encounter", 6, torch.Generator().manual_seed(3), binary_eccentricity=0.5, speed=[0.5, 1.0],
                         scale=1.0):
        m_b = d.mass[:2].sum()
        com = (d.mass[:2, None] * d.position[:2]).sum(0) / m_b
        com_v = (d.mass[:2, None] * d.velocity[:2]).sum(0) / m_b
        rel_x, rel_v = d.position[2] - com, d.velocity[2] - com_v
        mu = float(m_b + d.mass[2])
        specific = 0.5 * float(rel_v.square().sum()) - mu / float(rel_x.norm())
        assert 0.5**2 / 2 - 1e-12 <= specific <= 1.0**2 / 2 + 1e-12  # v_inf^2 / 2 in [0.5, 1] of the circular speed
        assert math.hypot(8.0, 0.5) - 1e-9 <= float(rel_x.norm()) <= math.hypot(8.0, 4.0) + 1e-9  # distance 8, offset 0.5-4
        assert float(rel_x @ rel_v) < 0  # coming in
        bx, bv = d.position[1] - d.position[0], d.velocity[1] - d.velocity[0]
        mu_b = float(m_b)
        ecc = ((bv.square().sum() - mu_b / bx.norm()) * bx - (bx @ bv) * bv) / mu_b
        assert math.isclose(float(ecc.norm()), 0.5, rel_tol=1e-9)


def test_an_intruder_binary_meets_the_binary_on_the_same_path_as_a_single_intruder_would():
    """With intruder_separation the intruder is a bound pair (semi-major axis and eccentricity as asked, mass ratio
    in range) whose centre of mass comes in on the single intruder's hyperbola; without it nothing changes."""
    params = dict(binary_eccentricity=0.5, speed=[0.5, 1.0], scale=1.0)
    singles = draw_family("encounter", 4, torch.Generator().manual_seed(3), **params)
    pairs = draw_family("encounter", 4, torch.Generator().manual_seed(3), intruder_separation=0.4, **params)
    assert [d.n_bodies for d in singles] == [3] * 4 and [d.n_bodies for d in pairs] == [4] * 4
    for d in pairs:
        m = d.mass
        assert math.isclose(float(m.sum()), 1 + float(m[2:].sum()), rel_tol=1e-12)  # first binary of unit mass
        assert 0.1 - 1e-12 <= float(m[3] / m[2]) <= 1 + 1e-12
        x, v, mu = d.position[3] - d.position[2], d.velocity[3] - d.velocity[2], float(m[2:].sum())
        energy = 0.5 * float(v.square().sum()) - mu / float(x.norm())
        assert math.isclose(energy, -mu / (2 * 0.4), rel_tol=1e-9)  # bound, a = 0.4 of the first binary's
        ecc = ((v.square().sum() - mu / x.norm()) * x - (x @ v) * v) / mu
        assert math.isclose(float(ecc.norm()), 0.5, rel_tol=1e-9)
        m_b, m_i = m[:2].sum(), m[2:].sum()
        rel_x = (m[2:, None] * d.position[2:]).sum(0) / m_i - (m[:2, None] * d.position[:2]).sum(0) / m_b
        rel_v = (m[2:, None] * d.velocity[2:]).sum(0) / m_i - (m[:2, None] * d.velocity[:2]).sum(0) / m_b
        specific = 0.5 * float(rel_v.square().sum()) - float(m_b + m_i) / float(rel_x.norm())
        assert 0.5**2 / 2 - 1e-12 <= specific <= 1.0**2 / 2 + 1e-12 and float(rel_x @ rel_v) < 0
    again = draw_family("encounter", 4, torch.Generator().manual_seed(3), intruder_separation=0.0, **params)
    assert all(torch.equal(a.position, b.position) for a, b in zip(singles, again))


def test_validation_tables_are_drawn_only_for_the_calibration(tmp_path):
    path = tmp_path / "set.toml"
    path.write_text('[[systems]]\nfamily = "kepler"\ncount = 3\n\n[[validation]]\nfamily = "encounter"\ncount = 2\n')
    tset = load_training_set(path)
    assert tset.size == 3 and tset.build(seed=0).n_bodies == 2  # never trained on
    draws = tset.validation_draws(seed=0)
    assert [d.family for d in draws] == ["kepler"] * 6 + ["encounter"] * 4
    again = tset.validation_draws(seed=0)
    assert all(torch.equal(a.position, b.position) for a, b in zip(draws, again))
    assert not torch.equal(draws[6].position, draws[8].position)  # seeds + 1 and + 2 differ
    assert all(torch.equal(a.position, b.position) for a, b in zip(draws[:3], tset.draw(1)))
    assert "validated also on 2 encounter" in tset.summary()
    with pytest.raises(ConfigError, match=r"\[\[validation\]\] table 1: family must be one of"):
        TrainingSet.from_tables([{"family": "kepler"}], validation=[{"family": "nope"}])


def test_hierarchical_triples_stay_outside_the_stability_limit():
    for d in draw_family("triple", 8, torch.Generator().manual_seed(2), period_ratio=[1.0, 1.5]):
        inner = (d.position[1] - d.position[0]).norm()
        com = (d.mass[:2, None] * d.position[:2]).sum(0) / d.mass[:2].sum()
        assert float((d.position[2] - com).norm()) > 2.0 * float(inner)


@pytest.mark.parametrize("params", [
    {"n": 3, "mass_ratio": [1e-3, 1.0]},  # Lagrange's triangle, masses apart by up to 1000
    {"n": [4, 8], "central_mass": [1.0, 1000.0]},  # rings around a central body
    {"n": [4, 8]},  # rings alone
])
def test_central_configurations_turn_rigidly_at_full_spin(params):
    """Unperturbed at spin 1, every separation stays what it was over a quarter turn (to leapfrog's
    error at 2,000 steps a quarter turn); at spin 0.9 the bodies move apart and together again."""
    from plugins.integrators import Leapfrog

    leapfrog = Leapfrog()
    for spin, rigid in ((1.0, True), (0.9, False)):
        for d in draw_family("central", 3, torch.Generator().manual_seed(5), perturbation=0.0, spin=spin, **params):
            if "central_mass" not in params and d.n_bodies == 3:
                assert float(d.mass.max() / d.mass.min()) > 1.01  # a triangle's masses differ
            state = NBodyState(d.mass.unsqueeze(0), d.position.unsqueeze(0), d.velocity.unsqueeze(0),
                               torch.zeros(1, dtype=torch.float64))
            r0 = torch.cdist(d.position, d.position)
            turn = 2 * math.pi * float(d.position.norm(dim=-1).max() / d.velocity.norm(dim=-1).max())
            dt = torch.tensor([turn / 4 / 2000], dtype=torch.float64)
            for _ in range(2000):
                state = leapfrog.step(state, dt)
            r1 = torch.cdist(state.position[0], state.position[0])
            change = float(((r1 - r0).abs() / (r0 + torch.eye(d.n_bodies, dtype=torch.float64))).max())
            assert (change < 1e-6) if rigid else (change > 1e-3)


@pytest.mark.parametrize("dim", [2, 3])
def test_restricted_problems_put_light_bodies_where_their_ranges_say(dim):
    """Every light body weighs particle_mass of the binary, sits radius binary semi-major axes from the
    binary's centre of mass and moves at speed times the circular speed there, at most 45 degrees off the
    tangential (in the binary's plane in 2-D, prograde and retrograde alike)."""
    draws = draw_family("restricted", 12, torch.Generator().manual_seed(6), dim=dim, scale=1.0,
                        particles=[2, 3], particle_mass=[1e-8, 1e-5], radius=[0.5, 3.0], speed=[0.6, 1.1])
    senses = set()
    for d in draws:
        assert d.n_bodies in (4, 5)
        binary, light = d.mass[:2].sum(), d.mass[2:]
        assert bool(((light / binary >= 1e-8 * (1 - 1e-12)) & (light / binary <= 1e-5 * (1 + 1e-12))).all())
        com_x = (d.mass[:2, None] * d.position[:2]).sum(0) / binary
        com_v = (d.mass[:2, None] * d.velocity[:2]).sum(0) / binary
        rel_x, rel_v = d.position[2:] - com_x, d.velocity[2:] - com_v
        radius = rel_x.norm(dim=-1)
        assert bool(((radius > 0.5 - 1e-9) & (radius < 3.0 + 1e-9)).all())
        speed = rel_v.norm(dim=-1) * (radius / binary).sqrt()
        assert bool(((speed > 0.6 - 1e-9) & (speed < 1.1 + 1e-9)).all())
        radial_share = ((rel_x * rel_v).sum(-1) / (radius * rel_v.norm(dim=-1))).abs()
        assert bool((radial_share <= math.sin(math.pi / 4) + 1e-9).all())
        if dim == 2:
            assert float(d.position[:, 2].abs().max()) < 1e-12 and float(d.velocity[:, 2].abs().max()) < 1e-12
            spin_binary = torch.linalg.cross(d.position[1] - d.position[0], d.velocity[1] - d.velocity[0])[2]
            senses.update(bool(s) for s in torch.linalg.cross(rel_x, rel_v)[:, 2] * spin_binary > 0)
    if dim == 2:
        assert senses == {True, False}


def test_a_central_configuration_needs_three_bodies():
    with pytest.raises(ConfigError, match="family 'central': parameter n must be at least 3"):
        draw_family("central", 1, torch.Generator().manual_seed(0), n=2)


@pytest.mark.parametrize("bad, match", [
    ({"family": "nonsense"}, "family must be one of"),
    ({"family": "kepler", "count": 0}, "count"),
    ({"family": "kepler", "eccentricty": 0.3}, "does not take 'eccentricty'"),
])
def test_bad_systems_tables_name_the_table_and_key(bad, match):
    with pytest.raises(ConfigError, match=match) as info:
        TrainingSet.from_tables([{"family": "kepler", "count": 2}, bad], name="mine")
    assert "table 2" in str(info.value)


def test_bad_parameter_values_are_named_when_drawing():
    tset = TrainingSet.from_tables([{"family": "kepler", "count": 2, "mass_ratio": [0.0, 1.0]}])
    with pytest.raises(ConfigError, match="mass_ratio must be > 0"):
        tset.draw(0)


def test_builtin_general_set_mixes_families_and_numbers_of_bodies():
    assert "general" in builtin_training_sets()
    tset = load_training_set("general")
    families = {spec.family for spec in tset.systems}
    assert {"kepler", "triple", "figure-eight", "plummer"} <= families
    state = tset.build(seed=0)
    counts = state.body_mask.sum(-1)
    assert state.batch_size == tset.size and int(counts.min()) == 2 and int(counts.max()) == state.n_bodies > 8
    assert torch.equal(tset.build(seed=0).position, state.position)
    assert not torch.equal(tset.build(seed=1).position, state.position)


def test_training_set_from_a_toml_file(tmp_path):
    path = tmp_path / "set.toml"
    path.write_text('name = "tiny"\n[[systems]]\nfamily = "kepler"\ncount = 3\n\n'
                    '[[systems]]\nfamily = "plummer"\ncount = 1\nn = 5\n')
    tset = load_training_set(path)
    assert tset.name == "tiny" and tset.size == 4
    state = tset.build(seed=3)
    assert state.n_bodies == 5 and state.body_mask.sum(-1).tolist() == [2, 2, 2, 5]
    with pytest.raises(ConfigError, match="unknown training set"):
        load_training_set("no-such-set")


def test_the_readme_training_set_example_loads_and_draws_as_written(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index('name = "binaries-and-clusters"')
    path = tmp_path / "set.toml"
    path.write_text(readme[start:readme.index("```", start)])
    tset = load_training_set(path)
    families = [d.family for d in tset.draw(0)]
    assert tset.name == "binaries-and-clusters" and set(families) == {"kepler", "plummer", "restricted"}
    assert len(families) == tset.size and "validated also on 8 encounter" in tset.summary()


def test_padding_bodies_change_no_energy_and_are_only_allowed_when_asked_for():
    draws = draw_family("kepler", 2, torch.Generator().manual_seed(0)) + \
        draw_family("plummer", 1, torch.Generator().manual_seed(0), n=6)
    padded = pad_systems(draws)
    for b, d in enumerate(draws):
        alone = total_energy(d.mass, d.position, d.velocity)
        assert torch.allclose(state_energy(padded)[b], alone, rtol=1e-14)
    assert float(angular_momentum(padded.mass, padded.position, padded.velocity)[0].norm()) > 0
    with pytest.raises(InvalidStateError, match="'mass' must be > 0"):
        NBodyState(padded.mass, padded.position, padded.velocity, padded.time).validate()
    lone = padded.mass.clone()
    lone[0, 1] = 0
    with pytest.raises(InvalidStateError, match="system 0 has 1 bodies"):
        NBodyState(lone, padded.position, padded.velocity, padded.time).validate(allow_padding=True)


def test_softening_is_drawn_per_system_without_changing_the_unsoftened_draws():
    plain = draw_family("plummer", 5, torch.Generator().manual_seed(3), n=[8, 16])
    soft = draw_family("plummer", 5, torch.Generator().manual_seed(3), n=[8, 16], softening=[0.01, 0.1])
    assert all(torch.equal(a.position, b.position) and torch.equal(a.mass, b.mass) for a, b in zip(plain, soft))
    eps = [d.softening for d in soft]
    assert all(0.01 <= e <= 0.1 for e in eps) and len(set(eps)) == 5 and {d.softening for d in plain} == {0.0}
    assert {d.softening for d in draw_family("kepler", 3, torch.Generator().manual_seed(0), softening=0.02)} == {0.02}
    with pytest.raises(ConfigError, match="parameter softening must be > 0"):
        draw_family("kepler", 1, torch.Generator().manual_seed(0), softening=[0.0, 0.1])
    with pytest.raises(ConfigError, match="parameter softening must be > 0"):
        draw_family("kepler", 1, torch.Generator().manual_seed(0), softening=-1.0)


def test_softened_systems_share_a_padded_state_in_their_own_length_unit(host):
    """One softening length holds systems of any softening: each softened system is the same system in
    units where its softening is SOFTENING_UNIT, so its energy, a leapfrog step and a scale-covariant
    dt are those of the system itself, rescaled (lengths, masses and times by k = SOFTENING_UNIT / eps)."""
    g = torch.Generator().manual_seed(1)
    draws = draw_family("plummer", 2, g, n=[6, 9], softening=[0.02, 0.2]) + draw_family("kepler", 1, g)
    padded = pad_systems(draws)
    assert padded.softening == SOFTENING_UNIT
    rule, leapfrog = host.predictors.create("freefall", eta=0.05), host.integrators.create("leapfrog")
    dt = rule(padded)
    after = leapfrog.step(padded, dt)
    for b, d in enumerate(draws):
        k = SOFTENING_UNIT / d.softening if d.softening else 1.0
        alone = NBodyState.from_arrays(d.mass, d.position, d.velocity, softening=d.softening)
        n = d.n_bodies
        assert torch.allclose(state_energy(padded)[b], k * state_energy(alone)[0], rtol=1e-12)
        assert torch.allclose(dt[b], k * rule(alone)[0], rtol=1e-12)
        stepped = leapfrog.step(alone, rule(alone))
        assert torch.allclose(after.position[b, :n], k * stepped.position[0], rtol=1e-10, atol=1e-12 * k)
        assert torch.allclose(after.velocity[b, :n], stepped.velocity[0], rtol=1e-10, atol=1e-12)
    assert float(padded.position[2, :2].norm()) > 1e-3  # the unsoftened Kepler pair keeps its own units


def test_learned_dt_is_the_same_alone_and_padded_in_a_mixed_batch(host):
    pred = host.predictors.create("mlp", hidden_width=8, seed=0, max_pairs=4)
    draws = draw_family("triple", 2, torch.Generator().manual_seed(0)) + \
        draw_family("plummer", 1, torch.Generator().manual_seed(0), n=7)
    padded = pad_systems(draws)
    for b, d in enumerate(draws):
        alone = NBodyState.from_arrays(d.mass, d.position, d.velocity)
        assert torch.allclose(pred(padded)[b], pred(alone)[0], rtol=1e-12)


def test_grouped_step_of_a_padded_batch_equals_the_padded_computation(host):
    pred = host.predictors.create("mlp", hidden_width=8, seed=1)
    integrator = host.integrators.create("leapfrog")
    full = load_training_set("general").build(seed=0)
    state = full.index(torch.linspace(0, full.batch_size - 1, 15).long())  # every family, N = 2 to 60
    groups = padding_groups(state)
    assert groups is not None and len(groups) > 1
    assert sorted(torch.cat([idx for idx, _ in groups]).tolist()) == list(range(state.batch_size))
    cfg = TrainConfig()
    grouped = predict_and_step(pred, integrator, state, None, cfg)
    whole = _predict_and_step(pred, integrator, state, None, cfg, None, EnergyGate())
    real = state.body_mask
    assert torch.allclose(grouped.dt, whole.dt, rtol=1e-12)
    assert torch.allclose(grouped.state.position[real], whole.state.position[real], rtol=1e-12, atol=1e-14)
    assert torch.allclose(grouped.rel_dE, whole.rel_dE, rtol=1e-6, atol=1e-15)
    grouped.losses.sum().backward()
    assert all(p.grad is not None for p in pred.parameters())


def test_max_passing_scale_brackets_the_gate(host):
    from systems import two_body_orbit

    state, _ = two_body_orbit(e=0.5)
    integrator = host.integrators.create("leapfrog")
    dt = torch.tensor([0.01], dtype=torch.float64)
    scales = torch.logspace(-1, 2, 31, dtype=torch.float64)
    best = float(max_passing_scale(integrator, state, dt, scales, threshold=2e-4)[0])
    assert 0.1 <= best < 100

    def rel(scale: float) -> float:
        new = integrator.step(state, dt * scale)
        return float(((state_energy(new) - state_energy(state)) / state_energy(state)).abs()[0])

    assert rel(best) <= 2e-4 < rel(float(scales[scales > best][0]))


def test_strided_scan_finds_the_full_scans_factor_including_none_and_all(host):
    """Scanning every 4th factor and then the ones in between gives the full grid's s* on states where pass/fail
    has no pocket, also when even the smallest factor fails (0) and when the largest passes (the top)."""
    integrator = host.integrators.create("leapfrog")
    state = pad_systems(draw_family("kepler", 6, torch.Generator().manual_seed(2), eccentricity=[0.0, 0.9])
                        + draw_family("triple", 3, torch.Generator().manual_seed(2)))
    state = state.trim_bodies(3)
    scales = torch.logspace(-math.log10(4), math.log10(4), 65, dtype=torch.float64)
    tau = host.predictors.create("freefall", eta=1.0)(state).detach()  # the closest pair's free-fall time
    dt = tau * torch.logspace(-2, 0, state.batch_size, dtype=torch.float64)
    dt[0], dt[1] = tau[0] * 10, tau[1] * 1e-4  # the whole grid fails / passes
    full = max_passing_scale(integrator, state, dt, scales, threshold=2e-4)
    assert float(full[0]) == 0 and float(full[1]) == float(scales[-1])
    assert int(((full > scales[0]) & (full < scales[-1])).sum()) >= 4  # most found inside the grid
    for stride in (2, 3, 4, 7):
        assert torch.equal(max_passing_scale(integrator, state, dt, scales, threshold=2e-4, stride=stride), full)


def test_calibration_with_the_strided_scan_finds_the_full_scans_factors(host):
    factors = []
    for stride in (1, 4):
        pred = host.predictors.create("learned", feedback=False)
        state = pad_systems(draw_family("triple", 3, torch.Generator().manual_seed(7))
                            + draw_family("kepler", 3, torch.Generator().manual_seed(7)))
        factors.append(calibrate_safety(pred, host.integrators.create("leapfrog"), state, threshold=2e-4, steps=48,
                                        stride=stride).factor)
    assert factors[0] == factors[1] and any(f != 1.0 for f in factors[0])


def test_calibration_rolls_a_history_reading_predictor_out_with_its_history(host):
    """The predictor sees the states it flew, as in simulate: empty at the first step, the last K after."""
    from nbtoolkit.training.calibrate import _rollout_scales

    pred = host.predictors.create("mlp", hidden_width=8, seed=0, history_len=2)
    seen = []
    original = pred.predict_with_class

    def spy(state, history=None):
        seen.append(None if history is None else history.mask.sum(-1).tolist())
        return original(state, history)

    pred.predict_with_class = spy
    state = pad_systems(draw_family("kepler", 2, torch.Generator().manual_seed(5), eccentricity=[0.0, 0.5]))
    scales = torch.logspace(-0.5, 0.5, 9, dtype=torch.float64)
    with torch.no_grad():
        _rollout_scales(pred, host.integrators.create("leapfrog"), state, scales, 2e-4, 4, None)
    assert seen == [[0, 0], [1, 1], [2, 2], [2, 2]]


def test_calibration_makes_no_predictor_bolder_than_max_factor(host):
    """A class where every validation step would pass at the top of the grid is raised round after round;
    the factor stops at MAX_FACTOR however timid the network is there."""
    from nbtoolkit.training.calibrate import MAX_FACTOR

    pred = host.predictors.create("mlp", hidden_width=8, seed=0, init_factor=0.0005)
    integrator = host.integrators.create("leapfrog")
    state = pad_systems(draw_family("kepler", 2, torch.Generator().manual_seed(5), eccentricity=[0.0, 0.5]))
    result = calibrate_safety(pred, integrator, state, threshold=2e-4, target_pass_rate=0.99, steps=20)
    assert max(pred.safety) == pytest.approx(MAX_FACTOR, rel=1e-12) and max(result.factor) <= MAX_FACTOR * (1 + 1e-12)


def test_calibration_brings_a_timid_predictor_up_to_the_target_pass_rate(host):
    pred = host.predictors.create("mlp", hidden_width=8, seed=0, init_factor=0.002)
    integrator = host.integrators.create("leapfrog")
    state = pad_systems(draw_family("kepler", 4, torch.Generator().manual_seed(5), eccentricity=[0.0, 0.5]))
    before = pred(state).detach()
    result = calibrate_safety(pred, integrator, state, threshold=2e-4, target_pass_rate=0.99, steps=60, span=16.0,
                              max_factor=16.0)
    # two-body systems are class 0; classes without validation systems take the smallest factor
    assert result.factor[0] > 2 and math.isclose(pred.safety[0], result.factor[0], rel_tol=1e-12)
    assert pred.safety == pytest.approx([pred.safety[0]] * len(pred.safety))
    assert torch.allclose(pred(state), before * result.factor[0], rtol=1e-12)
    # the calibrated dt passes the gate on (at least) the target share of a fresh rollout's steps
    current, passed, total = state, 0, 0
    with torch.no_grad():
        for _ in range(60):
            new = integrator.step(current, pred(current))
            rel = ((state_energy(new) - state_energy(current)) / state_energy(current)).abs()
            passed, total, current = passed + int((rel <= 2e-4).sum()), total + rel.numel(), new
    assert passed / total >= 0.97


def test_safety_classes_split_by_body_count_closest_pair_eccentricity_energy_share_and_tide(host):
    from plugins.safety_classes import SAFETY_CLASSES, safety_bucket, safety_class

    assert safety_bucket(torch.tensor([2, 3, 4, 7, 8, 15, 16, 31, 32, 64])).tolist() == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    n = torch.tensor([2, 2, 2, 2, 3, 3, 40, 3, 2])
    e = torch.tensor([0.1, 0.5, 0.95, 0.99, 0.2, 0.2, 0.99, 1.5, 0.999], dtype=torch.float64)
    share = torch.tensor([2.0, 2.0, 2.0, 2.0, 0.5, 1.0, 0.1, 0.2, 2.0], dtype=torch.float64)
    tide = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.001, 0.5, 0.01, 0.2, 0.0], dtype=torch.float64)
    # 24 classes per body count: 6 eccentricity classes x dominant x perturbed
    assert safety_class(n, e, share, tide).tolist() == [2, 6, 10, 14, 24, 27, 133, 45, 18] and SAFETY_CLASSES == 144
    pred = host.predictors.create("mlp", hidden_width=8, seed=0)
    state = pad_systems(draw_family("kepler", 1, torch.Generator().manual_seed(1), eccentricity=0.95)
                        + draw_family("figure-eight", 1, torch.Generator().manual_seed(1)))
    # a bound binary's G m1 m2 / r is (2 a / r) |E| > |E| since r < 2 a: always dominant; e = 0.95 is in
    # 0.9-0.97, and nothing perturbs it; the figure-eight's closest pair is pulled hard by the third body
    assert pred.safety_index(state)[0] == 10 and pred.safety_index(state)[1] % 2 == 1
    with torch.no_grad():
        pred.log_safety[10] = math.log(0.5)
    assert torch.allclose(pred(state)[0], 0.5 * pred.log_dt(state)[0].exp(), rtol=1e-12)
    assert torch.allclose(pred(state)[1], pred.log_dt(state)[1].exp(), rtol=1e-12)


def test_a_model_file_from_before_the_unbound_class_loads_with_its_factors_in_place(host):
    """Files with 4 eccentricity classes (48 factors) load: e >= 1 takes the old e >= 0.97 factor."""
    from nbtoolkit.training.checkpoint import load_predictor_state
    from plugins.safety_classes import SAFETY_CLASSES, safety_class

    pred = host.predictors.create("mlp", hidden_width=8, seed=0)
    weights = {k: v.clone() for k, v in pred.state_dict().items()}
    weights["log_safety"] = torch.arange(48, dtype=torch.float64)
    load_predictor_state(pred, weights, "mlp", "test file")
    n = torch.tensor([2, 3, 3, 3, 40, 40])
    e = torch.tensor([0.1, 0.98, 1.5, 0.6, 0.99, 3.0], dtype=torch.float64)
    share = torch.tensor([2.0, 0.5, 0.5, 2.0, 2.0, 2.0], dtype=torch.float64)
    tide = torch.tensor([0.0, 0.5, 0.001, 0.1, 0.0, 0.3], dtype=torch.float64)
    old_index = [1, 8 + 6, 8 + 6, 8 + 3, 40 + 7, 40 + 7]  # 8 classes per body count before, e >= 0.97 is 6 and 7
    assert pred.log_safety.shape == (SAFETY_CLASSES,)
    assert pred.log_safety[safety_class(torch.tensor([2]), torch.tensor([0.999], dtype=torch.float64),
                                        torch.tensor([2.0], dtype=torch.float64),
                                        torch.tensor([0.0], dtype=torch.float64))].tolist() == [7]
    assert pred.log_safety[safety_class(n, e, share, tide)].tolist() == old_index


def test_a_model_file_from_before_the_near_radial_and_perturbed_classes_loads_with_its_factors_in_place(host):
    """Files with 60 factors load: e = 0.97-0.995 and 0.995-1 take the old 0.97-1 factor, a quiet and a
    perturbed closest pair both take the old factor of their class."""
    from nbtoolkit.training.checkpoint import load_predictor_state
    from plugins.safety_classes import safety_class

    pred = host.predictors.create("mlp", hidden_width=8, seed=0)
    weights = {k: v.clone() for k, v in pred.state_dict().items()}
    weights["log_safety"] = torch.arange(60, dtype=torch.float64)
    load_predictor_state(pred, weights, "mlp", "test file")
    n = torch.tensor([2, 3, 3, 3, 40, 40, 2])
    e = torch.tensor([0.1, 0.98, 1.5, 0.6, 0.99, 3.0, 0.999], dtype=torch.float64)
    share = torch.tensor([2.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    tide = torch.tensor([0.0, 0.5, 0.001, 0.1, 0.0, 0.3, 0.0], dtype=torch.float64)
    old_index = [1, 10 + 6, 10 + 8, 10 + 3, 50 + 7, 50 + 9, 7]  # 10 classes per body count before: 2 ecc + dominant
    assert pred.log_safety[safety_class(n, e, share, tide)].tolist() == old_index


def test_raise_within_budget_spends_each_systems_failure_budget_over_all_its_classes():
    from nbtoolkit.training.calibrate import raise_within_budget

    scales = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    T = 100
    s_star = torch.full((T, 2), 4.0, dtype=torch.float64)
    classes = torch.zeros(T, 2, dtype=torch.long)
    classes[:10, 0] = 1  # system 0 spends 10 steps in class 1 ...
    s_star[:1, 0] = 1.0  # ... one of which passes only up to factor 1: 10 % of its class-1 steps, 1 % of all
    s_star[50:53, 1] = 2.0  # system 1 passes up to 2 on 3 % of its steps (all in class 0)
    start = torch.tensor([0.5, 1.0, 0.7], dtype=torch.float64)  # class 2 has no steps: it keeps its start
    factor = raise_within_budget(s_star, classes, start, scales, target_pass_rate=0.98)
    # budget 2 failing steps each: class 0 cannot pass 2 (system 1 would fail 3), class 1 may reach 4
    assert factor.tolist() == [2.0, 4.0, 0.7]
    strict = raise_within_budget(s_star, classes, start, scales, target_pass_rate=0.995)
    assert strict.tolist() == [2.0, 1.0, 0.7]  # budget 0.5 steps: no system may fail a single step


def test_class_factors_take_each_class_minimum_and_fill_empty_classes_from_their_group():
    from nbtoolkit.training.calibrate import MIN_CLASS_STEPS, class_factors

    T = 2 * MIN_CLASS_STEPS
    s_star = torch.cat([torch.full((T, 1), 2.0), torch.full((T, 1), 1.5), torch.full((T, 1), 3.0)], 1)
    s_star[0, 0] = 0.5  # one bad step in 64 lies below the 5 % quantile: it does not set the factor
    classes = torch.tensor([[0, 0, 5]]).expand(T, 3).clone()
    classes[: MIN_CLASS_STEPS - 1, 1] = 1  # system 1 spends too few steps in class 1 to count there
    factor = class_factors(s_star, classes, n_classes=8, group_size=4, target_pass_rate=0.95)
    assert float(factor[0]) == 1.5  # min over systems 0 and 1 of their 5 % quantiles
    assert float(factor[5]) == 3.0
    assert float(factor[1]) == float(factor[2]) == float(factor[3]) == 1.5  # empty: the group's smallest
    assert float(factor[4]) == float(factor[6]) == 3.0
    # with kinds (0, 0, 1, 1 in each group: bound and unbound, say), an empty class takes the smallest of its kind
    kinds = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    factor = class_factors(s_star, classes, n_classes=8, group_size=4, target_pass_rate=0.95, kinds=kinds)
    assert float(factor[1]) == 1.5 and float(factor[2]) == float(factor[3]) == 1.5  # no class of kind 1: the group
    s_star[:, 2], classes[:, 2] = 0.5, 2  # system 2 now spends every step in class 2 (kind 1) at s* = 0.5
    factor = class_factors(s_star, classes, n_classes=8, group_size=4, target_pass_rate=0.95, kinds=kinds)
    assert float(factor[1]) == 1.5 and float(factor[3]) == 0.5  # each empty class from its own kind
    assert float(factor[2]) == 0.5 and float(factor[4]) == 0.5  # group 2 has no data: the smallest of all
    assert float(class_factors(s_star, classes, 8, 4, 0.95)[1]) == 0.5  # without kinds: the group's smallest


def test_a_validation_pair_that_flies_apart_passes_again_instead_of_flying_on(host):
    """The calibration's rollout restarts a dispersed system from its initial state, as training does: an unbound
    pair's dt grows geometrically once it has passed, until its energies overflow, and every step from there
    would fail at every factor."""
    from nbtoolkit.training.calibrate import unguarded_rollout
    from nbtoolkit.training.restart import DISPERSED_GROWTH

    flyby = pad_systems(draw_family("hyperbolic", 1, torch.Generator().manual_seed(5), eccentricity=3.0,
                                    pericentre=0.1, distance=10.0))
    start = float(closest_free_fall_time(flyby)[0])
    network = host.predictors.create("learned", feedback=False)
    times, timescales = [], []
    with torch.no_grad():
        for state, _, dt, _, alive in unguarded_rollout(network, host.integrators.create("leapfrog"), flyby, 600):
            assert bool(alive.all()) and bool(torch.isfinite(dt).all())
            times.append(float(state.time[0]))
            timescales.append(float(closest_free_fall_time(state)[0]))
    restarts = sum(later < earlier for earlier, later in zip(times, times[1:]))
    assert restarts >= 2 and max(timescales) <= DISPERSED_GROWTH * start * 10
