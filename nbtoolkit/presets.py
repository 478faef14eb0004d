"""Named presets of initial conditions for two-body, three-body and cluster problems.

The preset table :data:`PRESETS` and :func:`make_preset` give the systems of
:mod:`nbtoolkit.initial_conditions` by name, with parameters that command-line flags and GUI
widgets can set; :class:`PresetSystem` is the :class:`~nbtoolkit.state.System` they build: the
state and, where the system is periodic, its period (one per system, shape (B,)). The builders
themselves (:func:`kepler`, :func:`kepler_batch`, :func:`figure_eight`, :func:`pythagorean`,
:func:`plummer`) and :func:`kepler_period` are importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, UnknownNameError
from .initial_conditions import (
    FIGURE_EIGHT_PERIOD,
    PLUMMER_MASS_CUT,
    figure_eight,
    kepler,
    kepler_batch,
    kepler_period,
    plummer,
    pythagorean,
)
from .state import NBodyState, System


@dataclass(frozen=True)
class PresetSpec:
    """A named preset: ``builder(**params)`` returns ``(state, period)`` with period (B,) or None.

    ``params`` maps every parameter the preset accepts (underscore names) to its default.
    """

    name: str
    description: str
    builder: Callable[..., tuple[NBodyState, Tensor | None]]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False, kw_only=True)
class PresetSystem(System):
    """A built preset: a :class:`~nbtoolkit.state.System` (``state`` (B, N, D), ``period`` (B,) in the
    state's time unit or None for non-periodic systems) with the preset's ``name`` and the full
    parameter set used (``params``, defaults filled in)."""

    name: str
    params: dict[str, Any]


def _period_tensor(period: float | Tensor, state: NBodyState) -> Tensor:
    return torch.full((state.batch_size,), float(period), dtype=state.dtype)


def _build_kepler(**p: Any) -> tuple[NBodyState, Tensor | None]:
    state = kepler(**p)
    return state, _period_tensor(kepler_period(p["semi_major_axis"], sum(p["masses"]), p["G"]), state)


def _build_kepler_batch(**p: Any) -> tuple[NBodyState, Tensor | None]:
    state = kepler_batch(**p)
    return state, _period_tensor(kepler_period(p["semi_major_axis"], sum(p["masses"]), p["G"]), state)


def _build_figure_eight() -> tuple[NBodyState, Tensor | None]:
    state = figure_eight()
    return state, _period_tensor(FIGURE_EIGHT_PERIOD, state)


def _build_pythagorean() -> tuple[NBodyState, Tensor | None]:
    return pythagorean(), None


def _build_plummer(**p: Any) -> tuple[NBodyState, Tensor | None]:
    return plummer(**p), None


PRESETS: dict[str, PresetSpec] = {
    spec.name: spec
    for spec in (
        PresetSpec(
            "kepler",
            "Two bodies on one bound Kepler orbit (eccentricity e, semi-major axis a), starting at apocentre or pericentre",
            _build_kepler,
            {"eccentricity": 0.5, "semi_major_axis": 1.0, "masses": (1.0, 1.0), "start": "apocentre", "G": 1.0, "dim": 2},
        ),
        PresetSpec(
            "kepler-batch",
            "A batch of Kepler orbits with eccentricities drawn uniformly in [e_min, e_max]",
            _build_kepler_batch,
            {"num_orbits": 8, "e_min": 0.5, "e_max": 0.95, "seed": 0, "semi_major_axis": 1.0,
             "masses": (1.0, 1.0), "start": "apocentre", "G": 1.0, "dim": 2},
        ),
        PresetSpec(
            "figure-eight",
            "The Chenciner-Montgomery figure-eight three-body choreography (period 6.3259)",
            _build_figure_eight,
            {},
        ),
        PresetSpec(
            "pythagorean",
            "Burrau's Pythagorean three-body problem: masses 3, 4, 5 at rest, ending in an ejection",
            _build_pythagorean,
            {},
        ),
        PresetSpec(
            "plummer",
            "N equal-mass bodies sampled from a Plummer sphere, rescaled to Henon units (E = -1/4, virial equilibrium)",
            _build_plummer,
            {"n": 16, "seed": 0, "dim": 3, "softening": 0.0, "num_systems": 1},
        ),
    )
}


def _coerce(preset: str, key: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of the parameter's default (numbers from strings, a pair of
    masses from "m1,m2"); range checks are left to the builder."""
    where = f"preset '{preset}': parameter {key}"
    try:
        if isinstance(default, tuple):
            items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
            return tuple(float(v) for v in items)
        if isinstance(default, int):
            if isinstance(value, bool):
                raise TypeError("a boolean is not an integer")
            number = float(value) if isinstance(value, str) else value
            if not isinstance(number, (int, float)) or not float(number).is_integer():
                raise ValueError("not an integer")
            return int(number)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError("a boolean is not a number")
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise TypeError("not a string")
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} expects a value like {default!r}; got {value!r} ({exc})") from None
    return value


def make_preset(name: str, **params: Any) -> PresetSystem:
    """Build preset ``name`` with ``params`` overriding its defaults.

    Parameter names use underscores (hyphens are accepted and converted); a value of ``None``
    means "use the default", so unset command-line flags can be passed straight through.
    Values are converted to the type of the default (e.g. "0.7" -> 0.7, "1,2" -> (1.0, 2.0)).
    Raises :class:`UnknownNameError` for an unknown preset and :class:`ConfigError` for an
    unknown parameter or an invalid value, naming it.
    """
    spec = PRESETS.get(name)
    if spec is None:
        raise UnknownNameError(f"unknown preset '{name}'; known: {', '.join(sorted(PRESETS))}")
    resolved = dict(spec.params)
    for raw_key, value in params.items():
        key = raw_key.replace("-", "_")
        if key not in spec.params:
            accepted = ", ".join(spec.params) or "(none)"
            raise ConfigError(f"preset '{name}' does not take parameter '{raw_key}'; it takes: {accepted}")
        if value is not None:
            resolved[key] = _coerce(name, key, value, spec.params[key])
    state, period = spec.builder(**resolved)
    return PresetSystem(name=name, state=state, period=period, params=resolved)


__all__ = [
    "FIGURE_EIGHT_PERIOD", "PLUMMER_MASS_CUT", "PRESETS", "PresetSpec", "PresetSystem", "figure_eight", "kepler",
    "kepler_batch", "kepler_period", "make_preset", "plummer", "pythagorean",
]
