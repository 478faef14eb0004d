"""The integrator contract that plugins implement, and its run-time check.

An integrator advances every system of a batched :class:`~nbtoolkit.state.NBodyState` by its
own timestep ``dt`` (shape (B,), > 0) and returns a new state whose ``time`` is ``time + dt``.
It must not modify its input, must be differentiable with respect to ``dt`` and the state,
and declares its convergence ``order`` and ``force_evals_per_step`` (force evaluations per step
in steady state, i.e. counting a reused acceleration cache as free).

An integrator that takes every acceleration from :func:`nbtoolkit.physics.accelerations_at` (at
each stage's positions and time) or :func:`nbtoolkit.physics.state_accelerations` sees an external
field at full order and declares ``field_aware = True``; nbtoolkit steps any other integrator
through a splitting around the field (:func:`nbtoolkit.field.advance`), so it works unchanged.

Loops that step states with a plugin's integrator call :func:`checked_step` instead of
``integrator.step``. It runs the step and checks the result:

* it is an :class:`~nbtoolkit.state.NBodyState` with the input's shapes and dtype, the same
  masses, ``G`` and softening, and an acceleration cache that is absent or of shape (B, N, D);
* every system's ``time`` advanced by its ``dt`` (to round-off);
* no position, velocity or cached acceleration became NaN or infinite out of a finite state and a
  finite dt, **unless the step's own scale makes a floating-point overflow the expected outcome**.

The last rule separates two things that look alike. A dt far too large for a system legitimately
gives a wrong, even absurd, state; the energy gate exists to reject such steps (their relative
energy error is reported as inf) and the run goes on. But such a state stays finite: Newtonian
gravity only overflows when a length or speed reaches the range where the force law's r^3
overflows (or two unsoftened bodies land within ~1e-100 of each other, which no real step does).
So for each system with a non-finite result the check estimates the step's scale from the input,
``|x|max + dt |v|max + dt^2 |a|max`` and ``|v|max + dt |a|max``; if both are below
``finfo(dtype).max ** (1/3)`` (about 5.6e102 in float64), a correct step could not have
overflowed and the integrator is at fault. Beyond that, the non-finite state is passed on as the
blow-up it is.

Any other exception raised by ``step`` (a plugin bug such as a shape error) is re-raised as a
:class:`~nbtoolkit.errors.PluginError` naming the integrator, its plugin and where it came from
(nbtoolkit's own errors and out-of-memory errors pass unchanged). The integrator is named by the
identity its registry stamped on it (:func:`nbtoolkit.registry.describe`), or by its class when
it was built outside the registries.

Usage::

    from nbtoolkit.contracts import checked_step
    new_state = checked_step(integrator, state, dt)  # instead of integrator.step(state, dt)
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from ..errors import PluginError
from ..field import advance
from ..physics import accelerations
from ..registry import describe
from ..state import NBodyState
from .calls import call_plugin

#: tolerance on the new time, in units of finfo(dtype).eps * (|t| + |dt|)
TIME_TOLERANCE_EPS = 1000.0


class Integrator(abc.ABC):
    """Base class of integrator plugins. Subclasses set the class attributes and :meth:`step`."""

    #: global order of accuracy p: the error after a fixed time span scales as dt**p
    order: int = 0
    #: force (acceleration) evaluations per step in steady state
    force_evals_per_step: int = 1
    #: whether the map is symplectic at fixed dt
    symplectic: bool = False
    #: whether step() evaluates forces with accelerations_at / state_accelerations, so that an
    #: external field on the state is part of every stage (else nbtoolkit splits the step around it)
    field_aware: bool = False

    @abc.abstractmethod
    def step(self, state: NBodyState, dt: Tensor) -> NBodyState:
        """Advance ``state`` by ``dt`` (B,) and return the new state."""

    def energy_error_coefficient(self, state: NBodyState, dt: Tensor) -> Tensor | None:
        """C (B,) such that one step of ``dt`` (B,) from ``state`` makes a relative energy error |dE/E| of
        about C dt^(order + 1), from the integrator's own leading error term; None where the integrator has
        no such estimate (the default). A dt predictor may use it to keep a step's error under a bound
        (the ``learned`` predictor does, see :mod:`plugins.error_cap`)."""
        return None

    def energy_error_coefficients(self, state: NBodyState, dt: Tensor, doublings: int) -> Tensor | None:
        """C (doublings + 1, B): row k the :meth:`energy_error_coefficient` of a step of 2^k ``dt`` (B,), so that a
        predictor can see whether the estimate holds over longer steps (:mod:`plugins.error_cap`); None where the
        integrator has no estimate. The default asks :meth:`energy_error_coefficient` for every row as one batch; an
        integrator whose estimate samples points along the step may share them between the rows instead."""
        scales = torch.pow(2.0, torch.arange(doublings + 1, dtype=dt.dtype, device=dt.device)).unsqueeze(1)
        batch = state if doublings == 0 else NBodyState.cat([state] * (doublings + 1))
        coefficients = self.energy_error_coefficient(batch, (scales * dt.unsqueeze(0)).reshape(-1))
        return None if coefficients is None else coefficients.view(doublings + 1, -1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order}, force_evals_per_step={self.force_evals_per_step})"


def checked_step(integrator: Integrator, state: NBodyState, dt: Tensor) -> NBodyState:
    """Advance ``state`` by ``dt`` (B,) with ``integrator`` and check the result (see the module doc).

    Returns the new state unchanged. Raises :class:`PluginError` naming the integrator, the plugin
    that registered it and its module or distribution (:func:`~nbtoolkit.registry.describe`), and
    what was wrong. Keeps the autograd graph: the checks only read values.
    """
    result = call_plugin(integrator, "integrator", "in step()", lambda: advance(integrator, state, dt))
    problem = step_problem(state, dt, result)
    if problem is not None:
        raise PluginError(f"{describe(integrator, 'integrator')} broke the integrator contract: {problem}")
    return result


def step_problem(state: NBodyState, dt: Tensor, result: object) -> str | None:
    """What is wrong with ``result`` as the step of ``state`` by ``dt`` (B,), or None if nothing."""
    if not isinstance(result, NBodyState):
        return f"step() returned {type(result).__name__}, not an NBodyState"
    for field in ("mass", "position", "velocity", "time"):
        before, after = getattr(state, field), getattr(result, field)
        if not isinstance(after, Tensor):
            return f"returned {field} of type {type(after).__name__}, not a tensor"
        if after.shape != before.shape:
            return f"returned {field} of shape {tuple(after.shape)} for an input of shape {tuple(before.shape)}"
        if after.dtype != before.dtype:
            return f"returned {field} of dtype {after.dtype} for an input of dtype {before.dtype}"
    acc = result.acceleration
    if acc is not None and (not isinstance(acc, Tensor) or acc.shape != state.position.shape):
        shape = tuple(acc.shape) if isinstance(acc, Tensor) else type(acc).__name__
        return f"returned an acceleration cache of shape {shape}; expected {tuple(state.position.shape)} or None"
    if result.G != state.G or result.softening != state.softening:
        return (f"changed G or softening from ({state.G}, {state.softening}) to ({result.G}, {result.softening})")
    if result.mass is not state.mass and not torch.equal(result.mass.detach(), state.mass.detach()):
        b = int(torch.nonzero((result.mass.detach() != state.mass.detach()).any(-1))[0, 0])
        return f"changed the masses of system {b}"
    return _time_problem(state, dt, result) or _finiteness_problem(state, dt, result)


def _time_problem(state: NBodyState, dt: Tensor, result: NBodyState) -> str | None:
    t0, t1, h = state.time.detach(), result.time.detach(), dt.detach()
    expected = t0 + h
    if torch.equal(t1, expected):  # the usual case, one comparison
        return None
    tol = TIME_TOLERANCE_EPS * torch.finfo(t0.dtype).eps * (t0.abs() + h.abs())
    wrong = ~((t1 - expected).abs() <= tol) & torch.isfinite(expected)
    if bool(wrong.any()):
        b = int(torch.nonzero(wrong)[0, 0])
        return (f"system {b} has time {t1[b].item()!r} after a step of dt = {h[b].item()!r} from time "
                f"{t0[b].item()!r}; expected {expected[b].item()!r}")
    return None


def _finiteness_problem(state: NBodyState, dt: Tensor, result: NBodyState) -> str | None:
    total = result.position.detach().sum() + result.velocity.detach().sum()
    if result.acceleration is not None:
        total = total + result.acceleration.detach().sum()
    if math.isfinite(total.item()):  # any NaN or inf makes the sum non-finite: one reduction in the usual case
        return None
    outputs = {"position": result.position, "velocity": result.velocity}
    if result.acceleration is not None:
        outputs["acceleration cache"] = result.acceleration
    bad = torch.zeros_like(state.time, dtype=torch.bool)
    for value in outputs.values():
        bad |= ~torch.isfinite(value.detach()).flatten(1).all(-1)
    if not bool(bad.any()):
        return None
    x, v, h = state.position.detach(), state.velocity.detach(), dt.detach()
    finite_input = torch.isfinite(x).flatten(1).all(-1) & torch.isfinite(v).flatten(1).all(-1) & torch.isfinite(h)
    suspects = torch.nonzero(bad & finite_input).squeeze(1)
    if suspects.numel() == 0:
        return None
    if state.acceleration is not None:
        a = state.acceleration.detach()[suspects]
    else:
        a = accelerations(state.mass.detach()[suspects], x[suspects], state.G, state.softening)
    xs, vs, hs = x[suspects].abs().flatten(1).amax(-1), v[suspects].abs().flatten(1).amax(-1), h[suspects].abs()
    amax = a.abs().flatten(1).amax(-1)
    length_scale = xs + hs * vs + hs * hs * amax
    speed_scale = vs + hs * amax
    limit = torch.finfo(x.dtype).max ** (1.0 / 3.0)
    in_range = torch.isfinite(amax) & (length_scale < limit) & (speed_scale < limit)
    if not bool(in_range.any()):
        return None  # the dt is so large that overflow is the expected outcome: a blow-up, not a fault
    b = int(suspects[torch.nonzero(in_range)[0, 0]])
    field = next(f for f, value in outputs.items() if not bool(torch.isfinite(value[b].detach()).all()))
    sample = outputs[field][b].detach().flatten()
    first_bad = sample[~torch.isfinite(sample)][0].item()
    return (f"returned a non-finite {field} ({first_bad}) for system {b} from a finite state with dt = "
            f"{h[b].item()!r}, a step whose scale cannot overflow")
