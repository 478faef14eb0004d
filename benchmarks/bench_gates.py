"""What the gate changes: steps and accuracy under ``energy`` and ``pair-energy``, judged by IAS15.

Two systems in which the whole-system energy hides a member's orbit:

* ``planets``: a star with four planets (family ``planets``, seed 4, masses 1e-5 to 1e-2 of the
  star's, eccentricities up to 0.1) whose innermost planet, 2e-5 of the star, holds 0.34 % of the
  energy; run for ``--inner-orbits`` periods of that planet (default 20; ``--quick`` 6);
* ``triple``: a hierarchical triple made of a planet with a moon (mass ratio 0.0123, e = 0.05) and
  a star 1,000 times the pair's mass 1.2 times beyond the Mardling-Aarseth stability limit (family
  ``triple``, seed 1): the moon's orbit about the planet holds 1.1 % of the energy. Run for ``--outer-orbits`` periods of the
  outer orbit (default 1, about 13 orbits of the moon; ``--quick`` 0.3).

Methods, with the leapfrog, under each gate (threshold 2e-4):

* ``freefall`` and ``aarseth`` tuned: eta tuned by bisection so that every step of the run passes
  the gate (:func:`nbtoolkit.evaluate.tune_scale` with that gate), then run unguarded;
* ``learned`` guarded: the pretrained ``learned`` predictor with the guard of ``simulate`` under the
  gate (failed steps retried at half the dt; retries count as force evaluations);
* ``learned`` tuned: the learned dt times a factor tuned like eta, unguarded.

Every run is judged afterwards the same way: the largest per-step error of each gate along it
(both measured on the recorded steps, whichever gate chose them), the final |dE/E| of the whole
system, and two errors at the end against REBOUND's IAS15 at its default tolerance (``rebound``
is required; ``pip install 'nbtoolkit[rebound]'``): the worst relative error of a member's orbit,
max_i |E_i - E_i,ref| / |E_i,ref| over the bound bodies with E_i the Kepler energy of body i and
its companion (as ``pair-energy`` pairs them, on the IAS15 state), which measures the shape and
size of every orbit whatever the phase; and the position error max_i |x_i - x_i,ref|, which
saturates at the size of an orbit once a member is a whole phase off. IAS15's own force
evaluations are printed for scale.

Run: ``python benchmarks/bench_gates.py [--quick] [--json out.json]``; the full run takes about
3 minutes on a 2-core machine, ``--quick`` under one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from nbtoolkit import NBodyState, System, get_host
from nbtoolkit.evaluate import ScaledPredictor, tune_scale
from nbtoolkit.families import draw_family
from nbtoolkit.gate import Gate
from nbtoolkit.physics import to_center_of_mass_frame
from nbtoolkit.reference import Reference
from nbtoolkit.simulate import Trajectory, simulate
from nbtoolkit.threads import apply_thread_policy
from plugins.gates import companions, kepler_energy_and_power

THRESHOLD = 2e-4
GATES = ("energy", "pair-energy")
#: steps judged at once when measuring a gate along a recorded run
MEASURE_CHUNK = 2048


@dataclass(frozen=True)
class Problem:
    """A benchmark problem: its system's state (B = 1), the time unit its run is measured in and the span."""

    name: str
    state: NBodyState
    unit: float  # the period the span is counted in
    span: float  # in units
    unit_name: str


@dataclass
class Row:
    system: str
    method: str
    gate: str
    setting: str
    steps: int
    force_evals: int
    max_energy_error: float  # largest per-step |dE/E| of the whole system along the run
    max_pair_error: float  # largest per-step error of the pair-energy gate along the run
    final_rel_dE: float
    orbit_error: float  # max over bound bodies of |E_i - E_i,ref| / |E_i,ref| at the end (Kepler energy with its companion)
    position_error: float
    wall: float


def kepler_period(total_mass: float, dx: torch.Tensor, dv: torch.Tensor, G: float) -> float:
    """Osculating period of a bound pair of total mass ``total_mass`` with relative position and velocity (D,)."""
    a = 1 / (2 / dx.norm().item() - dv.square().sum().item() / (G * total_mass))
    return 2 * math.pi * math.sqrt(a**3 / (G * total_mass))


