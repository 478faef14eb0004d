"""The validated training configuration, :class:`TrainConfig`, loadable from TOML.

Every key is declared once, as a field with its default and an :class:`~nbtoolkit.options.Option`
(help text and check): validation, the flags of ``nbtoolkit train``, TOML loading and the
settings reference ``docs/settings.md`` are all made from these declarations. Unknown keys and
out-of-range values raise :class:`~nbtoolkit.errors.ConfigError` naming the key. Energies are
relative energy errors |dE/E| per step (dimensionless); dt is in the time unit of the state.

The options of a plugin (the ``mlp`` predictor's ``hidden_width``, a sampler's ``alpha``, the
metrics log's file) belong to the plugin, which declares them: on its factory, or for an observer
through ``nbtoolkit_register_observer_options``. Here they are tables (``predictor_options``,
``sampler_options``, ``observer_options``, ...), checked against those declarations when the
plugin is built or the run starts. The ``mlp`` architecture keys and the default observers'
switches may still be written at top level (:data:`TOP_LEVEL_OPTIONS`): they are moved into
their table.

A TOML file holds the keys at top level. A ``[system]`` table (``preset = "kepler-batch"``
plus that preset's parameters) is reserved for the command line, which builds the initial
state from it; :meth:`TrainConfig.from_toml` skips it.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
import torch

from ..errors import ConfigError
from ..options import (
    Check,
    Setting,
    dataclass_settings,
    fraction,
    integer,
    name,
    number,
    one_of,
    option_table,
    setting,
    text,
)

#: below this |dE/E| a step's energy error is round-off, not signal; E_lower may not go lower
REL_DE_FLOOR = 1e-15
#: options that may also be written as top-level keys, by the table they belong to: the ``mlp``
#: predictor's architecture and the default observers' switches (their flags ``--hidden-width``,
#: ``--metrics-log`` ..., top-level TOML keys, and the configurations of checkpoints written before
#: their plugins declared them)
TOP_LEVEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "predictor_options": ("history_len", "hidden_width", "hidden_layers", "activation", "fourier_features",
                          "fourier_scale"),
    "observer_options": ("progress", "metrics_log"),
}
#: largest buffer torch.multinomial (used by the non-uniform samplers) can draw from
MAX_BUFFER_CAPACITY = 2**24
#: the reserved TOML table describing the system to train on
SYSTEM_TABLE = "system"


class _Device(Check):
    """A torch device this torch build and machine can use."""

    rule = "a torch device (cpu, cuda, cuda:1, ...)"

    def __call__(self, label: str, value: Any) -> str:
        text()(label, value)
        try:
            device = torch.device(value)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"{label} is not a torch device: {value!r} ({exc})") from None
        if device.type != "cpu":
            try:
                torch.empty(1, device=device)
            except Exception as exc:  # e.g. "Torch not compiled with CUDA enabled", no such device index
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise ConfigError(f"{label}: device {value!r} is not usable here ({reason}); "
                                  f"use \"cpu\" or a device this torch build and machine have") from None
        return value


@dataclass(frozen=True)
class TrainConfig:
    """All settings of a training run. Construct with keywords, :meth:`from_dict` or :meth:`from_toml`."""

    # gate and loss (|dE/E| is the gate's error; the default gate's is the relative energy error)
    energy_threshold: float = setting(2e-4, "the gate: a step passes when |dE/E| <= this", number(0.0, high=1.0))
    E_lower: float = setting(1e-6, "lower edge of the loss band on |dE/E|",
                             number(1e-14, strict=False))  # ten times REL_DE_FLOOR, written exactly
    E_upper: float = setting(1e-4, "upper edge of the loss band on |dE/E|; at most energy_threshold", number(0.0))
    efficiency_weight: float = setting(1.0, "weight of the band loss on steps that pass the gate, pushing dt up "
                                            "while |dE/E| < E_lower (0 = off)", number(0.0, strict=False))
    nonfinite_penalty: float = setting(100.0, "loss of a step whose energy error is not finite", number(0.0))
    # run length
    epochs: int = setting(20, "number of epochs (Part 1 + Part 2) in total, counting resumed ones", integer(1))
    steps_per_epoch: int = setting(64, "accepted Part 1 steps per system and epoch", integer(1))
    n_steps: int = setting(1, "integrator sub-steps with the predicted dt per attempted step", integer(1))
    # Part 1
    max_retrain_steps: int = setting(1000, "consecutive rejected attempts of one system before giving up", integer(1))
    on_retrain_limit: str = setting("raise", "at max_retrain_steps: raise a RetrainLimitError, or take the step "
                                             "with the fallback predictor", one_of("raise", "fallback"))
    fallback_predictor: str = setting("freefall", "classical predictor that takes the step when on_retrain_limit "
                                                  "is fallback", name())
    stop_at_period: bool = setting(False, "stop collecting from a system once it completed its orbital period")
    # Part 2
    replay_batch_size: int = setting(512, "Part 2 minibatch size", integer(1))
    replay_steps: int = setting(1000, "cap on Part 2 iterations per epoch", integer(1))
    min_replay_size: int = setting(2, "skip Part 2 while the buffer holds fewer samples", integer(1))
    replay_scope: str = setting("persistent", "keep the replay buffer across epochs (persistent) or clear it every "
                                              "epoch (epoch)", one_of("persistent", "epoch"))
    buffer_capacity: int = setting(100_000, "most replay samples kept, oldest dropped first",
                                   integer(1, MAX_BUFFER_CAPACITY))
    # optimisation
    learning_rate: float = setting(1e-3, "Adam learning rate", number(0.0))
    lr_decay: float = setting(1.0, "the learning rate falls geometrically over the epochs to learning_rate * this "
                                   "(1 = constant)", fraction())
    grad_clip: float = setting(10.0, "gradient norm clipping (0 = off)", number(0.0, strict=False))
    seed: int = setting(0, "seed of the initial weights, the replay sampling and the training set's draws",
                        integer(0, 2**63 - 1))
    # safety calibration after training (nbtoolkit.training.calibrate)
    calibrate_pass_rate: float = setting(0.995, "after training, scale dt so that each validation system passes "
                                                "this share of its steps (0 = off)",
                                         number(0.0, high=1.0, strict=False))
    calibrate_steps: int = setting(256, "unguarded steps per validation system and calibration round", integer(1))
    # plugins (names in the registries) and their options, which the plugins declare
    integrator: str = setting("leapfrog", "integrator (see `nbtoolkit plugins`)", name())
    predictor: str = setting("mlp", "dt predictor to train", name())
    sampler: str = setting("uniform", "replay sampler: uniform, prioritized, recent, ...", name())
    gate: str = setting("energy", "gate that judges every step (training, Part 2, calibration): energy "
                                  "(whole-system |dE/E|), pair-energy, ...", name())
    predictor_options: dict[str, Any] = setting({}, "options of the dt predictor, e.g. init_factor=0.01",
                                                option_table())
    sampler_options: dict[str, Any] = setting({}, "options of the replay sampler, e.g. alpha=0.7", option_table())
    fallback_options: dict[str, Any] = setting({}, "options of the fallback predictor, e.g. eta=0.02", option_table())
    integrator_options: dict[str, Any] = setting({}, "options of the integrator", option_table())
    field: str = setting("", "external field the systems move in: plummer-host, point-mass-host, ... (\"\" = none)",
                         text())
    field_options: dict[str, Any] = setting({}, "options of the external field, e.g. mass=1000", option_table())
    # run output (not restored from checkpoints)
    checkpoint_path: str = setting("", "write a checkpoint here at the end (and every checkpoint_every epochs)",
                                   text(), flags=("--checkpoint", "--checkpoint-path"), runtime=True)
    checkpoint_every: int = setting(0, "also write the checkpoint every K epochs (0 = only at the end)", integer(0),
                                    runtime=True)
    observer_options: dict[str, Any] = setting({}, "options of the observers: progress (the terminal progress bar), "
                                                   "metrics_log (a JSONL file of the events), ...", option_table(),
                                               runtime=True)
    device: str = setting("cpu", "torch device, e.g. cpu or cuda", _Device(), runtime=True)

    def __post_init__(self) -> None:
        for s in SETTINGS:
            value = getattr(self, s.name)
            checked = s.validate(value, f"configuration key '{s.name}'")
            if checked is not value:
                object.__setattr__(self, s.name, checked)
        _cross_checks(self)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping of keys to values (top-level options are moved into their table, whose
        own entries win); unknown keys are a :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"training configuration must be a table of keys; got {type(data).__name__}")
        _reject_unknown(data)
        return cls(**_fold(data, {}))

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a TOML file (keys at top level; a ``[system]`` table is skipped)."""
        data, _ = read_toml(path)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of every key (option tables copied), suitable for TOML, JSON and checkpoints."""
        out = {s.name: getattr(self, s.name) for s in SETTINGS}
        return {key: dict(value) if isinstance(value, dict) else value for key, value in out.items()}

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some keys changed (a top-level option changes that option of its
        table); unknown keys are a :class:`ConfigError`."""
        _reject_unknown(changes)
        return dataclasses.replace(self, **_fold(changes, {table: getattr(self, table) for table in TOP_LEVEL_OPTIONS}))

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch``: ``learning_rate * lr_decay ** (epoch / (epochs - 1))``,
        falling geometrically from ``learning_rate`` in the first epoch to ``learning_rate * lr_decay``
        in the last (held there if training goes on past ``epochs``)."""
        progress = min(epoch, self.epochs - 1) / (self.epochs - 1) if self.epochs > 1 else 0.0
        return self.learning_rate * self.lr_decay**progress

    def predictor_build_options(self, accepted: set[str] | None, declared: tuple[Setting, ...] = ()) -> dict[str, Any]:
        """Options for the predictor factory: the defaults of the options it ``declared`` (but those
        unset, None), ``seed`` when it takes it (``accepted`` None means it takes ``**kwargs``: then no
        seed), then ``predictor_options`` on top. The defaults are written out so that a checkpoint
        records the whole architecture."""
        options: dict[str, Any] = {s.name: s.default for s in declared if s.default is not None}
        if accepted is not None and "seed" in accepted:
            options["seed"] = self.seed
        options.update(self.predictor_options)
        return options


#: the declared settings of :class:`TrainConfig`, in field order
SETTINGS: tuple[Setting, ...] = dataclass_settings(TrainConfig)
#: keys that describe the run, not the model: they are not restored from a checkpoint
RUNTIME_KEYS = tuple(s.name for s in SETTINGS if s.option.runtime)


def merge_sources(*sources: dict[str, Any]) -> dict[str, Any]:
    """The configuration keys of several sources (defaults, a checkpoint, a file, flags), later ones
    winning key by key. The tables of :data:`TOP_LEVEL_OPTIONS` merge option by option, top-level
    spellings included, so a flag overrides one option of a file and leaves its others."""
    out: dict[str, Any] = {}
    for source in sources:
        folded = _fold(source, {})
        tables = {table: folded.pop(table) for table in TOP_LEVEL_OPTIONS if table in folded}
        out.update(folded)
        for table, options in tables.items():
            if isinstance(options, dict) and isinstance(out.get(table, {}), dict):
                out[table] = {**out.get(table, {}), **options}
            else:
                out[table] = options  # not a table: validation names it
    return out


def _fold(data: dict[str, Any], inherited: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``data`` with its top-level options moved into their tables (whose own entries win); into
    the ``inherited`` tables where ``data`` has none of its own."""
    data = dict(data)
    for table, keys in TOP_LEVEL_OPTIONS.items():
        moved = {k: data.pop(k) for k in keys if k in data}
        if moved:
            own = data.get(table)
            if own is None:
                data[table] = {**inherited.get(table, {}), **moved}
            elif isinstance(own, dict):
                data[table] = {**moved, **own}
    return data


