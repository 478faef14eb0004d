"""Long-run accuracy: how energy and phase errors grow for fixed, adaptive, time-symmetric and learned dt.

Two problems, each run without any guard:

* Kepler e = 0.9 (``kepler`` preset, apocentre start) for 1,000 periods (``--quick``: 100);
* the figure-eight (``figure-eight`` preset) for 100 time units (about 16 periods).

Methods, each at its own force-evaluation count (printed):

* ``constant dt``: the leapfrog at constant dt, as many force evaluations as the tuned free-fall;
* ``free-fall (tuned)``: the ``freefall`` rule, eta tuned by bisection over one period so that
  every step passes the energy gate |dE/E| <= 2e-4 (:func:`nbtoolkit.evaluate.tune_scale`);
* ``symmetric free-fall``: the ``symmetric`` wrapper (Hut, Makino & McMillan 1995) around
  ``freefall`` with its default solver, ``--iterations`` secant-accelerated iterations (default
  2), eta calibrated so that its force evaluations, iterations included, equal the tuned
  free-fall's (within 1-2 %);
* ``symmetric, fixed point``: the same with the plain fixed-point iteration,
  ``--fixed-point-iterations`` of them (default 3), at the same force evaluations;
* ``learned`` and ``symmetric learned`` when ``--checkpoint`` is given or a predictor named
  ``learned`` is registered (rows skipped otherwise): the trained dt, and the symmetric wrapper
  around it with its dt scaled (calibrated like eta above) so that both cost the same;
* ``IAS15``: REBOUND's adaptive 15th-order integrator at its default tolerance, when rebound is
  installed (force evaluations counted through a no-op additional-forces callback).

Recorded over time, at log-spaced sample times (for Kepler, the first step past each sampled
whole period): the energy error |E(t) - E0| / |E0| and the relative phase error, in orbits. For
Kepler it is |lambda(t) - lambda_exact(t)| / 2 pi with lambda the osculating mean longitude
(unwrapped step by step) and lambda_exact = lambda0 + n t; for the figure-eight it is the
distance in phase between the state and the choreography, |phi(t) - t / T|, with phi found by
matching the configuration against one period of a reference orbit (IAS15, or a fine yoshida4 run
without rebound). The growth of each error is fitted as err ~ t^p over the last 1.5 decades of
its running maximum: p < 0.25 bounded, p < 0.75 random walk (t^1/2), else secular (t).

Output: a table, a log-log plot (``--plot``, default docs/longrun.png; matplotlib is a benchmark
dependency only: ``pip install matplotlib``), and the requirement: after the Kepler run the
symmetric free-fall's final |dE/E| is at least 10x smaller than the tuned free-fall's at equal
force evaluations (exit status 1 if not, in a full run).

Run: ``python benchmarks/bench_longrun.py [--quick] [--checkpoint model.pt] [--iterations 3]
[--periods 1000] [--t-end 100] [--plot docs/longrun.png]``. ``--quick`` takes about 2 minutes on
a 2-core machine, the full run about 10-15.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nbtoolkit import NBToolkitError, get_host, state_energy
from nbtoolkit.evaluate import ScaledPredictor, tune_scale
from nbtoolkit.presets import FIGURE_EIGHT_PERIOD, make_preset
from nbtoolkit.simulate import iter_steps, simulate, time_remaining
from nbtoolkit.state import NBodyState, System

ROOT = Path(__file__).resolve().parents[1]
GATE = 2e-4
#: error levels treated as zero when fitting growth: float64 round-off of the energy, and phase
#: resolution (Kepler: round-off of the longitude; figure-eight: the interpolated configuration match)
ENERGY_FLOOR = 1e-15
PHASE_FLOOR = 1e-9


@dataclass
class Run:
    """One method on one problem: sampled times, energy and phase errors, and the cost."""

    label: str
    setting: str
    force_evals: int
    steps: int
    times: np.ndarray
    energy_error: np.ndarray
    phase_error: np.ndarray
    final_energy_error: float
    wall: float
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- phases
def kepler_elements(state: NBodyState) -> tuple[float, float]:
    """(true longitude theta, mean longitude lambda minus theta) of the relative orbit, radians."""
    x = (state.position[0, 1] - state.position[0, 0]).numpy()
    v = (state.velocity[0, 1] - state.velocity[0, 0]).numpy()
    mu = state.G * float(state.mass[0].sum())
    r = math.hypot(*x)
    h = x[0] * v[1] - x[1] * v[0]
    ex, ey = v[1] * h / mu - x[0] / r, -v[0] * h / mu - x[1] / r
    e = math.hypot(ex, ey)
    theta = math.atan2(x[1], x[0])
    if not e < 1:  # the integration unbound the orbit: no mean longitude
        return theta, float("nan")
    f = theta - math.atan2(ey, ex)
    E = 2 * math.atan2(math.sqrt(1 - e) * math.sin(f / 2), math.sqrt(1 + e) * math.cos(f / 2))
    M = E - e * math.sin(E)
    return theta, math.remainder(M - f, 2 * math.pi)


class KeplerPhase:
    """Unwrapped mean longitude of a two-body orbit, followed step by step, against the exact one."""

    def __init__(self, state: NBodyState, period: float) -> None:
        theta, diff = kepler_elements(state)
        self.theta = self.unwrapped = theta
        self.lambda0, self.t0, self.n = theta + diff, float(state.time[0]), 2 * math.pi / period

    def step(self, state: NBodyState) -> None:
        x = (state.position[0, 1] - state.position[0, 0])
        theta = math.atan2(float(x[1]), float(x[0]))
        self.unwrapped += math.remainder(theta - self.theta, 2 * math.pi)
        self.theta = theta

    def error(self, state: NBodyState) -> float:
        _, diff = kepler_elements(state)
        lam = self.unwrapped + diff
        exact = self.lambda0 + self.n * (float(state.time[0]) - self.t0)
        return abs(lam - exact) / (2 * math.pi)


class ChoreographyPhase:
    """Phase of a figure-eight state along one period of a reference orbit (configuration matching)."""

    def __init__(self, loop_positions: np.ndarray, period: float) -> None:
        self.loop = loop_positions.reshape(loop_positions.shape[0], -1)  # (M, N*D), one period
        self.period = period

    def step(self, state: NBodyState) -> None:
        pass

    def error(self, state: NBodyState) -> float:
        x = state.position[0].numpy().reshape(-1)
        d2 = ((self.loop - x) ** 2).sum(-1)
        m = d2.shape[0]
        j = int(np.argmin(d2))
        a, b, c = d2[(j - 1) % m], d2[j], d2[(j + 1) % m]  # parabola through the neighbours: sub-sample phase
        shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c > 0 else 0.0
        phi = (j + shift) / m
        expected = float(state.time[0]) / self.period
        return abs(math.remainder(phi - expected, 1.0))


def figure_eight_loop(samples: int = 4000) -> np.ndarray:
    """Positions over one period of the figure-eight, from IAS15 or a fine yoshida4 run."""
    state = make_preset("figure-eight").state
    times = np.arange(1, samples) * FIGURE_EIGHT_PERIOD / samples
    try:
        from nbtoolkit.interop.rebound import integrate_reference

        traj = integrate_reference(state, times, count_force_evals=False)
        return traj.position[:, 0]
    except Exception:  # rebound missing: a fine fixed-step 4th-order run
        host = get_host()
        per = 10
        traj = simulate(state, host.integrators.create("yoshida4"),
                        host.predictors.create("constant", dt=FIGURE_EIGHT_PERIOD / (samples * per)),
                        steps=samples * per - 1)
        return traj.position[::per, 0]


# ----------------------------------------------------------------------------- runs
def sample_times(t0: float, end: float, period: float, count: int, whole_periods: bool) -> np.ndarray:
    span = end - t0
    raw = np.geomspace(period / 4 if not whole_periods else period, span, count)
    if whole_periods:
        raw = np.unique(np.round(raw / period)) * period
    return t0 + np.unique(raw)


def run_predictor(label: str, setting: str, state: NBodyState, predictor: Any, end: float, samples: np.ndarray,
                  phase: Any, integrator: Any) -> Run:
    """Step with ``predictor`` to ``end`` (the last step lands on it), recording at the first step past each sample."""
    e0 = float(state_energy(state)[0])
    end_t = torch.tensor([end], dtype=state.dtype)
    stepper = iter_steps(state, integrator, predictor, dt_limit=lambda s: time_remaining(end_t, s.time))
    times, energy, phases = [], [], []
    evals, steps, k = 0.0, 0, 0
    start = time.perf_counter()
    for result in stepper:
        s = result.state
        steps += 1
        evals += float(result.force_evals[0])
        phase.step(s)
        t = float(s.time[0])
        while k < samples.size and t >= samples[k] * (1 - 1e-12):
            times.append(t)
            energy.append(abs(float(state_energy(s)[0]) - e0) / abs(e0))
            phases.append(phase.error(s))
            k += 1
        if float(time_remaining(end_t, s.time)[0]) == 0:
            break
    final = abs(float(state_energy(s)[0]) - e0) / abs(e0)
    if not times or times[-1] < end * (1 - 1e-12):
        times.append(float(s.time[0]))
        energy.append(final)
        phases.append(phase.error(s))
    return Run(label, setting, int(round(evals)), steps, np.array(times), np.array(energy), np.array(phases), final,
               time.perf_counter() - start)


def run_ias15(state: NBodyState, end: float, samples: np.ndarray, phase_error: Callable[[NBodyState], float]) -> Run:
    from nbtoolkit.interop.rebound import ForceCounter, integrate_state, to_simulation

    sim = to_simulation(state)
    counter = ForceCounter(sim)
    e0 = float(state_energy(state)[0])
    times, energy, phases = [], [], []
    start = time.perf_counter()
    outputs = list(samples[samples < end * (1 - 1e-12)]) + [end]
    for t in outputs:
        xyz, vxyz = integrate_state(sim, float(t))
        s = state.replace(position=torch.as_tensor(xyz[None, :, : state.dim]),
                          velocity=torch.as_tensor(vxyz[None, :, : state.dim]),
                          time=torch.tensor([float(t)], dtype=state.dtype))
        times.append(float(t))
        energy.append(abs(float(state_energy(s)[0]) - e0) / abs(e0))
        phases.append(phase_error(s))
    return Run("IAS15", "REBOUND, default tolerance", counter.count, int(sim.steps_done), np.array(times),
               np.array(energy), np.array(phases), energy[-1], time.perf_counter() - start)


def growth(times: np.ndarray, err: np.ndarray, floor: float) -> tuple[float, str]:
    """Exponent p of err ~ t^p fitted to the running maximum over the last 1.5 decades of time, and its
    class; errors that stay within 10x of ``floor`` (round-off, or the phase-matching resolution) are
    reported as such."""
    if not np.all(np.isfinite(err)):
        return float("nan"), "unbound"
    envelope = np.maximum.accumulate(np.maximum(err, floor))
    keep = times >= times[-1] / 10**1.5
    if keep.sum() < 3:
        return float("nan"), "-"
    if envelope[keep].max() <= 10 * floor:
        return float("nan"), "at floor"
    p = float(np.polyfit(np.log(times[keep]), np.log(envelope[keep]), 1)[0])
    kind = "bounded" if p < 0.25 else "t^1/2" if p < 0.75 else "t" if p < 1.5 else f"t^{p:.1f}"
    return p, kind


# ----------------------------------------------------------------------------- problems
def calibrate_eta(state: NBodyState, period: float, integrator: Any, build: Callable[[float], Any], eta: float,
                  target_evals: float) -> float:
    """Rescale eta until one period costs ``target_evals`` force evaluations (steps scale as 1 / eta)."""
    per = torch.tensor([period], dtype=state.dtype)
    for _ in range(3):
        evals = simulate(state, integrator, build(eta), orbits=1, period=per).summary()["force_evals"]
        eta *= evals / target_evals
    return eta


def learned_predictor(args: argparse.Namespace, host: Any) -> Any | None:
    if args.checkpoint:
        from nbtoolkit.training import load_predictor

        return load_predictor(args.checkpoint, host=host)
    if "learned" in host.predictors:
        try:
            return host.predictors.create("learned")
        except NBToolkitError as exc:
            print(f"the registered 'learned' predictor cannot be built ({exc})", file=sys.stderr)
    return None


def run_problem(name: str, state: NBodyState, period: float, end: float, whole_periods: bool, phase_factory: Callable[[], Any],
                args: argparse.Namespace, learned: Any | None) -> list[Run]:
    host = get_host()
    leapfrog = host.integrators.create("leapfrog")
    k = args.iterations
    t0 = float(state.time[0])
    samples = sample_times(t0, end, period, args.samples, whole_periods)
    per = torch.tensor([period], dtype=state.dtype)
    span = end - t0
    runs: list[Run] = []

    def log(run: Run) -> None:
        print(f"  {name:<12} {run.label:<22} {run.force_evals:>9,d} force evals  final |dE/E| {run.final_energy_error:.3e}"
              f"  ({run.wall:.0f} s)", file=sys.stderr, flush=True)

    eta_t = tune_scale(System(state, per), leapfrog, host.predictors.create("freefall", eta=1.0), orbits=1,
                       threshold=GATE)
    plain = run_predictor("free-fall (tuned)", f"eta = {eta_t:.4g}", state, host.predictors.create("freefall", eta=eta_t),
                          end, samples, phase_factory(), leapfrog)
    log(plain)
    dt = span / plain.force_evals
    const = run_predictor("constant dt", f"dt = {dt:.4g} (equal evals)", state, host.predictors.create("constant", dt=dt),
                          end, samples, phase_factory(), leapfrog)
    log(const)
    target = plain.force_evals * period / span

    def symmetric(eta: float) -> Any:
        return host.predictors.create("symmetric", base="freefall", eta=eta, iterations=k)

    eta_s = calibrate_eta(state, period, leapfrog, symmetric, (k + 1) * eta_t, target)
    sym = run_predictor("symmetric free-fall", f"eta = {eta_s:.4g}, {k} secant iterations", state, symmetric(eta_s),
                        end, samples, phase_factory(), leapfrog)
    log(sym)
    runs += [const, plain, sym]
    kf = args.fixed_point_iterations
    if kf > 0:
        def fixed_point(eta: float) -> Any:
            return host.predictors.create("symmetric", base="freefall", eta=eta, iterations=kf, solver="fixed-point")

        eta_f = calibrate_eta(state, period, leapfrog, fixed_point, (kf + 1) * eta_t, target)
        fp = run_predictor("symmetric, fixed point", f"eta = {eta_f:.4g}, {kf} iterations", state, fixed_point(eta_f),
                           end, samples, phase_factory(), leapfrog)
        log(fp)
        runs.append(fp)
    if learned is not None:
        lrn = run_predictor("learned", "checkpoint" if args.checkpoint else "'learned'", state, learned, end, samples,
                            phase_factory(), leapfrog)
        log(lrn)
        def wrapped(scale: float) -> Any:
            return ScaledPredictor(host.predictors.create("symmetric", base=learned, iterations=k),
                                   torch.tensor([scale], dtype=state.dtype))

        scale = calibrate_eta(state, period, leapfrog, wrapped, float(k + 1), lrn.force_evals * period / span)
        slrn = run_predictor("symmetric learned", f"dt x {scale:.3g}, {k} secant iterations", state, wrapped(scale),
                             end, samples, phase_factory(), leapfrog)
        log(slrn)
        runs += [lrn, slrn]
    try:
        import rebound  # noqa: F401
    except ImportError:
        print(f"  {name}: rebound is not installed; no IAS15 row (pip install 'nbtoolkit[rebound]')", file=sys.stderr)
    else:
        runs.append(run_ias15(state, end, samples, _phase_error_of(phase_factory)))
        log(runs[-1])
    return runs


def _phase_error_of(phase_factory: Callable[[], Any]) -> Callable[[NBodyState], float]:
    """Phase error for outputs that are not consecutive steps (IAS15): Kepler unwraps by the exact count."""
    phase = phase_factory()
    if isinstance(phase, KeplerPhase):
        def kepler_error(s: NBodyState) -> float:
            theta, diff = kepler_elements(s)
            exact = phase.lambda0 + phase.n * (float(s.time[0]) - phase.t0)
            return abs(math.remainder(theta + diff - exact, 2 * math.pi)) / (2 * math.pi)

        return kepler_error
    return phase.error


# ----------------------------------------------------------------------------- report
def table(results: dict[str, list[Run]]) -> str:
    head = (f"{'problem':<13} {'method':<22} {'setting':<34} {'force evals':>11} {'final |dE/E|':>12} "
            f"{'dE growth':>14} {'final phase':>11} {'phase growth':>14}")
    lines = [head, "-" * len(head)]
    for name, runs in results.items():
        for r in runs:
            pe, ke = growth(r.times, r.energy_error, ENERGY_FLOOR)
            pp, kp = growth(r.times, r.phase_error, PHASE_FLOOR)
            ge = ke if math.isnan(pe) else f"{ke} ({pe:.2f})"
            gp = kp if math.isnan(pp) else f"{kp} ({pp:.2f})"
            lines.append(
                f"{name:<13} {r.label:<22} {r.setting:<34} {r.force_evals:>11,d} {r.final_energy_error:>12.2e} "
                f"{ge:>14} {r.phase_error[-1]:>11.2e} {gp:>14}"
            )
    return "\n".join(lines)


def plot(results: dict[str, list[Run]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 8), squeeze=False)
    for col, (name, runs) in enumerate(results.items()):
        for r in runs:
            label = f"{r.label} ({r.force_evals:,} evals)"
            axes[0, col].loglog(r.times, np.maximum(r.energy_error, 1e-17), label=label)
            axes[1, col].loglog(r.times, np.maximum(r.phase_error, 1e-12), label=label)  # NaN (unbound) is not drawn
        axes[0, col].set_title(f"{name}: energy error")
        axes[0, col].set_ylabel("|E(t) - E0| / |E0|")
        axes[1, col].set_title(f"{name}: phase error")
        axes[1, col].set_ylabel("phase error (orbits)")
        for row in (0, 1):
            axes[row, col].set_xlabel("time")
            axes[row, col].grid(True, which="major", alpha=0.3)
        axes[0, col].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 Kepler periods instead of 1,000 (about 2 minutes)")
    parser.add_argument("--periods", type=float, help="Kepler periods (default 1000, 100 with --quick)")
    parser.add_argument("--t-end", type=float, default=100.0, help="figure-eight end time (default 100)")
    parser.add_argument("--iterations", type=int, default=2,
                        help="iterations of the symmetric rows, default solver (secant; default 2)")
    parser.add_argument("--fixed-point-iterations", type=int, default=3,
                        help="iterations of the plain fixed-point symmetric row (default 3; 0 leaves the row out)")
    parser.add_argument("--checkpoint", help="trained dt predictor: adds the learned and symmetric learned rows")
    parser.add_argument("--samples", type=int, default=60, help="log-spaced sample times per run (default 60)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "longrun.png", help="where to save the plot")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    periods = args.periods or (100.0 if args.quick else 1000.0)
    host = get_host()
    learned = learned_predictor(args, host)
    if learned is None:
        print("no --checkpoint and no 'learned' predictor registered: learned rows skipped", file=sys.stderr)
    started = time.perf_counter()

    kepler = make_preset("kepler", eccentricity=0.9)
    k_period = float(kepler.period[0])
    results = {
        "Kepler e=0.9": run_problem(
            "Kepler", kepler.state, k_period, float(kepler.state.time[0]) + periods * k_period, True,
            lambda: KeplerPhase(kepler.state, k_period), args, learned),
    }
    eight = make_preset("figure-eight")
    loop = figure_eight_loop()
    results["figure-eight"] = run_problem(
        "figure-eight", eight.state, FIGURE_EIGHT_PERIOD, float(eight.state.time[0]) + args.t_end, False,
        lambda: ChoreographyPhase(loop, FIGURE_EIGHT_PERIOD), args, learned)

    print(f"\nLong runs: Kepler e = 0.9 for {periods:g} periods, figure-eight for {args.t_end:g} time units "
          f"(leapfrog for every row but IAS15; {time.perf_counter() - started:.0f} s)\n")
    print(table(results))
    if not args.no_plot:
        plot(results, args.plot)
        print(f"\nplot: {args.plot}")

    rows = {r.label: r for r in results["Kepler e=0.9"]}
    plain, sym = rows["free-fall (tuned)"], rows["symmetric free-fall"]
    ratio = plain.final_energy_error / max(sym.final_energy_error, 1e-300)
    evals_ratio = sym.force_evals / plain.force_evals
    ok = ratio >= 10 and abs(evals_ratio - 1) < 0.05
    print(f"\nrequirement (Kepler e = 0.9, {periods:g} periods, equal force evaluations: {sym.force_evals:,} vs "
          f"{plain.force_evals:,}): symmetric free-fall final |dE/E| {sym.final_energy_error:.2e} vs plain "
          f"{plain.final_energy_error:.2e}, {ratio:.3g}x smaller (>= 10x required): {'met' if ok else 'NOT met'}")
    if "learned" in rows:
        lrn, slrn = rows["learned"], rows["symmetric learned"]
        print(f"learned dt: plain {lrn.final_energy_error:.2e} ({lrn.force_evals:,} evals), symmetric "
              f"{slrn.final_energy_error:.2e} ({slrn.force_evals:,} evals), "
              f"{lrn.final_energy_error / max(slrn.final_energy_error, 1e-300):.3g}x smaller")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
