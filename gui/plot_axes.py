"""The live plots' axes: labels of a log axis, the range |dE/E| is drawn in, round axis limits."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

#: |dE/E| values are drawn clipped to this range (a blown-up attempt has rel_dE = inf)
REL_DE_DISPLAY_RANGE = (1e-16, 1e2)


def decades(values: np.ndarray) -> tuple[float, float] | None:
    """The whole decades [log10 lo, log10 hi] spanning the positive finite ``values`` (a log axis
    range), or None if there are none."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return None
    lo, hi = np.floor(np.log10(positive.min())), np.ceil(np.log10(positive.max()))
    return float(lo), float(max(hi, lo + 1))


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is >= ``value``."""
    if value <= 1:
        return 1.0
    magnitude = 10 ** np.floor(np.log10(value))
    return float(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= value))


def clip_rel(values: np.ndarray) -> np.ndarray:
    """|dE/E| ``values`` clipped to :data:`REL_DE_DISPLAY_RANGE` (NaN and +inf to its ceiling)."""
    lo, hi = REL_DE_DISPLAY_RANGE
    return np.clip(np.nan_to_num(values, nan=hi, posinf=hi, neginf=lo), lo, hi)


class DecadeAxis(pg.AxisItem):
    """A log axis that labels whole decades only (1e-06, 0.01, 1, ...): on a short plot the labels of
    the minor ticks within a decade ran into each other ("0.010.009..."). The ticks themselves stay."""

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        if not self.logMode:
            return super().tickStrings(values, scale, spacing)
        labels = []
        for value in values:  # log10 of the data value
            if abs(value - round(value)) > 1e-9:
                labels.append("")
            else:
                exponent = int(round(value))
                labels.append(f"{10.0 ** exponent:g}" if -3 <= exponent <= 3 else f"1e{exponent}")
        return labels
