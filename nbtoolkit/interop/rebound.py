"""REBOUND interop: convert between :class:`~nbtoolkit.state.NBodyState` and ``rebound.Simulation``,
and integrate a state with IAS15 as a reference.

Needs the optional extra ``nbtoolkit[rebound]`` (``pip install 'nbtoolkit[rebound]'``); rebound is
imported only when one of these functions is called, never when nbtoolkit is imported.

* :func:`from_simulation` ``(sim) -> NBodyState``: masses, positions, velocities, ``G``, softening and
  time of a simulation as a state with B = 1 (D = 2 when every z and vz is 0, else 3; ``dim``
  overrides). Simulations whose dynamics nbtoolkit cannot reproduce are refused by name: test
  particles (m = 0, or ``N_active`` below ``N``), variational particles, additional forces,
  pre/post-timestep modifications, REBOUNDx effects, extra ODEs, collision or boundary modules and
  gravity modules other than direct summation.
* :func:`to_simulation` ``(state, index=0) -> rebound.Simulation``: system ``index`` of a state as a
  simulation (2-D states get z = vz = 0), integrator IAS15 at its default tolerance.
* :func:`integrate_reference` ``(state, times)``: IAS15 run of every system to each output time,
  as a :class:`~nbtoolkit.simulate.Trajectory` (the format ``simulate`` writes).
"""

from __future__ import annotations

import ctypes
import time as _time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ReboundUnavailableError, UnsupportedSimulationError
from ..physics import state_energy
from ..state import NBodyState

#: what to tell a user who lacks rebound
INSTALL_HINT = "install the optional extra with: pip install 'nbtoolkit[rebound]' (or: pip install rebound)"

#: gravity modules that are Newtonian direct summation (tree is its approximation, with the same softening)
SUPPORTED_GRAVITY = ("basic", "compensated", "tree")


def require_rebound() -> Any:
    """Import and return the ``rebound`` module, or raise :class:`ReboundUnavailableError` saying what to install."""
    try:
        import rebound
    except ImportError as exc:
        raise ReboundUnavailableError(
            f"this needs the REBOUND N-body code, which is not installed ({exc}); {INSTALL_HINT}") from None
    return rebound


def _particle_label(sim: Any, i: int) -> str:
    name = getattr(sim.particles[i], "name", None)
    return f"particle {i}" + (f" ('{name}')" if name else "")


def _is_set(pointer: Any) -> bool:
    try:
        return bool(pointer)
    except Exception:  # pragma: no cover - unknown pointer type: assume set
        return True


def check_supported(sim: Any) -> None:
    """Raise :class:`UnsupportedSimulationError` naming the first feature of ``sim`` nbtoolkit cannot represent."""
    n = int(sim.N)
    if n < 1:
        raise UnsupportedSimulationError("the simulation has no particles")
    if int(getattr(sim, "N_var", 0)) > 0:
        raise UnsupportedSimulationError(
            f"the simulation has {int(sim.N_var)} variational particles (from add_variation); "
            "nbtoolkit carries no variational equations: use a simulation without them"
        )
    n_active = int(sim.N_active)
    if n_active != ctypes.c_size_t(-1).value and n_active < n:
        raise UnsupportedSimulationError(
            f"the simulation has test particles: N_active = {n_active} of N = {n} ({_particle_label(sim, n_active)} "
            "and later feel but exert no gravity); nbtoolkit treats every body as massive: set N_active = -1"
        )
    masses = np.array([sim.particles[i].m for i in range(n)], dtype=np.float64)
    for i, m in enumerate(masses):
        if not m > 0:
            raise UnsupportedSimulationError(
                f"{_particle_label(sim, i)} has mass {m}: test particles (m = 0) are not supported; "
                "nbtoolkit needs every mass > 0"
            )
    checks = (
        ("_additional_forces", "additional forces (sim.additional_forces)"),
        ("_pre_timestep_modifications", "pre-timestep modifications (sim.pre_timestep_modifications)"),
        ("_post_timestep_modifications", "post-timestep modifications (sim.post_timestep_modifications)"),
    )
    for attr, what in checks:
        if _is_set(getattr(sim, attr, None)):
            raise UnsupportedSimulationError(f"the simulation has {what}; nbtoolkit integrates Newtonian gravity only")
    if getattr(sim, "extras", None):
        raise UnsupportedSimulationError(
            "the simulation has REBOUNDx effects attached; nbtoolkit integrates Newtonian gravity only")
    if int(getattr(sim, "_N_odes", 0)) > 0:
        raise UnsupportedSimulationError(f"the simulation has {int(sim._N_odes)} additional ODEs; nbtoolkit cannot carry them")
    gravity = str(sim.gravity)
    if gravity not in SUPPORTED_GRAVITY:
        raise UnsupportedSimulationError(
            f"the simulation uses gravity module '{gravity}'; supported: {', '.join(SUPPORTED_GRAVITY)}"
        )
    for module in ("collision", "boundary"):
        value = str(getattr(sim, module))
        if value != "none":
            raise UnsupportedSimulationError(
                f"the simulation uses {module} module '{value}'; nbtoolkit has no {module} handling: set sim.{module} = 'none'"
            )