def saved_config(config: dict[str, Any], accepted: set[str] | None) -> dict[str, Any]:
    """The keys of a checkpoint's configuration to restore: not the run keys (:data:`RUNTIME_KEYS`,
    the observers' switches among them). Checkpoints written before the predictor declared its
    options list the architecture keys at top level whatever the predictor; those its factory
    takes (``accepted``; None: ``**kwargs``, which took none of them) go into
    ``predictor_options``, the others are dropped, as they were when that checkpoint was trained."""
    saved = {k: v for k, v in config.items() if k not in RUNTIME_KEYS and k not in TOP_LEVEL_OPTIONS["observer_options"]}
    for key in TOP_LEVEL_OPTIONS["predictor_options"]:
        if key in saved and (accepted is None or key not in accepted):
            del saved[key]
    return _fold(saved, {})


def read_toml(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Parse a training TOML file into (config keys, ``[system]`` table or None)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file '{p}' does not exist") from None
    except OSError as exc:
        raise ConfigError(f"configuration file '{p}' cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file '{p}' is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file '{p}' is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                          "TOML files must be UTF-8") from None
    system = data.pop(SYSTEM_TABLE, None)
    if system is not None and not isinstance(system, dict):
        raise ConfigError(f"configuration file '{p}': '{SYSTEM_TABLE}' must be a table")
    return data, system


# ----------------------------------------------------------------------------- validation
def _reject_unknown(data: dict[str, Any]) -> None:
    names = [s.name for s in SETTINGS] + [key for keys in TOP_LEVEL_OPTIONS.values() for key in keys]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown configuration key '{key}'{hint}")


def _cross_checks(cfg: TrainConfig) -> None:
    if not cfg.E_lower < cfg.E_upper:
        raise ConfigError(f"configuration key 'E_lower' ({cfg.E_lower:g}) must be below E_upper ({cfg.E_upper:g})")
    if cfg.E_upper > cfg.energy_threshold:
        raise ConfigError(
            f"configuration key 'E_upper' ({cfg.E_upper:g}) must not exceed energy_threshold "
            f"({cfg.energy_threshold:g}): a failing step would then have zero loss and never be retrained"
        )
