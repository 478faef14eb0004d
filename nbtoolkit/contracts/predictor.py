"""The dt-predictor contract that plugins implement, and its run-time check.

A predictor is a :class:`torch.nn.Module` mapping a state (and, optionally, a window of the
last K accepted states, a :class:`History`) to a timestep per system, ``dt`` of shape (B,),
finite and > 0, in the time unit of the state. Classical rules have no parameters; learned ones
do. Every dt a predictor answers goes through :func:`checked_dt`. A predictor that takes trial
steps to choose dt implements two optional methods, reached through :func:`bind_integrator` and
:func:`pop_force_evals`, and one that adapts to the errors its steps make implements a third,
reached through :func:`observe_step` (see below).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..errors import InvalidTimestepError
from ..registry import describe
from ..state import NBodyState


class History(NamedTuple):
    """The last K accepted states of each system, newest last, zero-padded where missing.

    position, velocity: (B, K, N, D); mask: (B, K) bool, True where the entry is real.
    """

    position: Tensor
    velocity: Tensor
    mask: Tensor

    @staticmethod
    def empty(state: NBodyState, length: int) -> History:
        B, N, D = state.position.shape
        z = torch.zeros(B, length, N, D, dtype=state.dtype, device=state.device)
        return History(z, z.clone(), torch.zeros(B, length, dtype=torch.bool, device=state.device))

    def push(self, state: NBodyState) -> History:
        """Append ``state`` as the newest entry, dropping the oldest (returns a new History)."""
        if self.position.shape[1] == 0:
            return self
        pos = torch.cat([self.position[:, 1:], state.position.detach().unsqueeze(1)], 1)
        vel = torch.cat([self.velocity[:, 1:], state.velocity.detach().unsqueeze(1)], 1)
        ones = torch.ones(self.mask.shape[0], 1, dtype=torch.bool, device=self.mask.device)
        return History(pos, vel, torch.cat([self.mask[:, 1:], ones], 1))

    def index(self, idx: Tensor | slice) -> History:  # type: ignore[override]  # rows, like NBodyState.index
        """The rows ``idx`` of the batch (not tuple.index: a History is indexed like a state)."""
        return History(self.position[idx], self.velocity[idx], self.mask[idx])


class DtPredictor(torch.nn.Module):
    """Base class of dt predictors. ``history_len`` is K, the number of past states it reads.

    ``time_even`` is True for a predictor whose dt is even under time reversal, dt(x, v) = dt(x, -v) for
    every state (it reads positions, masses and even functions of the velocities only, such as |v| or the
    magnitude of the jerk). The ``symmetric`` wrapper needs such a base to be time-reversible, and makes
    one of any other (see :mod:`plugins.symmetric`); a test checks every registered predictor that declares it.

    ``level_base`` (B,) is set by a predictor whose last call raised its own dt above a more cautious one
    where it checked that it may (the error cap's further raise, :mod:`plugins.error_cap`): that more cautious
    dt, which a controller's level multiplies (:mod:`plugins.feedback`). None (the default): the dt returned.
    ``dt_ceiling`` (B,) is set by a predictor that knows from its own checks the longest dt it vouches for (the
    error cap: its cap on the integrator's estimate, over the longest estimated step): a controller that
    lengthens the predictor's dt keeps it under that. None (the default): no ceiling.
    """

    history_len: int = 0
    time_even: bool = False
    level_base: Tensor | None = None
    dt_ceiling: Tensor | None = None

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def upgrade_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Weights read from a file, in today's layout: a predictor whose buffers or parameters
        changed shape between versions converts older files here (the default keeps them as they are)."""
        return state_dict


def checked_dt(dt: Tensor, state: NBodyState, predictor: object) -> Tensor:
    """Return ``dt``, what ``predictor`` answered for ``state``, if it has shape (B,) and is finite
    and > 0; else raise :class:`~nbtoolkit.errors.InvalidTimestepError` naming the predictor, the
    plugin that registered it and its distribution (:func:`~nbtoolkit.registry.describe`)."""
    B = state.batch_size
    if not isinstance(dt, Tensor):
        raise InvalidTimestepError(f"{describe(predictor, 'dt predictor')} returned {type(dt).__name__}, not a tensor")
    if dt.shape != (B,):
        raise InvalidTimestepError(
            f"{describe(predictor, 'dt predictor')} returned dt of shape {tuple(dt.shape)}; expected ({B},)"
        )
    bad = ~(torch.isfinite(dt) & (dt > 0))
    if bool(bad.any()):
        b = int(torch.nonzero(bad)[0, 0])
        raise InvalidTimestepError(
            f"{describe(predictor, 'dt predictor')} returned dt = {dt[b].item()} for system {b}; "
            "dt must be finite and > 0"
        )
    return dt


# ----------------------------------------------------------------------------- predictors that take part in the run
# A predictor may step the state itself to choose dt (the ``symmetric`` wrapper does: it evaluates
# its base rule at a trial end point), or adapt to the errors of the steps it chose (the ``feedback``
# wrapper does). Three optional methods, on the predictor or any of its sub-modules, connect it to
# the run: ``bind_integrator(integrator)`` is told, at the start of every run, which integrator the
# run steps with; ``pop_force_evals()`` returns the force evaluations (B,) its last call spent (or
# None) and resets the count, so that simulate's and evaluate's figures include them; and
# ``observe_step(dt, error)`` is told, after every step, the dt (B,) each system took and the
# error (B,) the run's gate measured for it (the guard's retry when the guard retried).
def _hooks(predictor: object, method: str) -> list[Callable[..., Any]]:
    """The bound ``method`` of every part of ``predictor`` (itself and, for a module, its sub-modules)
    that has one."""
    parts = predictor.modules() if isinstance(predictor, torch.nn.Module) else [predictor]
    hooks = (getattr(part, method, None) for part in parts)
    return [hook for hook in hooks if callable(hook)]


class RunHooks:
    """The run methods of every part of a predictor, looked up once: a run calls :meth:`pop_force_evals` and
    :meth:`observe_step` at every step (looking them up walks every sub-module: 6 % of a two-body run's wall
    time with ``learned``), and a predictor's parts do not change while it runs."""

    def __init__(self, predictor: object) -> None:
        self._bind = _hooks(predictor, "bind_integrator")
        self._pop = _hooks(predictor, "pop_force_evals")
        self._observe = _hooks(predictor, "observe_step")

    def bind_integrator(self, integrator: object) -> None:
        """Tell every part that takes trial steps which integrator the run uses."""
        for bind in self._bind:
            bind(integrator)

    def pop_force_evals(self, batch_size: int) -> Tensor | None:
        """Force evaluations (B,) spent inside the predictor's last call (all its parts), or None if none."""
        total: Tensor | None = None
        for pop in self._pop:
            count = pop()
            if count is not None:
                count = torch.as_tensor(count, dtype=torch.float64).expand(batch_size)
                total = count if total is None else total + count
        return total

    def observe_step(self, dt: Tensor, error: Tensor) -> None:
        """Tell every part that adapts to its steps' errors the dt (B,) each system took and the gate's error
        (B,) of that step."""
        for observe in self._observe:
            observe(dt, error)


def bind_integrator(predictor: object, integrator: object) -> None:
    """:meth:`RunHooks.bind_integrator` of ``predictor``, for one call outside a run's loop."""
    RunHooks(predictor).bind_integrator(integrator)


def pop_force_evals(predictor: object, batch_size: int) -> Tensor | None:
    """:meth:`RunHooks.pop_force_evals` of ``predictor``, for one call outside a run's loop."""
    return RunHooks(predictor).pop_force_evals(batch_size)


def observe_step(predictor: object, dt: Tensor, error: Tensor) -> None:
    """:meth:`RunHooks.observe_step` of ``predictor``, for one call outside a run's loop."""
    RunHooks(predictor).observe_step(dt, error)
