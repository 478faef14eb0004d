"""The replay buffer: accepted Part 1 samples stored as stacked tensors.

A sample is the state a step was taken *from* (one system: mass (N,), position and velocity
(N, D), time), the dt that was accepted there, the |dE/E| last measured for it, and its own
history window (the K accepted states before it, newest last, with a mask). A minibatch is an
index gather over these tensors, so replaying 512 samples is one batched computation.

Storage grows geometrically up to ``capacity``; once full, the oldest samples are overwritten
(a ring). Samplers read :attr:`ReplayBuffer.rel_dE` and :attr:`ReplayBuffer.age`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidStateError
from ..field import ExternalField
from ..predictor import History
from ..state import NBodyState

#: names of the per-sample tensors
_FIELDS = ("mass", "position", "velocity", "time", "dt", "rel_dE", "system", "epoch", "order",
           "hist_position", "hist_velocity", "hist_mask")


class ReplayBuffer:
    """Fixed-capacity store of replay samples for systems of ``n_bodies`` bodies in ``dim`` dimensions.

    ``G``, ``softening`` and the external ``field`` (or None) are shared by all samples (they come
    from the training state); the states :meth:`gather` returns carry them.
    """

    def __init__(self, capacity: int, n_bodies: int, dim: int, history_len: int = 0, *, G: float = 1.0,
                 softening: float = 0.0, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                 field: ExternalField | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1; got {capacity}")
        self.capacity = int(capacity)
        self.n_bodies = int(n_bodies)
        self.dim = int(dim)
        self.history_len = int(history_len)
        self.G = float(G)
        self.softening = float(softening)
        self.field = field
        self.dtype = dtype
        self.device = torch.device(device)
        self._size = 0
        self._next = 0  # ring write position
        self._count = 0  # samples ever added (insertion order counter)
        self._data = self._allocate(0)

    @classmethod
    def like(cls, state: NBodyState, capacity: int, history_len: int = 0) -> ReplayBuffer:
        """An empty buffer for samples of ``state``'s shape, G, softening, external field, dtype and device."""
        return cls(capacity, state.n_bodies, state.dim, history_len, G=state.G, softening=state.softening,
                   dtype=state.dtype, device=state.device, field=state.field)

    def _allocate(self, length: int) -> dict[str, Tensor]:
        N, D, K = self.n_bodies, self.dim, self.history_len
        f: dict[str, Any] = dict(dtype=self.dtype, device=self.device)
        i: dict[str, Any] = dict(dtype=torch.long, device=self.device)
        return {
            "mass": torch.zeros(length, N, **f), "position": torch.zeros(length, N, D, **f),
            "velocity": torch.zeros(length, N, D, **f), "time": torch.zeros(length, **f),
            "dt": torch.zeros(length, **f), "rel_dE": torch.zeros(length, **f),
            "system": torch.zeros(length, **i), "epoch": torch.zeros(length, **i), "order": torch.zeros(length, **i),
            "hist_position": torch.zeros(length, K, N, D, **f), "hist_velocity": torch.zeros(length, K, N, D, **f),
            "hist_mask": torch.zeros(length, K, dtype=torch.bool, device=self.device),
        }

    def _ensure(self, length: int) -> None:
        have = self._data["dt"].shape[0]
        if length <= have:
            return
        new_len = min(self.capacity, max(length, 2 * have, 64))
        grown = self._allocate(new_len)
        for key, value in self._data.items():
            grown[key][:have] = value
        self._data = grown

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return self._size

    @property
    def full(self) -> bool:
        return self._size == self.capacity

    @property
    def rel_dE(self) -> Tensor:
        """|dE/E| last measured for each stored sample, (n,) (a view; do not modify)."""
        return self._data["rel_dE"][: self._size]

    @property
    def dt(self) -> Tensor:
        """The dt accepted for each stored sample in Part 1, (n,)."""
        return self._data["dt"][: self._size]

    @property
    def system(self) -> Tensor:
        """Index of the system (in the training batch) each sample came from, (n,) long."""
        return self._data["system"][: self._size]

    @property
    def epoch(self) -> Tensor:
        """Epoch in which each sample was collected, (n,) long."""
        return self._data["epoch"][: self._size]

    @property
    def age(self) -> Tensor:
        """Samples added after each stored sample, (n,) long: 0 for the newest."""
        return (self._count - 1) - self._data["order"][: self._size]

    # ------------------------------------------------------------------ writing
    def add(self, state: NBodyState, dt: Tensor, rel_dE: Tensor, *, history: History | None = None,
            system: Tensor | None = None, epoch: int = 0) -> Tensor:
        """Append k samples (``state`` with B = k; dt, rel_dE (k,); their history windows; the
        systems they came from). Returns the buffer indices written, (k,) long."""
        k = state.batch_size
        if state.position.shape[1:] != (self.n_bodies, self.dim):
            raise InvalidStateError(
                f"replay buffer holds systems of shape (N, D) = ({self.n_bodies}, {self.dim}); "
                f"got samples of shape {tuple(state.position.shape[1:])}"
            )
        if self.history_len and history is None:
            raise ValueError(f"replay buffer keeps history windows of length {self.history_len}; no history given")
        rows = {
            "mass": state.mass, "position": state.position, "velocity": state.velocity, "time": state.time,
            "dt": dt, "rel_dE": rel_dE,
            "system": torch.arange(k, device=self.device) if system is None else system,
            "epoch": torch.full((k,), int(epoch), dtype=torch.long, device=self.device),
            "order": torch.arange(self._count, self._count + k, device=self.device),
        }
        if self.history_len:
            assert history is not None
            rows.update(hist_position=history.position, hist_velocity=history.velocity, hist_mask=history.mask)
        if k > self.capacity:  # only the newest `capacity` samples can be kept
            rows = {key: value[k - self.capacity:] for key, value in rows.items()}
            self._count += k - self.capacity
            k = self.capacity
        self._ensure(min(self.capacity, self._size + k))
        where = (self._next + torch.arange(k, device=self.device)) % self.capacity
        for key, value in rows.items():
            self._data[key][where] = value.detach().to(self._data[key].dtype)
        self._next = (self._next + k) % self.capacity
        self._size = min(self.capacity, self._size + k)
        self._count += k
        return where

    def update_rel_dE(self, indices: Tensor, rel_dE: Tensor) -> None:
        """Store newly measured |dE/E| (k,) for samples ``indices`` (k,) (the states are not touched)."""
        self._data["rel_dE"][indices] = rel_dE.detach().to(self.dtype)

    def clear(self) -> None:
        """Drop every sample (capacity and allocation are kept)."""
        self._size = 0
        self._next = 0

    # ------------------------------------------------------------------ reading
    def gather(self, indices: Tensor) -> tuple[NBodyState, History | None]:
        """The samples ``indices`` (k,) as a batched state (B = k, copies) and their history windows."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self._size):
            raise IndexError(f"replay buffer index out of range [0, {self._size})")
        d = self._data
        state = NBodyState(d["mass"][indices], d["position"][indices], d["velocity"][indices], d["time"][indices],
                           self.G, self.softening, field=self.field)
        history = None
        if self.history_len:
            history = History(d["hist_position"][indices], d["hist_velocity"][indices], d["hist_mask"][indices])
        return state, history

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the buffer exactly (tensors and numbers only)."""
        return {
            "capacity": self.capacity, "n_bodies": self.n_bodies, "dim": self.dim, "history_len": self.history_len,
            "G": self.G, "softening": self.softening, "size": self._size, "next": self._next, "count": self._count,
            "data": {key: value[: self._size].clone() for key, value in self._data.items()},
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the shapes must match this buffer's.

        With the same capacity the ring is restored exactly; with another capacity the samples
        are re-laid out oldest first, keeping the newest ``capacity`` of them.
        """
        for key in ("n_bodies", "dim", "history_len"):
            if int(saved[key]) != getattr(self, key):
                raise ValueError(f"saved replay buffer has {key} = {saved[key]}; this buffer has {getattr(self, key)}")
        data = saved["data"]
        size, next_pos = int(saved["size"]), int(saved["next"])
        if int(saved["capacity"]) != self.capacity:
            keep = data["order"].argsort()[-self.capacity:]
            data = {key: value[keep] for key, value in data.items()}
            size = int(keep.numel())
            next_pos = size % self.capacity
        self._data = self._allocate(0)
        self._ensure(size)
        for key in _FIELDS:
            self._data[key][:size] = data[key].to(device=self.device, dtype=self._data[key].dtype)
        self._size = size
        self._next = next_pos
        self._count = int(saved["count"])
