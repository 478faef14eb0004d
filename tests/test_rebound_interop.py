"""REBOUND interop (nbtoolkit.interop.rebound), the `reference` command and `evaluate --reference`.

Tests that need rebound skip only when it cannot be imported; the reference-file checks of
evaluate use references written by `simulate` and run everywhere."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from systems import random_cluster, two_body_orbit

from nbtoolkit import NBodyState, state_energy
from nbtoolkit.cli import main
from nbtoolkit.io import save_state
from nbtoolkit.presets import make_preset

try:
    import rebound
except ImportError:  # pragma: no cover - CI installs it with the test extra
    rebound = None

needs_rebound = pytest.mark.skipif(rebound is None, reason="rebound cannot be imported")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- conversion
@needs_rebound
def test_round_trip_2d_keeps_everything():
    from nbtoolkit.interop.rebound import from_simulation, to_simulation

    state = make_preset("figure-eight").state.replace(time=torch.tensor([1.25], dtype=torch.float64))
    sim = to_simulation(state)
    assert (sim.N, sim.t, sim.G, str(sim.integrator)) == (3, 1.25, 1.0, "ias15")
    assert all(p.z == 0 and p.vz == 0 for p in sim.particles)
    back = from_simulation(sim)
    assert back.dim == 2
    assert torch.equal(back.mass, state.mass) and torch.equal(back.position, state.position)
    assert torch.equal(back.velocity, state.velocity) and torch.equal(back.time, state.time)


@needs_rebound
def test_round_trip_3d_with_g_softening_and_index():
    from nbtoolkit.interop.rebound import from_simulation, to_simulation

    batch = random_cluster(3, 5, dim=3, seed=4, softening=0.05)
    batch = NBodyState.from_arrays(batch.mass, batch.position, batch.velocity, [0.0, 2.0, 3.5], G=0.7, softening=0.05)
    sim = to_simulation(batch, index=1)
    assert (sim.G, sim.softening, sim.t) == (0.7, 0.05, 2.0)
    back = from_simulation(sim)
    one = batch.index(1)
    assert back.dim == 3 and (back.G, back.softening) == (0.7, 0.05)
    for name in ("mass", "position", "velocity", "time"):
        assert torch.equal(getattr(back, name), getattr(one, name)), name
    # the same softened dynamics in both codes (REBOUND's energy() leaves softening out, its forces do not)
    from nbtoolkit import get_host
    from nbtoolkit.interop.rebound import integrate_reference
    from nbtoolkit.simulate import simulate

    ref = integrate_reference(one, [2.2])
    host = get_host()
    fine = simulate(one, host.integrators.create("yoshida4"), host.predictors.create("constant", dt=1e-3), t_end=2.2)
    assert np.abs(fine.position[-1] - ref.position[-1]).max() < 1e-8
    with pytest.raises(Exception, match="out of range"):
        to_simulation(batch, index=3)


@needs_rebound
def test_from_a_simulation_built_in_rebound():
    from nbtoolkit.interop.rebound import from_simulation

    sim = rebound.Simulation()
    sim.add(m=1.0)
    sim.add(m=1e-3, a=1.0, e=0.3, inc=0.2)
    state = from_simulation(sim)
    assert state.position.shape == (1, 2, 3) and state.mass.tolist() == [[1.0, 1e-3]]
    assert state_energy(state).item() == pytest.approx(sim.energy(), rel=1e-12)
    assert from_simulation(sim, dim=3).dim == 3
    with pytest.raises(Exception, match="z or vz"):
        from_simulation(sim, dim=2)


def _sim_with(feature: str):
    sim = rebound.Simulation()
    sim.add(m=1.0)
    sim.add(m=1e-3, a=1.0, e=0.1)
    if feature == "test particle":
        sim.add(m=0.0, a=2.0)
    elif feature == "N_active":
        sim.add(m=1e-6, a=2.0)
        sim.N_active = 2
    elif feature == "variational":
        sim.add_variation()
    elif feature == "additional forces":
        sim.additional_forces = lambda s: None
    elif feature == "post-timestep":
        sim.post_timestep_modifications = lambda s: None
    elif feature == "collision":
        sim.collision = "direct"
    elif feature == "gravity":
        sim.gravity = "none"
    return sim


@needs_rebound
@pytest.mark.parametrize("feature, message", [
    ("test particle", r"particle 2 has mass 0.0: test particles \(m = 0\)"),
    ("N_active", r"test particles: N_active = 2 of N = 3"),
    ("variational", r"variational particles"),
    ("additional forces", r"additional forces \(sim.additional_forces\)"),
    ("post-timestep", r"post-timestep modifications"),
    ("collision", r"collision module 'direct'"),
    ("gravity", r"gravity module 'none'"),
])
def test_unsupported_simulations_are_refused_by_name(feature, message):
    from nbtoolkit.interop.rebound import UnsupportedSimulationError, from_simulation

    with pytest.raises(UnsupportedSimulationError, match=message):
        from_simulation(_sim_with(feature))


def test_missing_rebound_names_the_extra(monkeypatch, tmp_path, capsys):
    from nbtoolkit.interop.rebound import ReboundUnavailableError, to_simulation

    monkeypatch.setitem(sys.modules, "rebound", None)  # import rebound now raises ImportError
    with pytest.raises(ReboundUnavailableError, match=r"pip install 'nbtoolkit\[rebound\]'"):
        to_simulation(make_preset("figure-eight").state)
    code, _, err = run_cli(capsys, "reference", "--preset", "figure-eight", "--t-end", "1", "--out", tmp_path / "r.npz")
    assert code == 2 and "nbtoolkit[rebound]" in err and "\n" not in err.strip()


def test_nothing_imports_rebound_at_import_time():
    code = ("import sys; import nbtoolkit, nbtoolkit.cli, nbtoolkit.evaluate, nbtoolkit.reference, "
            "nbtoolkit.interop.rebound, nbtoolkit.training; nbtoolkit.get_host(); "
            "nbtoolkit.cli.build_parser(); assert 'rebound' not in sys.modules, 'rebound imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- the reference command
@needs_rebound
def test_reference_writes_the_simulate_format_at_the_requested_times(tmp_path, capsys):
    state_file, ref_file, sim_file = tmp_path / "s.npz", tmp_path / "ref.npz", tmp_path / "sim.npz"
    state, period = two_body_orbit(e=0.5)
    save_state(state_file, state)
    code, out, _ = run_cli(capsys, "reference", "--state", state_file, "--t-end", period, "--times", 0.5, 1.0,
                           "--out", ref_file)
    assert code == 0 and "force evaluations" in out
    assert run_cli(capsys, "simulate", "--state", state_file, "--predictor", "constant", "--dt", "0.1", "--steps", "2",
                   "--out", sim_file)[0] == 0
    ref, sim = np.load(ref_file), np.load(sim_file)
    assert set(ref.files) == set(sim.files)
    for key in ref.files:
        assert ref[key].ndim == sim[key].ndim, key
    np.testing.assert_allclose(ref["time"][:, 0], [0.0, 0.5, 1.0, period])
    assert ref["position"].shape == (4, 1, 2, 2) and ref["force_evals"][0] > 0
    # a whole period returns to the start; energy conserved to round-off
    np.testing.assert_allclose(ref["position"][-1], ref["position"][0], atol=1e-9)
    assert abs(ref["energy"][-1, 0] / ref["energy"][0, 0] - 1) < 1e-12


@needs_rebound
def test_reference_agrees_with_a_fine_yoshida_run():
    from nbtoolkit import get_host
    from nbtoolkit.interop.rebound import integrate_reference
    from nbtoolkit.simulate import simulate

    system = make_preset("figure-eight")
    ref = integrate_reference(system.state, [2.0])
    host = get_host()
    fine = simulate(system.state, host.integrators.create("yoshida4"), host.predictors.create("constant", dt=1e-3),
                    t_end=2.0)
    assert np.abs(fine.position[-1] - ref.position[-1]).max() < 1e-9


@needs_rebound
def test_reference_bad_input(tmp_path, capsys):
    out = tmp_path / "r.npz"
    code, _, err = run_cli(capsys, "reference", "--preset", "figure-eight", "--t-end", "2", "--times", "3", "--out", out)
    assert code == 2 and "--times" in err
    code, _, err = run_cli(capsys, "reference", "--preset", "pythagorean", "--orbits", "1", "--out", out)
    assert code == 2 and "period" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- evaluate --reference
def _simulated_reference(tmp_path, capsys, *preset_args, orbits="1", name="ref.npz"):
    """A fine yoshida4 run written by simulate serves as reference without rebound."""
    path = tmp_path / name
    code, _, err = run_cli(capsys, "simulate", *preset_args, "--integrator", "yoshida4", "--predictor", "freefall",
                           "--eta", "0.01", "--orbits", orbits, "--out", path, "--quiet")
    assert code == 0, err
    return path


def test_evaluate_reference_adds_error_columns(tmp_path, capsys):
    ref = _simulated_reference(tmp_path, capsys, "--preset", "kepler", "--eccentricity", "0.5")
    code, out, err = run_cli(capsys, "evaluate", "--preset", "kepler", "--eccentricity", "0.5", "--orbits", "1",
                             "--rules", "freefall", "--oracle", "--reference", ref)
    assert code == 0, err
    header, *rows = out.strip().splitlines()
    assert "|dx| vs ref" in header and "|dv| vs ref" in header
    assert len(rows) == 2
    for row in rows:
        dx, dv = (float(v) for v in row.split()[-2:])
        assert 0 < dx < 0.5 and 0 < dv < 0.5


def test_evaluate_reference_api_fills_the_report(tmp_path, capsys):
    from nbtoolkit import get_host
    from nbtoolkit.evaluate import evaluate_predictor
    from nbtoolkit.reference import load_reference

    system = make_preset("kepler", eccentricity=0.5)
    ref = load_reference(_simulated_reference(tmp_path, capsys, "--preset", "kepler", "--eccentricity", "0.5"),
                         system.state)
    host = get_host()
    (report,) = evaluate_predictor(system, host.integrators.create("leapfrog"),
                                   host.predictors.create("freefall", eta=0.02), orbits=1, reference=ref)
    assert 0 < report.position_error < 0.1 and 0 < report.velocity_error < 0.1
    (plain,) = evaluate_predictor(system, host.integrators.create("leapfrog"),
                                  host.predictors.create("freefall", eta=0.02), orbits=1)
    assert plain.position_error is None and plain.as_dict()["velocity_error"] is None


@pytest.mark.parametrize("mismatch, message", [
    (("--preset", "kepler", "--eccentricity", "0.5", "--masses", "1,2"), "has mass"),
    (("--preset", "figure-eight"), "3 bodies"),
    (("--preset", "kepler", "--eccentricity", "0.7"), "initial positions"),
])
def test_evaluate_refuses_a_reference_of_another_system(tmp_path, capsys, mismatch, message):
    ref = _simulated_reference(tmp_path, capsys, *mismatch)
    code, _, err = run_cli(capsys, "evaluate", "--preset", "kepler", "--eccentricity", "0.5", "--orbits", "1",
                           "--rules", "freefall", "--reference", ref)
    assert code == 2 and message in err, err


def test_evaluate_refuses_a_reference_with_another_start_or_end_time(tmp_path, capsys):
    system = make_preset("kepler", eccentricity=0.5)
    state_file = tmp_path / "late.npz"
    save_state(state_file, system.state.replace(time=torch.tensor([1.0], dtype=torch.float64)))
    late = tmp_path / "late_ref.npz"
    assert run_cli(capsys, "simulate", "--state", state_file, "--predictor", "constant", "--dt", "0.01",
                   "--steps", "10", "--out", late)[0] == 0
    code, _, err = run_cli(capsys, "evaluate", "--preset", "kepler", "--eccentricity", "0.5", "--orbits", "1",
                           "--rules", "freefall", "--reference", late)
    assert code == 2 and "starts at time 1.0" in err
    short = _simulated_reference(tmp_path, capsys, "--preset", "kepler", "--eccentricity", "0.5", orbits="0.5")
    code, _, err = run_cli(capsys, "evaluate", "--preset", "kepler", "--eccentricity", "0.5", "--orbits", "1",
                           "--rules", "freefall", "--reference", short)
    assert code == 2 and "no output at the end time" in err
    code, _, err = run_cli(capsys, "evaluate", "--preset", "kepler", "--orbits", "1", "--reference", state_file)
    assert code == 2 and "a state file, not a trajectory file" in err


@needs_rebound
def test_evaluate_against_an_ias15_reference_made_by_the_cli(tmp_path, capsys):
    ref = tmp_path / "ias15.npz"
    assert run_cli(capsys, "reference", "--preset", "kepler", "--eccentricity", "0.9", "--orbits", "2", "--out", ref)[0] == 0
    code, out, err = run_cli(capsys, "evaluate", "--preset", "kepler", "--eccentricity", "0.9", "--orbits", "2",
                             "--rules", "freefall", "symmetric", "--reference", ref)
    assert code == 0, err
    rows = out.strip().splitlines()[1:]
    assert [r.split()[2] for r in rows] == ["freefall", "symmetric"]
    assert all(math.isfinite(float(r.split()[-1])) for r in rows)
