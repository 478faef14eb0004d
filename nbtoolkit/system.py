"""A batch of systems with the orbital period of each: :class:`System`, what presets build and what
runs measured in orbits take. Re-exported by :mod:`nbtoolkit.state`, where it used to live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import InvalidStateError

if TYPE_CHECKING:
    from .state import NBodyState


@dataclass(frozen=True, eq=False)
class System:
    """A batch of systems to run, with the orbital period of each when it is known.

    ``state``: the :class:`NBodyState` (B systems); ``period``: (B,) tensor in the state's time unit,
    or None for systems without a known period (a Plummer sphere, a state file). Runs measured in
    orbits (``evaluate``, ``stop_at_period`` training) need the period. Presets return one
    (:class:`~nbtoolkit.presets.PresetSystem`, which adds the preset's name and parameters).
    """

    state: NBodyState
    period: Tensor | None = None

    def __post_init__(self) -> None:
        period = self.period
        if period is None:
            return
        B = self.state.batch_size
        if not isinstance(period, Tensor) or tuple(period.shape) != (B,):
            shown = tuple(period.shape) if isinstance(period, Tensor) else type(period).__name__
            raise InvalidStateError(f"system: the period must be a tensor of shape (B,) = ({B},); got {shown}")
        bad = ~(torch.isfinite(period) & (period > 0))
        if bool(bad.any()):
            b = int(torch.nonzero(bad)[0, 0])
            raise InvalidStateError(f"system: the period must be finite and > 0; system {b} has {period[b].item()}")

    @property
    def batch_size(self) -> int:
        return self.state.batch_size

    def index(self, idx: int | slice | Sequence[int] | Tensor) -> System:
        """The systems ``idx`` with their periods (see :meth:`NBodyState.index`); a plain :class:`System`."""
        from .state import _batch_index  # here, not at the top: nbtoolkit.state imports this module

        period = None if self.period is None else self.period[_batch_index(idx)]
        return System(self.state.index(idx), period)
