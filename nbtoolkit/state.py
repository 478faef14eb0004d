"""The batched N-body state: one type for a single system (B = 1) and for batches of systems.

Shapes (B systems, N bodies, D = 2 or 3 dimensions):

* ``mass``      (B, N)     masses, > 0 (0 marks a padding body, see below)
* ``position``  (B, N, D)  positions
* ``velocity``  (B, N, D)  velocities
* ``time``      (B,)       simulation time of each system
* ``G``         float      gravitational constant (units are the user's; presets use G = 1)
* ``softening`` float      Plummer softening length eps >= 0

Batches that mix systems with different numbers of bodies pad the smaller systems with
*padding bodies*: mass exactly 0, at rest far from everything. They exert no force and add
nothing to any energy or momentum, so the physics of the real bodies is unchanged;
:attr:`NBodyState.body_mask` (mass > 0) tells predictors which bodies are real. Only states
validated with ``allow_padding=True`` (training batches) may hold them.

``acceleration`` is an optional cache of the accelerations at ``position`` (B, N, D) that
integrators such as leapfrog reuse so a step costs one force evaluation. It is never part of
equality and is dropped by anything that moves the bodies without recomputing it. With an external
field it holds the total acceleration (the bodies' gravity plus the field's) at ``position`` and
``time``.

``field`` is an optional :class:`~nbtoolkit.field.ExternalField` (a host galaxy, a tidal field)
that every force and energy computed from the state includes; None (the default) is an isolated
system. It is carried along by :meth:`NBodyState.replace`, :meth:`NBodyState.index` and the other
derivations, and is not part of equality.

:meth:`NBodyState.to_dict` and :meth:`NBodyState.from_dict` are the state's one serialisation (state
files, checkpoints). :class:`System` (defined in :mod:`nbtoolkit.system`, re-exported here) is a state with
the orbital period of each of its systems, (B,) or None: what presets build and what runs measured in orbits take.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .errors import InvalidStateError
from .system import System  # noqa: F401  (re-exported: System used to live here)

if TYPE_CHECKING:
    from .field import ExternalField

DEFAULT_DTYPE = torch.float64

ArrayLike = Tensor | np.ndarray | Sequence[Any] | float


def as_tensor(value: ArrayLike, dtype: torch.dtype = DEFAULT_DTYPE, device: torch.device | str | None = None) -> Tensor:
    """Convert numpy arrays, lists or tensors to a tensor of ``dtype`` (no copy when possible).

    Complex, string, object or other non-real values are refused (:class:`InvalidStateError`):
    a cast would silently drop an imaginary part or fail with an obscure message.
    """
    if isinstance(value, Tensor):
        if value.is_complex():
            raise InvalidStateError(f"expected real numbers; got a complex tensor ({value.dtype})")
        return value.to(dtype=dtype, device=device)
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise InvalidStateError(f"expected a rectangular array of real numbers ({exc})") from None
    if array.dtype.kind not in "biuf":
        what = "complex" if array.dtype.kind == "c" else f"dtype {array.dtype}"
        raise InvalidStateError(f"expected real numbers; got {what} values")
    if array.dtype.kind == "f" and array.dtype.itemsize > 8:
        raise InvalidStateError(f"expected real numbers of at most 64 bits; got dtype {array.dtype}")
    return torch.as_tensor(array, dtype=dtype, device=device)


@dataclass(frozen=True)
class NBodyState:
    """A batch of gravitating systems. Frozen: use :meth:`replace` to derive a new state."""

    mass: Tensor
    position: Tensor
    velocity: Tensor
    time: Tensor
    G: float = 1.0
    softening: float = 0.0
    acceleration: Tensor | None = dataclasses.field(default=None, repr=False, compare=False)
    field: ExternalField | None = dataclasses.field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        mass: ArrayLike,
        position: ArrayLike,
        velocity: ArrayLike,
        time: ArrayLike | None = None,
        *,
        G: float = 1.0,
        softening: float = 0.0,
        dtype: torch.dtype = DEFAULT_DTYPE,
        device: torch.device | str | None = None,
        validate: bool = True,
        where: str = "state",
    ) -> NBodyState:
        """Build a state from numpy arrays, lists or tensors.

        A single system may be given without the batch dimension (mass (N,), position (N, D));
        it becomes B = 1. ``time`` defaults to zeros; a scalar is broadcast to (B,). Errors
        (:class:`InvalidStateError`) start with ``where``.
        """
        def field_tensor(name: str, value: ArrayLike) -> Tensor:
            try:
                return as_tensor(value, dtype, device)
            except InvalidStateError as exc:
                raise InvalidStateError(f"{where}: '{name}': {exc}") from None

        m = field_tensor("mass", mass)
        x = field_tensor("position", position)
        v = field_tensor("velocity", velocity)
        if m.dim() == 1 and x.dim() == 2:
            m, x = m.unsqueeze(0), x.unsqueeze(0)
            if v.dim() == 2:
                v = v.unsqueeze(0)
        batch = m.shape[0] if m.dim() >= 1 else 1
        t = torch.zeros(batch, dtype=dtype, device=device) if time is None else field_tensor("time", time)
        if t.dim() == 0:
            t = t.expand(batch).clone()
        scalars = {}
        for name, value in (("G", G), ("softening", softening)):
            if isinstance(value, (complex, np.complexfloating)) or (isinstance(value, Tensor) and value.is_complex()):
                raise InvalidStateError(f"{where}: '{name}' must be a real number; got {value!r}")
            try:
                scalars[name] = float(value)
            except (TypeError, ValueError):
                raise InvalidStateError(f"{where}: '{name}' must be a real number; got {value!r}") from None
        state = cls(m, x, v, t, scalars["G"], scalars["softening"])
        if validate:
            state.validate(where)
        return state

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        where: str = "state",
        allow_padding: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> NBodyState:
        """The state stored as :meth:`to_dict` gives it, validated (:meth:`validate` with ``where``
        and ``allow_padding``).

        The arrays may be tensors, numpy arrays or lists: ``mass`` (B, N), ``position`` and
        ``velocity`` (B, N, D), or (N,) and (N, D) for a single system; the other keys are optional:
        ``time`` (B,) or a scalar (default 0), ``G`` (default 1), ``softening`` (default 0) and the
        ``acceleration`` cache (B, N, D) or None. Other keys are ignored. ``dtype`` None keeps the
        dtype of a floating-point ``position`` (tensor or numpy array), else float64. The state has
        no external field (see :meth:`to_dict`). Raises :class:`InvalidStateError` starting with
        ``where`` and naming the key.
        """
        missing = [key for key in ("mass", "position", "velocity") if key not in data]
        if missing:
            raise InvalidStateError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")
        if dtype is None:
            dtype = _stored_dtype(data["position"])
        state = cls.from_arrays(
            data["mass"], data["position"], data["velocity"], data.get("time"), G=data.get("G", 1.0),
            softening=data.get("softening", 0.0), dtype=dtype, device=device, validate=False, where=where,
        )
        acceleration = data.get("acceleration")
        if acceleration is not None:
            try:
                acceleration = as_tensor(acceleration, dtype, device)
            except InvalidStateError as exc:
                raise InvalidStateError(f"{where}: 'acceleration': {exc}") from None
        state = dataclasses.replace(state, acceleration=acceleration)
        return state.validate(where, allow_padding=allow_padding)

    def to_dict(self) -> dict[str, Any]:
        """The state as detached CPU tensors and plain numbers, the layout :meth:`from_dict` reads:
        ``mass`` (B, N), ``position`` and ``velocity`` (B, N, D), ``time`` (B,), ``G`` and
        ``softening`` (floats), ``acceleration`` (B, N, D) or None.

        The tensors share memory with the state when it is already on the CPU. The external field
        is not included: it is a plugin object, not data (a checkpoint records it by registry name
        and options in its configuration); attach it again with ``replace(field=...)`` (which drops
        the acceleration cache).
        """
        def cpu(value: Tensor) -> Tensor:
            return value.detach().cpu()

        return {
            "mass": cpu(self.mass), "position": cpu(self.position), "velocity": cpu(self.velocity),
            "time": cpu(self.time), "G": self.G, "softening": self.softening,
            "acceleration": None if self.acceleration is None else cpu(self.acceleration),
        }

    # ------------------------------------------------------------------ shape info
    @property
    def batch_size(self) -> int:
        return int(self.mass.shape[0])

    @property
    def n_bodies(self) -> int:
        return int(self.mass.shape[1])

    @property
    def body_mask(self) -> Tensor:
        """(B, N) bool: True for real bodies, False for padding bodies (mass 0)."""
        return self.mass > 0

    @property
    def dim(self) -> int:
        return int(self.position.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        return self.position.dtype

    @property
    def device(self) -> torch.device:
        return self.position.device

    # ------------------------------------------------------------------ validation
    def validate(self, where: str = "state", *, allow_padding: bool = False) -> NBodyState:
        """Check shapes, finiteness, positive masses and (unsoftened) coincident bodies.

        With ``allow_padding`` a mass of exactly 0 marks a padding body (see the module
        docstring); every system must still hold at least two real bodies. Raises
        :class:`InvalidStateError` naming the offending field, system and body. Returns
        ``self`` so it can be chained.
        """
        m, x, v, t = self.mass, self.position, self.velocity, self.time
        if m.dim() != 2:
            raise InvalidStateError(f"{where}: 'mass' must have shape (B, N); got {tuple(m.shape)}")
        B, N = m.shape
        if N < 1 or B < 1:
            raise InvalidStateError(f"{where}: need at least one system and one body; got 'mass' of shape {tuple(m.shape)}")
        if x.dim() != 3 or x.shape[:2] != (B, N) or x.shape[2] not in (2, 3):
            raise InvalidStateError(
                f"{where}: 'position' must have shape (B, N, D) = ({B}, {N}, 2 or 3) "
                f"to match 'mass' {tuple(m.shape)}; got {tuple(x.shape)}"
            )
        if v.shape != x.shape:
            raise InvalidStateError(
                f"{where}: 'velocity' shape {tuple(v.shape)} does not match 'position' shape {tuple(x.shape)}"
            )
        if t.shape != (B,):
            raise InvalidStateError(f"{where}: 'time' must have shape (B,) = ({B},); got {tuple(t.shape)}")
        for name, value in (("mass", m), ("position", x), ("velocity", v), ("time", t)):
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                idx = tuple(int(i) for i in torch.nonzero(bad)[0])
                raise InvalidStateError(f"{where}: '{name}' has a non-finite value ({value[idx].item()}) at index {idx}")
        nonpos = m < 0 if allow_padding else m <= 0
        if allow_padding:
            real = (m > 0).sum(-1)
            if bool((real < 2).any()):
                b = int(torch.nonzero(real < 2)[0, 0])
                raise InvalidStateError(f"{where}: system {b} has {int(real[b])} bodies of mass > 0; it needs at least 2")
        if bool(nonpos.any()):
            b, i = (int(k) for k in torch.nonzero(nonpos)[0])
            raise InvalidStateError(f"{where}: 'mass' must be > 0; system {b}, body {i} has mass {m[b, i].item()}")
        if not (np.isfinite(self.G) and self.G > 0):
            raise InvalidStateError(f"{where}: 'G' must be finite and > 0; got {self.G}")
        if not (np.isfinite(self.softening) and self.softening >= 0):
            raise InvalidStateError(f"{where}: 'softening' must be finite and >= 0; got {self.softening}")
        from .validate import check_state_memory

        check_state_memory(B, N, x.shape[2], where)
        if self.softening == 0 and N > 1:
            d2 = (x.unsqueeze(-2) - x.unsqueeze(-3)).square().sum(-1)
            d2 = d2 + torch.eye(N, dtype=d2.dtype, device=d2.device) * torch.finfo(d2.dtype).max
            hit = d2 == 0
            if bool(hit.any()):
                b, i, j = (int(k) for k in torch.nonzero(hit)[0])
                raise InvalidStateError(
                    f"{where}: bodies {i} and {j} of system {b} coincide and softening is 0; "
                    "move them apart or set a softening length"
                )
        return self

    # ------------------------------------------------------------------ derivation
    def replace(self, **changes: Any) -> NBodyState:
        """A copy with some fields changed. Changing position, masses, G, softening or the external
        field drops the acceleration cache."""
        if "acceleration" not in changes and ({"position", "G", "softening", "mass", "field"} & changes.keys()):
            changes["acceleration"] = None
        return dataclasses.replace(self, **changes)

    def detach(self) -> NBodyState:
        """The same state cut from any autograd graph (shares memory)."""
        acc = None if self.acceleration is None else self.acceleration.detach()
        return dataclasses.replace(
            self, mass=self.mass.detach(), position=self.position.detach(),
            velocity=self.velocity.detach(), time=self.time.detach(), acceleration=acc,
        )

    def clone(self) -> NBodyState:
        """A deep copy, detached from autograd."""
        acc = None if self.acceleration is None else self.acceleration.detach().clone()
        return dataclasses.replace(
            self, mass=self.mass.detach().clone(), position=self.position.detach().clone(),
            velocity=self.velocity.detach().clone(), time=self.time.detach().clone(), acceleration=acc,
        )

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> NBodyState:
        acc = None if self.acceleration is None else self.acceleration.to(dtype=dtype, device=device)
        return dataclasses.replace(
            self, mass=self.mass.to(dtype=dtype, device=device), position=self.position.to(dtype=dtype, device=device),
            velocity=self.velocity.to(dtype=dtype, device=device), time=self.time.to(dtype=dtype, device=device),
            acceleration=acc,
        )

    def index(self, idx: int | slice | Sequence[int] | Tensor) -> NBodyState:
        """Select systems along the batch dimension; an int keeps the batch dimension (B = 1)."""
        idx = _batch_index(idx)
        acc = None if self.acceleration is None else self.acceleration[idx]
        return dataclasses.replace(
            self, mass=self.mass[idx], position=self.position[idx], velocity=self.velocity[idx],
            time=self.time[idx], acceleration=acc,
        )

    def scatter(self, idx: Tensor, part: NBodyState) -> NBodyState:
        """A copy with systems ``idx`` (K,) replaced by ``part`` (batch K, same N and D).

        Masses, G, softening and field are kept from ``self``; position, velocity and time come
        from ``part``. The acceleration cache is kept when both states carry one, else dropped.
        ``self`` is not modified (its tensors are cloned, so the autograd graph of ``part`` is kept).
        """
        def put(full: Tensor, rows: Tensor) -> Tensor:
            out = full.clone()
            out[idx] = rows
            return out

        acc = None
        if self.acceleration is not None and part.acceleration is not None:
            acc = put(self.acceleration, part.acceleration)
        return self.replace(position=put(self.position, part.position), velocity=put(self.velocity, part.velocity),
                            time=put(self.time, part.time), acceleration=acc)

    def trim_bodies(self, n: int) -> NBodyState:
        """The first ``n`` bodies of every system (drops trailing padding bodies; views, no copy)."""
        acc = None if self.acceleration is None else self.acceleration[:, :n]
        return dataclasses.replace(self, mass=self.mass[:, :n], position=self.position[:, :n],
                                   velocity=self.velocity[:, :n], acceleration=acc)

    @staticmethod
    def cat(states: Sequence[NBodyState]) -> NBodyState:
        """Concatenate states along the batch dimension (same N, D, G, softening and external field)."""
        if not states:
            raise InvalidStateError("cannot concatenate an empty list of states")
        first = states[0]
        for k, s in enumerate(states[1:], start=1):
            if s.position.shape[1:] != first.position.shape[1:] or s.G != first.G or s.softening != first.softening:
                raise InvalidStateError(
                    f"cannot concatenate state {k}: (N, D, G, softening) = "
                    f"({s.n_bodies}, {s.dim}, {s.G}, {s.softening}) differs from "
                    f"({first.n_bodies}, {first.dim}, {first.G}, {first.softening})"
                )
            if s.field is not first.field:
                raise InvalidStateError(f"cannot concatenate state {k}: its external field {s.field!r} differs "
                                        f"from {first.field!r}")
        acc = None
        if all(s.acceleration is not None for s in states):
            acc = torch.cat([s.acceleration for s in states])  # type: ignore[misc]
        return NBodyState(
            torch.cat([s.mass for s in states]), torch.cat([s.position for s in states]),
            torch.cat([s.velocity for s in states]), torch.cat([s.time for s in states]),
            first.G, first.softening, acc, first.field,
        )


def _batch_index(idx: int | slice | Sequence[int] | Tensor) -> slice | Sequence[int] | Tensor:
    """``idx`` as an index that keeps the batch dimension: an int ``b`` becomes the slice of system ``b``."""
    if isinstance(idx, int):
        return slice(idx, idx + 1 if idx != -1 else None)
    return idx


def _stored_dtype(value: Any) -> torch.dtype:
    """The dtype :meth:`NBodyState.from_dict` keeps: that of a floating-point tensor or numpy array of
    at most 64 bits, else :data:`DEFAULT_DTYPE`."""
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.dtype
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return {2: torch.float16, 4: torch.float32, 8: torch.float64}.get(value.dtype.itemsize, DEFAULT_DTYPE)
    return DEFAULT_DTYPE