def from_simulation(sim: Any, *, dim: int | None = None, dtype: torch.dtype = torch.float64) -> NBodyState:
    """The state (B = 1) of a rebound simulation: masses, positions, velocities, G, softening, time.

    ``dim`` None gives D = 2 when every z and vz is exactly 0, else D = 3; 2 drops z (it must
    then be 0). Refuses simulations nbtoolkit cannot represent (see :func:`check_supported`).
    """
    require_rebound()
    check_supported(sim)
    n = int(sim.N)
    xyz, vxyz = np.zeros((n, 3)), np.zeros((n, 3))
    sim.serialize_particle_data(xyz=xyz, vxvyvz=vxyz)
    mass = np.array([sim.particles[i].m for i in range(n)], dtype=np.float64)
    planar = not (xyz[:, 2].any() or vxyz[:, 2].any())
    if dim is None:
        dim = 2 if planar else 3
    if dim not in (2, 3):
        raise ConfigError(f"dim must be 2, 3 or None; got {dim!r}")
    if dim == 2 and not planar:
        raise UnsupportedSimulationError("dim = 2 was asked for, but some particles have z or vz != 0")
    return NBodyState.from_arrays(
        mass, xyz[:, :dim], vxyz[:, :dim], np.array([float(sim.t)]), G=float(sim.G), softening=float(sim.softening),
        dtype=dtype,
    )


def to_simulation(state: NBodyState, index: int = 0) -> Any:
    """System ``index`` of ``state`` as a new ``rebound.Simulation`` (IAS15, default tolerance).

    Carries masses, positions, velocities (z = vz = 0 for 2-D states), G, softening and time;
    padding bodies (mass 0, in mixed training batches) are left out.
    """
    rebound = require_rebound()
    if not isinstance(index, int) or not -state.batch_size <= index < state.batch_size:
        raise ConfigError(f"index {index!r} is out of range for a batch of {state.batch_size} systems")
    mass, x, v = (value.detach().cpu().numpy()[index] for value in (state.mass, state.position, state.velocity))
    sim = rebound.Simulation()
    sim.G = float(state.G)
    sim.softening = float(state.softening)
    sim.t = float(state.time[index])
    sim.integrator = "ias15"
    for i in range(state.n_bodies):
        if mass[i] == 0:  # a padding body of a mixed training batch (nbtoolkit.state): not a particle
            continue
        pos = [float(c) for c in x[i]] + [0.0] * (3 - state.dim)
        vel = [float(c) for c in v[i]] + [0.0] * (3 - state.dim)
        sim.add(m=float(mass[i]), x=pos[0], y=pos[1], z=pos[2], vx=vel[0], vy=vel[1], vz=vel[2])
    return sim