def planets_system(inner_orbits: float) -> Problem:
    draw = draw_family("planets", 1, torch.Generator().manual_seed(4), planets=4, eccentricity=[0.0, 0.1],
                       mass_ratio=[1e-5, 1e-2])[0]
    state = to_center_of_mass_frame(NBodyState.from_arrays(draw.mass, draw.position, draw.velocity))
    m, x, v = state.mass[0], state.position[0], state.velocity[0]
    k = 1 + int((x[1:] - x[:1]).norm(dim=-1).argmin())  # the innermost planet
    return Problem("planets", state, kepler_period(float(m[0] + m[k]), x[k] - x[0], v[k] - v[0], state.G), inner_orbits,
                   "inner periods")


def triple_system(outer_orbits: float) -> Problem:
    draw = draw_family("triple", 1, torch.Generator().manual_seed(1), inner_eccentricity=0.05, inner_mass_ratio=0.0123,
                       outer_mass_ratio=1000.0, outer_eccentricity=0.0167, period_ratio=3.0, scale=1.0, dim=3)[0]
    state = NBodyState.from_arrays(draw.mass, draw.position, draw.velocity)
    m, x, v = state.mass[0], state.position[0], state.velocity[0]
    w = (m[:2] / m[:2].sum()).unsqueeze(-1)  # the outer orbit: the star about the inner pair's centre of mass
    period = kepler_period(float(m.sum()), x[2] - (w * x[:2]).sum(0), v[2] - (w * v[:2]).sum(0), state.G)
    return Problem("triple", state, period, outer_orbits, "outer periods")


def gate_errors(gate: Gate, traj: Trajectory) -> np.ndarray:
    """The gate's error of every recorded step of system 0 (S,), measured in batches of steps."""
    S = traj.dt.shape[0]
    out = np.zeros(S)
    mass = torch.as_tensor(traj.mass[:1])
    for s0 in range(0, S, MEASURE_CHUNK):
        s1 = min(S, s0 + MEASURE_CHUNK)

        def states(a: int, b: int) -> NBodyState:
            k = b - a
            return NBodyState(mass.expand(k, -1), torch.as_tensor(traj.position[a:b, 0]),
                              torch.as_tensor(traj.velocity[a:b, 0]), torch.as_tensor(traj.time[a:b, 0]),
                              traj.G, traj.softening)

        with torch.no_grad():
            out[s0:s1] = gate.error(states(s0, s1), states(s0 + 1, s1 + 1)).numpy()
    return out


def orbit_error(final: NBodyState, exact: NBodyState) -> float:
    """max_i |E_i - E_i,exact| / |E_i,exact| over the bodies bound to their companion in ``exact``,
    with the companions of ``exact`` for both states."""
    partner, inner, weight = companions(exact)
    e, _ = kepler_energy_and_power(final, partner, inner, weight)
    e_exact, _ = kepler_energy_and_power(exact, partner, inner, weight)
    bound = e_exact < 0
    return float(((e - e_exact).abs() / e_exact.abs())[bound].max())


def judge(system: Problem, method: str, gate: str, setting: str, traj: Trajectory, reference: Reference,
          gates: dict[str, Gate], wall: float) -> Row:
    final = system.state.replace(position=torch.as_tensor(traj.position[-1]),
                                 velocity=torch.as_tensor(traj.velocity[-1]), time=torch.as_tensor(traj.time[-1]))
    (dx, _), = reference.errors(final)
    exact = final.replace(position=torch.as_tensor(reference.position[-1]),
                          velocity=torch.as_tensor(reference.velocity[-1]))
    e0, e1 = traj.energy[0, 0], traj.energy[-1, 0]
    return Row(system.name, method, gate, setting, traj.steps, int(traj.force_evals[0]),
               float(gate_errors(gates["energy"], traj).max()), float(gate_errors(gates["pair-energy"], traj).max()),
               float(abs(e1 - e0) / abs(e0)), orbit_error(final, exact), dx, wall)


