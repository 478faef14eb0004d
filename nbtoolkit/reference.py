"""Reference trajectories: ``nbtoolkit reference`` and the ``--reference`` column of ``evaluate``.

``nbtoolkit reference --state s.npz --t-end T --out ref.npz [--times t1 t2 ...]`` integrates a
state with REBOUND's IAS15 at its default tolerance (optional extra ``nbtoolkit[rebound]``) and
writes the start and each output time in the trajectory format of ``simulate``
(:meth:`nbtoolkit.simulate.Trajectory.save`). ``--preset`` and ``--orbits`` work as in ``simulate``.

``nbtoolkit evaluate --reference ref.npz`` compares where each predictor's run ends with the
reference at the same time: the position error max_i |x_i - x_i,ref| and the velocity error
max_i |v_i - v_i,ref| over the bodies, in the units of the state. A reference for another system
(a different number of systems, bodies or dimensions, other masses, G, softening, start time or
initial positions and velocities), or one without an output at the run's end time, is an error.
Nothing here imports rebound except the ``reference`` command itself.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .cli_system import add_system_arguments, load_system
from .errors import ConfigError, ReferenceMismatchError, StateFileError
from .state import NBodyState

#: relative tolerance for matching times, masses and initial conditions
MATCH_RTOL = 1e-9
TRAJECTORY_KEYS = ("time", "position", "velocity", "mass")


@dataclass(frozen=True)
class Reference:
    """A loaded reference trajectory: time (S+1, B), position and velocity (S+1, B, N, D), mass (B, N)."""

    path: str
    time: np.ndarray
    position: np.ndarray
    velocity: np.ndarray
    mass: np.ndarray
    G: float
    softening: float

    @property
    def batch_size(self) -> int:
        return int(self.mass.shape[0])

    def system(self, b: int) -> Reference:
        """The reference of system ``b`` alone (B = 1)."""
        s = slice(b, b + 1)
        return Reference(self.path, self.time[:, s], self.position[:, s], self.velocity[:, s], self.mass[s], self.G,
                         self.softening)

    def check_matches(self, state: NBodyState) -> None:
        """Raise :class:`ReferenceMismatchError` unless this reference starts from ``state``."""
        where = f"reference {self.path}"
        data = {name: getattr(state, name).detach().cpu().numpy() for name in ("mass", "time", "position", "velocity")}
        B, N, D = state.position.shape
        if self.position.shape[1:] != (B, N, D):
            raise ReferenceMismatchError(
                f"{where} holds {self.position.shape[1]} system(s) of {self.position.shape[2]} bodies in "
                f"{self.position.shape[3]}-D, but the evaluated state has {B} system(s) of {N} bodies in {D}-D"
            )
        if not np.allclose(self.mass, data["mass"], rtol=MATCH_RTOL, atol=0):
            b, i = np.argwhere(~np.isclose(self.mass, data["mass"], rtol=MATCH_RTOL, atol=0))[0]
            raise ReferenceMismatchError(
                f"{where}: body {i} of system {b} has mass {float(self.mass[b, i])!r} in the reference but "
                f"{float(data['mass'][b, i])!r} in the evaluated state"
            )
        for name, mine, theirs in (("G", self.G, state.G), ("softening", self.softening, state.softening)):
            if not np.isclose(mine, theirs, rtol=MATCH_RTOL, atol=0):
                raise ReferenceMismatchError(f"{where} has {name} = {mine!r}; the evaluated state has {theirs!r}")
        t0 = data["time"]
        if not np.allclose(self.time[0], t0, rtol=MATCH_RTOL, atol=MATCH_RTOL):
            b = int(np.argmax(np.abs(self.time[0] - t0)))
            raise ReferenceMismatchError(
                f"{where} starts at time {float(self.time[0, b])!r} (system {b}); the evaluated state starts at {float(t0[b])!r}"
            )
        for name in ("position", "velocity"):
            mine, theirs = getattr(self, name)[0], data[name]
            scale = max(float(np.abs(theirs).max()), 1e-300)
            if not np.allclose(mine, theirs, rtol=MATCH_RTOL, atol=MATCH_RTOL * scale):
                b = int(np.argmax(np.abs(mine - theirs).reshape(B, -1).max(-1)))
                raise ReferenceMismatchError(
                    f"{where}: the initial {name}s of system {b} differ from the evaluated state's "
                    f"(largest difference {float(np.abs(mine - theirs).max()):.3g}); it was made for another system"
                )

    def index_at(self, end: np.ndarray | Tensor) -> int:
        """Row of the output time equal (to round-off) to each system's ``end`` (B,), or an error."""
        end = np.asarray(end.detach().cpu().numpy() if isinstance(end, Tensor) else end, dtype=np.float64).reshape(-1)
        tol = MATCH_RTOL * np.maximum(np.abs(end), 1.0)
        hits = np.all(np.abs(self.time - end[None, :]) <= tol[None, :], axis=1)
        if not hits.any():
            shown = ", ".join(f"{t:.10g}" for t in self.time[1:, 0][:8]) + (" ..." if self.time.shape[0] > 9 else "")
            raise ReferenceMismatchError(
                f"reference {self.path} has no output at the end time {end[0]:.10g} of the evaluated run "
                f"(its output times: {shown or 'none'}); make it with --t-end {float(end[0])!r} or the same --orbits"
            )
        return int(np.nonzero(hits)[0][-1])

    def errors(self, final: NBodyState) -> list[tuple[float, float]]:
        """Per system (position error, velocity error): max over bodies of |x - x_ref|, |v - v_ref| at ``final.time``."""
        k = self.index_at(final.time)
        dx = np.linalg.norm(final.position.detach().cpu().numpy() - self.position[k], axis=-1).max(-1)
        dv = np.linalg.norm(final.velocity.detach().cpu().numpy() - self.velocity[k], axis=-1).max(-1)
        return [(float(a), float(b)) for a, b in zip(dx, dv)]


