"""Training systems that have dispersed start again from their initial state.

A training trajectory runs for ``epochs x steps_per_epoch`` accepted steps. A system whose
bodies all fly apart (a binary ionised by a fast intruder, an unbound cluster) keeps lengthening
its timestep as its closest pair separates, so it grows geometrically without bound: it teaches
nothing after the first few steps, fills the replay buffer with trivial states and finally
overflows float64. Such a system is restarted: at the start of an epoch, every system whose
closest pair free-fall time has grown :data:`DISPERSED_GROWTH` times beyond its value in the
initial state takes its initial state again (its history is cleared). A bound system never
comes near that growth; its trajectory is untouched.
"""

from __future__ import annotations

from torch import Tensor

from ..physics import closest_free_fall_time
from ..predictor import History
from ..state import NBodyState

#: a system has dispersed when its closest pair free-fall time is this many times its initial one
DISPERSED_GROWTH = 1e4


def dispersal_limit(initial: NBodyState) -> Tensor:
    """(B,) the closest pair free-fall time beyond which each system of ``initial`` counts as dispersed:
    :data:`DISPERSED_GROWTH` times its value in ``initial``. A loop that tests the same systems at every
    step computes it once and passes it to :func:`has_dispersed` instead of the initial state."""
    return DISPERSED_GROWTH * closest_free_fall_time(initial)


def has_dispersed(state: NBodyState, initial: NBodyState | Tensor) -> Tensor:
    """(B,) bool: whether each system's closest pair free-fall time has grown :data:`DISPERSED_GROWTH` times
    beyond its value in ``initial`` (the same systems, or their :func:`dispersal_limit`); a NaN counts as
    dispersed."""
    limit = dispersal_limit(initial) if isinstance(initial, NBodyState) else initial
    return ~(closest_free_fall_time(state) <= limit)


def restart_dispersed(state: NBodyState, initial: NBodyState, history: History | None,
                      limit: Tensor | None = None) -> tuple[NBodyState, History | None, int]:
    """(state, history, count): the systems of ``state`` that have dispersed (see the module
    docstring) replaced by their rows of ``initial`` (the same systems, (B,)), their history
    entries (if any) marked missing; ``count`` is how many were restarted. ``limit`` is
    :func:`dispersal_limit` of ``initial`` where the caller keeps it."""
    idx = has_dispersed(state, initial if limit is None else limit).nonzero().squeeze(-1)
    if idx.numel() == 0:
        return state, history, 0
    if history is not None:
        mask = history.mask.clone()
        mask[idx] = False
        history = History(history.position, history.velocity, mask)
    return state.scatter(idx, initial.index(idx)), history, int(idx.numel())