class ForceCounter:
    """Counts REBOUND's force evaluations through an additional-forces callback that adds nothing."""

    def __init__(self, sim: Any) -> None:
        self.count = 0

        def tick(_sim_pointer: Any) -> None:
            self.count += 1

        sim.additional_forces = tick
        sim.force_is_velocity_dependent = 0


def integrate_state(sim: Any, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Integrate ``sim`` to time ``t`` exactly (IAS15 shortens its last step); return xyz, vxyz (N, 3)."""
    sim.integrate(t, exact_finish_time=1)
    n = int(sim.N)
    xyz, vxyz = np.zeros((n, 3)), np.zeros((n, 3))
    sim.serialize_particle_data(xyz=xyz, vxvyvz=vxyz)
    return xyz, vxyz


def integrate_reference(state: NBodyState, times: Sequence[float] | np.ndarray, *, count_force_evals: bool = True):
    """Integrate every system of ``state`` with IAS15 (default tolerance) to each of ``times``.

    ``times`` are absolute, increasing and later than every system's start time. Returns a
    :class:`~nbtoolkit.simulate.Trajectory` whose rows are the start and the output times (``dt``
    the spacing, ``rel_dE`` the energy change between outputs, ``force_evals`` IAS15's force
    evaluations, counted through a callback unless ``count_force_evals`` is False).
    """
    from ..simulate import Trajectory

    require_rebound()
    out = np.asarray(times, dtype=np.float64).reshape(-1)
    if out.size == 0:
        raise ConfigError("give at least one output time")
    if not np.all(np.isfinite(out)) or np.any(np.diff(out) <= 0):
        raise ConfigError(f"output times must be finite and strictly increasing; got {out.tolist()[:6]}")
    t0 = state.time.detach().numpy()
    if not np.all(out[0] > t0):
        raise ConfigError(f"output times must be later than the start time {float(t0.max())}; the first is {out[0]}")
    B, N, D = state.position.shape
    S = out.size
    position = np.zeros((S + 1, B, N, D))
    velocity = np.zeros((S + 1, B, N, D))
    position[:], velocity[:] = state.position.detach().numpy(), state.velocity.detach().numpy()  # padding stays put
    evals = np.zeros(B, dtype=np.int64)
    start = _time.perf_counter()
    real = state.mass.detach().numpy() > 0
    for b in range(B):
        sim = to_simulation(state, b)
        counter = ForceCounter(sim) if count_force_evals else None
        for k, t in enumerate(out, start=1):
            xyz, vxyz = integrate_state(sim, float(t))
            position[k, b, real[b]], velocity[k, b, real[b]] = xyz[:, :D], vxyz[:, :D]
        evals[b] = counter.count if counter is not None else 0
    wall = _time.perf_counter() - start
    time = np.concatenate([t0[None, :], np.repeat(out[:, None], B, 1)])
    mass = state.mass.detach().numpy().copy()
    energy = np.stack([
        state_energy(NBodyState(torch.as_tensor(mass), torch.as_tensor(position[k]), torch.as_tensor(velocity[k]),
                                torch.as_tensor(time[k]), state.G, state.softening)).numpy()
        for k in range(S + 1)
    ])
    rel = np.abs(np.diff(energy, axis=0)) / np.abs(energy[:-1])
    return Trajectory(
        time=time, position=position, velocity=velocity, mass=mass, dt=np.diff(time, axis=0), rel_dE=rel,
        energy=energy, guarded=np.zeros((S, B), dtype=bool), force_evals=evals, G=state.G,
        softening=state.softening, wall_time=wall, info={"integrator": "ias15", "epsilon": 1e-9},
    )


__all__ = [
    "INSTALL_HINT", "ReboundUnavailableError", "UnsupportedSimulationError", "check_supported", "from_simulation",
    "integrate_reference", "require_rebound", "to_simulation",
]
