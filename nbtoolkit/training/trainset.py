"""Training sets: data that says which systems a dt predictor learns from, mixed in one run.

A training set is a list of ``[[systems]]`` tables, each naming a family of
:mod:`nbtoolkit.families`, how many systems to draw (``count``) and the family's parameter
ranges (omitted ones keep the family's defaults)::

    name = "my-set"
    [[systems]]
    family = "kepler"
    count = 16
    eccentricity = [0.0, 0.99]
    mass_ratio = [1e-3, 1.0]

    [[systems]]
    family = "plummer"
    count = 4
    n = [4, 32]

Optional ``[[validation]]`` tables, in the same form, name systems drawn only for the safety
calibration after training (:mod:`nbtoolkit.training.calibrate`), never trained on: the
validation systems are the ``[[systems]]`` drawn twice more (seeds + 1 and + 2) *and* the
``[[validation]]`` tables drawn with the same two seeds, so the calibrated factors also hold on
kinds of systems the network never saw.

An optional ``[train]`` table holds the training settings the set is meant to be trained
with (configuration keys of :class:`~nbtoolkit.training.TrainConfig`); ``nbtoolkit train``
applies them under the user's own TOML file and flags. Built-in sets live beside this module
in ``sets/NAME.toml``; ``general`` is the default of ``nbtoolkit train``. A training TOML
file may hold ``[[systems]]`` tables itself.

**Mixing N.** Systems with different numbers of bodies share one batched state: smaller
systems are padded with massless *padding bodies* (see :mod:`nbtoolkit.state`) placed at rest
far outside the system. Padding keeps the seed's loop exactly as it is (one state, per-system
accept, one batched replay) at the price of force evaluations over N_max^2 pairs for every
system; bucketing by N would save that compute but needs one state, history and replay buffer
per bucket, and a replay minibatch per bucket. ``docs/models.md`` gives the measured cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib
import torch

from ..errors import ConfigError
from ..families import SystemDraw, check_family, draw_family
from ..state import DEFAULT_DTYPE, NBodyState

#: padding bodies sit at rest at (PADDING_DISTANCE + k) times the system's radius on the x axis
PADDING_DISTANCE = 1e3
#: the one softening length of a padded state that holds softened systems; each system's lengths and
#: masses are then scaled by SOFTENING_UNIT / its own softening (see :func:`pad_systems`), and an
#: unsoftened system keeps its scale, with a softening of 1e-10 of its length unit
SOFTENING_UNIT = 1e-10
#: the training set ``nbtoolkit train`` uses when no system is given
DEFAULT_TRAINING_SET = "general"


@dataclass(frozen=True)
class SystemsSpec:
    """One ``[[systems]]`` table: ``count`` systems of ``family`` with parameter overrides."""

    family: str
    count: int
    params: dict[str, Any]


@dataclass(frozen=True)
class TrainingSet:
    """A named list of :class:`SystemsSpec`; :meth:`build` draws and pads them into one state."""

    name: str
    systems: tuple[SystemsSpec, ...]
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  #: the [train] table: recommended configuration keys
    validation_only: tuple[SystemsSpec, ...] = ()  #: the [[validation]] tables: drawn only to calibrate

    @classmethod
    def from_tables(cls, tables: Any, name: str = "custom", description: str = "",
                    settings: dict[str, Any] | None = None, validation: Any = None) -> TrainingSet:
        """Parse ``[[systems]]`` tables (a list of dicts) and optional ``[[validation]]`` tables;
        every problem names the table and key."""
        if not isinstance(tables, list) or not tables:
            raise ConfigError(f"training set '{name}': 'systems' must be a non-empty list of [[systems]] tables")
        if validation is not None and not isinstance(validation, list):
            raise ConfigError(f"training set '{name}': 'validation' must be a list of [[validation]] tables")
        specs = _parse_specs(tables, f"training set '{name}', [[systems]]")
        extra = _parse_specs(validation or [], f"training set '{name}', [[validation]]")
        if settings is not None:
            from .config import TrainConfig

            if not isinstance(settings, dict):
                raise ConfigError(f"training set '{name}': [train] must be a table of configuration keys")
            try:
                TrainConfig.from_dict(dict(settings))
            except ConfigError as exc:
                raise ConfigError(f"training set '{name}', [train] table: {exc}") from None
        return cls(name, specs, description, dict(settings or {}), extra)

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainingSet:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"training set file '{p}' does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"training set file '{p}' cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"training set file '{p}' is not valid TOML: {exc}") from None
        return cls.from_tables(data.get("systems"), str(data.get("name", p.stem)), str(data.get("description", "")),
                               data.get("train"), data.get("validation"))

    @property
    def size(self) -> int:
        return sum(spec.count for spec in self.systems)

    def draw(self, seed: int) -> list[SystemDraw]:
        """Every system of the set, drawn with a generator seeded by ``seed`` (same seed, same systems)."""
        return _draw_specs(self.systems, seed, f"training set '{self.name}', [[systems]]")

    def validation_draws(self, seed: int) -> list[SystemDraw]:
        """The validation systems of a model trained on :meth:`draw` (``seed``): the set drawn with
        ``seed + 1`` and ``seed + 2``, then the ``[[validation]]`` tables drawn with the same seeds."""
        where = f"training set '{self.name}', [[validation]]"
        return (self.draw(seed + 1) + self.draw(seed + 2) + _draw_specs(self.validation_only, seed + 1, where)
                + _draw_specs(self.validation_only, seed + 2, where))

    def build(self, seed: int, dtype: torch.dtype = DEFAULT_DTYPE) -> NBodyState:
        """One padded state (B = :attr:`size`, N = the largest N, D = 3) of every system."""
        return pad_systems(self.draw(seed), dtype)

    def summary(self) -> str:
        parts = [f"{spec.count} {spec.family}" for spec in self.systems]
        text = f"training set '{self.name}': {self.size} systems ({', '.join(parts)})"
        if self.validation_only:
            extra = ", ".join(f"{spec.count} {spec.family}" for spec in self.validation_only)
            text += f", validated also on {extra} per seed"
        return text


def _parse_specs(tables: list[Any], where: str) -> tuple[SystemsSpec, ...]:
    specs = []
    for k, table in enumerate(tables):
        place = f"{where} table {k + 1}"
        if not isinstance(table, dict):
            raise ConfigError(f"{place} must be a table; got {type(table).__name__}")
        params = dict(table)
        family, count = params.pop("family", None), params.pop("count", 1)
        try:
            check_family(family, count, params)
        except ConfigError as exc:
            raise ConfigError(f"{place}: {exc}") from None
        specs.append(SystemsSpec(family, count, params))
    return tuple(specs)


def _draw_specs(specs: tuple[SystemsSpec, ...], seed: int, where: str) -> list[SystemDraw]:
    generator = torch.Generator().manual_seed(int(seed))
    draws: list[SystemDraw] = []
    for k, spec in enumerate(specs):
        try:
            draws += draw_family(spec.family, spec.count, generator, **spec.params)
        except ConfigError as exc:
            raise ConfigError(f"{where} table {k + 1}: {exc}") from None
    return draws


def pad_systems(draws: list[SystemDraw], dtype: torch.dtype = DEFAULT_DTYPE) -> NBodyState:
    """Stack systems of any N into one state, padding each with massless bodies (see module docstring).

    A state has one softening length, but softening enters the dynamics only through eps / L, its
    ratio to the system's length unit L. So when some draws are softened, the state's softening is
    :data:`SOFTENING_UNIT` and a draw with softening eps is stored with its lengths and masses
    multiplied by k = SOFTENING_UNIT / eps (velocities unchanged, times then scale by k): the same
    system in other units, which a scale-free predictor and the relative energy gate see unchanged.
    Unsoftened draws keep their units; their softening, 1e-10 of their length unit, changes a pair's
    force by 1.5 (eps / r)^2 of itself: 1.5e-14 at r = 1e-3.
    """
    if not draws:
        raise ConfigError("no systems to stack")
    n_max = max(d.n_bodies for d in draws)
    softened = any(d.softening > 0 for d in draws)
    mass = torch.zeros(len(draws), n_max, dtype=torch.float64)
    position = torch.zeros(len(draws), n_max, 3, dtype=torch.float64)
    velocity = torch.zeros(len(draws), n_max, 3, dtype=torch.float64)
    for b, d in enumerate(draws):
        n = d.n_bodies
        unit = SOFTENING_UNIT / d.softening if d.softening > 0 else 1.0
        mass[b, :n], position[b, :n], velocity[b, :n] = d.mass * unit, d.position * unit, d.velocity
        radius = float(position[b, :n].norm(dim=-1).max())
        position[b, n:, 0] = radius * (PADDING_DISTANCE + torch.arange(n_max - n, dtype=torch.float64))
    state = NBodyState(mass.to(dtype), position.to(dtype), velocity.to(dtype), torch.zeros(len(draws), dtype=dtype),
                       softening=SOFTENING_UNIT if softened else 0.0)
    return state.validate("training set", allow_padding=True)


def builtin_training_sets() -> dict[str, Path]:
    """Names of the built-in training sets and their TOML files."""
    folder = resources.files(__package__).joinpath("sets")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".toml")}


def load_training_set(name_or_path: str | Path) -> TrainingSet:
    """A built-in set by name (``general``, ...) or a TOML file by path."""
    builtin = builtin_training_sets()
    if str(name_or_path) in builtin:
        return TrainingSet.from_toml(builtin[str(name_or_path)])
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return TrainingSet.from_toml(path)
    raise ConfigError(f"unknown training set '{name_or_path}'; built-in: {', '.join(sorted(builtin))}, "
                      "or give the path of a TOML file with [[systems]] tables")


__all__ = ["DEFAULT_TRAINING_SET", "PADDING_DISTANCE", "SystemsSpec", "TrainingSet", "builtin_training_sets",
           "load_training_set", "pad_systems"]
