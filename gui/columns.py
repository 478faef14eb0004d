"""An append-only table of named float64 columns: what the live plots record of a run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Columns:
    """An append-only table of named float64 columns with amortised O(1) appends."""

    def __init__(self, names: Sequence[str], capacity: int = 1024) -> None:
        self.names = tuple(names)
        self._data = {name: np.empty(capacity, dtype=np.float64) for name in self.names}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, **columns: np.ndarray | float) -> None:
        """Append rows; every column is given, as arrays of one common length or scalars."""
        if set(columns) != set(self.names):
            raise KeyError(f"expected columns {self.names}; got {tuple(columns)}")
        arrays = {k: np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in columns.items()}
        n = max(len(a) for a in arrays.values())
        needed = self._size + n
        capacity = len(self._data[self.names[0]])
        if needed > capacity:
            capacity = max(needed, 2 * capacity)
            for name in self.names:
                grown = np.empty(capacity, dtype=np.float64)
                grown[: self._size] = self._data[name][: self._size]
                self._data[name] = grown
        for name, values in arrays.items():
            self._data[name][self._size: needed] = values
        self._size = needed

    def __getitem__(self, name: str) -> np.ndarray:
        """The filled part of a column (a view; do not keep it across appends)."""
        return self._data[name][: self._size]

    def where(self, column: str, value: float) -> dict[str, np.ndarray]:
        """Copies of all columns restricted to the rows where ``column == value``."""
        mask = self[column] == value
        return {name: self[name][mask] for name in self.names}

    def clear(self) -> None:
        self._size = 0