def load_reference(path: str | Path, state: NBodyState | None = None) -> Reference:
    """Read a trajectory file (as written by ``simulate`` or ``nbtoolkit reference``); check it starts from ``state``."""
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"{path}: no such reference file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise StateFileError(f"{path}: not a readable .npz trajectory ({type(exc).__name__}: {exc})") from None
    with archive:
        missing = [k for k in TRAJECTORY_KEYS if k not in archive.files]
        if missing:
            raise StateFileError(
                f"{path}: not a trajectory file: missing key(s) {', '.join(missing)} (found: {', '.join(archive.files)}); "
                "write one with `nbtoolkit reference` or `nbtoolkit simulate --out`"
            )
        try:
            time, position, velocity, mass = (np.asarray(archive[k], dtype=np.float64) for k in TRAJECTORY_KEYS)
            G = float(archive["G"]) if "G" in archive.files else 1.0
            softening = float(archive["softening"]) if "softening" in archive.files else 0.0
        except (ValueError, TypeError) as exc:
            raise StateFileError(f"{path}: unreadable trajectory data ({exc})") from None
    if position.ndim in (2, 3) and time.ndim <= 1:
        raise StateFileError(f"{path}: is a state file, not a trajectory file; write a reference with `nbtoolkit reference`")
    if position.ndim != 4 or time.shape != position.shape[:2] or velocity.shape != position.shape \
            or mass.shape != position.shape[1:3]:
        raise StateFileError(
            f"{path}: inconsistent trajectory shapes: time {time.shape}, position {position.shape}, "
            f"velocity {velocity.shape}, mass {mass.shape}; expected (S+1, B), (S+1, B, N, D), (S+1, B, N, D), (B, N)"
        )
    ref = Reference(str(path), time, position, velocity, mass, G, softening)
    if state is not None:
        ref.check_matches(state)
    return ref


def error_columns(reference: Reference | None, final: NBodyState) -> list[dict[str, float | None]]:
    """Per system ``{"position_error": ..., "velocity_error": ...}`` (None without a reference)."""
    if reference is None:
        return [{"position_error": None, "velocity_error": None} for _ in range(final.batch_size)]
    return [{"position_error": dx, "velocity_error": dv} for dx, dv in reference.errors(final)]


# ----------------------------------------------------------------------------- the `reference` command
def add_reference_parser(sub: Any) -> None:
    """Register ``nbtoolkit reference`` on the CLI's subparsers."""
    from . import validate

    p = sub.add_parser("reference", help="integrate a state with REBOUND's IAS15 and write a reference trajectory")
    add_system_arguments(p)
    span = p.add_argument_group("run length (give one)").add_mutually_exclusive_group(required=True)
    span.add_argument("--t-end", type=validate.arg_number(), help="end time (the last output)")
    span.add_argument("--orbits", type=validate.arg_number(low=0, low_open=True),
                      help="number of orbital periods (presets with a known period)")
    p.add_argument("--times", type=validate.arg_number(), nargs="+",
                   help="output times before the end (the end time is always written)")
    p.add_argument("--out", type=Path, required=True, help="write the trajectory to this .npz file")
    p.set_defaults(func=cmd_reference)


def cmd_reference(args: argparse.Namespace) -> int:
    from . import validate
    from .interop.rebound import integrate_reference, require_rebound

    require_rebound()
    validate.writable_file(args.out, "--out")
    system = load_system(args)
    state = system.state
    t0 = state.time.detach().numpy()
    if args.orbits is not None:
        if system.period is None:
            raise ConfigError("--orbits needs a preset with a known period; give --t-end instead")
        if not args.orbits > 0:
            raise ConfigError(f"--orbits must be > 0; got {args.orbits}")
        ends = t0 + args.orbits * system.period.detach().numpy()
        if not np.allclose(ends, ends[0], rtol=1e-15, atol=0):
            raise ConfigError("--orbits gives a different end time per system; give --t-end instead")
        end = float(ends[0])
    else:
        end = float(args.t_end)
    if not (np.isfinite(end) and end > float(t0.max())):
        raise ConfigError(f"the end time must be later than the start time {float(t0.max())}; got {end}")
    times = sorted(set(args.times or []))
    bad = [t for t in times if not (np.isfinite(t) and float(t0.max()) < t <= end)]
    if bad:
        raise ConfigError(f"--times must lie after the start time {float(t0.max())} "
                             f"and not after the end time {end}; got {bad[0]}")
    if not times or times[-1] < end:
        times.append(end)
    traj = integrate_reference(state, times)
    traj.save(args.out)
    summary = traj.summary()
    print("\n".join([
        f"systems            {summary['systems']}",
        f"outputs            {len(times)} (last at t = {end:.10g})",
        f"force evaluations  {summary['force_evals']} (IAS15, default tolerance)",
        f"final |dE/E|       {summary['final_rel_dE']:.3e}",
        f"wall time          {summary['wall_time']:.2f} s",
        f"trajectory         {args.out}",
    ]))
    return 0