def run_system(system: Problem, host: Any, log: Any) -> tuple[list[Row], dict[str, Any]]:
    from nbtoolkit.interop.rebound import integrate_reference

    leapfrog = host.integrators.create("leapfrog")
    gates = {name: host.gates.create(name) for name in GATES}
    period = torch.tensor([system.unit], dtype=torch.float64)
    timed = System(system.state, period)
    end = float(system.state.time[0]) + system.span * system.unit
    start = time.perf_counter()
    ias = integrate_reference(system.state, [end])
    reference = Reference("IAS15", ias.time, ias.position, ias.velocity, ias.mass, ias.G, ias.softening)
    info = {"ias15_force_evals": int(ias.force_evals[0]), "ias15_wall": time.perf_counter() - start,
            "unit": system.unit, "span": system.span, "unit_name": system.unit_name, "masses": system.state.mass[0].tolist()}
    rows = []
    for gate in GATES:
        for rule in ("freefall", "aarseth"):
            t = time.perf_counter()
            eta = tune_scale(timed, leapfrog, host.predictors.create(rule, eta=1.0), orbits=system.span,
                             threshold=THRESHOLD, gate=gates[gate])
            traj = simulate(system.state, leapfrog, host.predictors.create(rule, eta=eta), orbits=system.span,
                            period=period)
            rows.append(judge(system, f"{rule} (tuned)", gate, f"eta={eta:.3g}", traj, reference, gates,
                              time.perf_counter() - t))
            print(f"  {system.name} {gate} {rule}: eta {eta:.3g}, {traj.steps} steps", file=log, flush=True)
        learned = host.predictors.create("learned", feedback=False)  # its controller steers to the energy gate
        t = time.perf_counter()
        traj = simulate(system.state, leapfrog, learned, orbits=system.span, period=period, guard_threshold=THRESHOLD,
                        gate=gates[gate])
        rows.append(judge(system, "learned (guarded)", gate, f"{int(traj.guarded.sum())} guarded", traj, reference,
                          gates, time.perf_counter() - t))
        t = time.perf_counter()
        factor = tune_scale(timed, leapfrog, learned, orbits=system.span, threshold=THRESHOLD,
                            high=4.0, gate=gates[gate])
        scaled = ScaledPredictor(learned, torch.tensor([factor], dtype=torch.float64))
        traj = simulate(system.state, leapfrog, scaled, orbits=system.span, period=period)
        rows.append(judge(system, "learned (tuned)", gate, f"x{factor:.3g}", traj, reference, gates,
                          time.perf_counter() - t))
        print(f"  {system.name} {gate} learned: done", file=log, flush=True)
    return rows, info


def table(rows: list[Row], infos: dict[str, dict[str, Any]]) -> str:
    head = ("| system | method | gate | setting | steps | force evals | max step \\|dE/E\\| | max step pair \\|dE/E\\| "
            "| final \\|dE/E\\| | worst orbit \\|dE/E\\| vs IAS15 | \\|dx\\| vs IAS15 |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r.system} | {r.method} | {r.gate} | {r.setting} | {r.steps:,} | {r.force_evals:,} | "
                     f"{r.max_energy_error:.1e} | {r.max_pair_error:.1e} | {r.final_rel_dE:.1e} | {r.orbit_error:.1e} | "
                     f"{r.position_error:.1e} |")
    notes = [f"{name}: {info['span']:g} {info['unit_name']} (unit {info['unit']:.4g}); IAS15 "
             f"{info['ias15_force_evals']:,} force evaluations" for name, info in infos.items()]
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (about a minute)")
    parser.add_argument("--inner-orbits", type=float, help="planets: run length in inner periods (default 20)")
    parser.add_argument("--outer-orbits", type=float, help="triple: run length in outer periods (default 1)")
    parser.add_argument("--json", help="also write the rows and run information to this file")
    args = parser.parse_args(argv)
    apply_thread_policy()
    try:
        import rebound  # noqa: F401
    except ImportError:
        print("bench_gates needs rebound as the judge: pip install 'nbtoolkit[rebound]'", file=sys.stderr)
        return 2
    host = get_host()
    systems = [planets_system(args.inner_orbits or (6.0 if args.quick else 20.0)),
               triple_system(args.outer_orbits or (0.3 if args.quick else 1.0))]
    rows, infos = [], {}
    for system in systems:
        print(f"{system.name}: masses {[f'{m:.3g}' for m in system.state.mass[0].tolist()]}", file=sys.stderr)
        got, info = run_system(system, host, sys.stderr)
        rows += got
        infos[system.name] = info
    print(table(rows, infos))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": [asdict(r) for r in rows], "systems": infos}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
