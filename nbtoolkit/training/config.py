"""The validated training configuration, :class:`TrainConfig`, loadable from TOML.

Every key has a default (the seed's where it defines one), a type and an allowed range;
unknown keys and out-of-range values raise :class:`~nbtoolkit.errors.ConfigError` naming the
key. Energies are relative energy errors |dE/E| per step (dimensionless); dt is in the time
unit of the state.

A TOML file holds the keys at top level. A ``[system]`` table (``preset = "kepler-batch"``
plus that preset's parameters) is reserved for the command line, which builds the initial
state from it; :meth:`TrainConfig.from_toml` skips it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import torch

from ..errors import ConfigError

#: activations the ``mlp`` predictor understands
ACTIVATIONS = ("tanh", "silu", "relu", "gelu", "softplus")
#: below this |dE/E| a step's energy error is round-off, not signal; E_lower may not go lower
REL_DE_FLOOR = 1e-15
#: keys that describe the run, not the model: they are not restored from a checkpoint
RUNTIME_KEYS = ("checkpoint_path", "checkpoint_every", "metrics_log", "progress", "device")
#: keys passed to a dt-predictor factory when it accepts them
ARCHITECTURE_KEYS = ("history_len", "hidden_width", "hidden_layers", "activation", "fourier_features", "fourier_scale")
#: largest buffer torch.multinomial (used by the non-uniform samplers) can draw from
MAX_BUFFER_CAPACITY = 2**24
#: the reserved TOML table describing the system to train on
SYSTEM_TABLE = "system"


@dataclass(frozen=True)
class TrainConfig:
    """All settings of a training run. Construct with keywords, :meth:`from_dict` or :meth:`from_toml`."""

    # gate and loss (|dE/E| is the gate's error; the default gate's is the relative energy error)
    energy_threshold: float = 2e-4  #: a step passes when |dE/E| <= this
    E_lower: float = 1e-6  #: lower edge of the loss band on |dE/E|
    E_upper: float = 1e-4  #: upper edge of the loss band; must not exceed energy_threshold
    efficiency_weight: float = 1.0  #: weight of the band loss on steps that pass the gate (0 = off)
    nonfinite_penalty: float = 100.0  #: loss of a step whose energy error is not finite
    # run length
    epochs: int = 20
    steps_per_epoch: int = 64  #: accepted Part 1 steps per system and epoch
    n_steps: int = 1  #: integrator sub-steps with the predicted dt per attempted step
    # Part 1
    max_retrain_steps: int = 1000  #: consecutive rejected attempts of one system before giving up
    on_retrain_limit: str = "raise"  #: "raise" (RetrainLimitError) or "fallback" (classical dt)
    fallback_predictor: str = "freefall"  #: classical predictor used by on_retrain_limit = "fallback"
    stop_at_period: bool = False  #: stop collecting from a system once it completed its orbital period
    # Part 2
    replay_batch_size: int = 512
    replay_steps: int = 1000  #: cap on Part 2 iterations per epoch
    min_replay_size: int = 2  #: below this many samples Part 2 is skipped
    replay_scope: str = "persistent"  #: "persistent" buffer across epochs, or "epoch" (cleared each epoch)
    buffer_capacity: int = 100_000  #: most samples kept (oldest overwritten first)
    # optimisation
    learning_rate: float = 1e-3
    lr_decay: float = 1.0  #: the learning rate falls geometrically to learning_rate * lr_decay over the epochs (1 = constant)
    grad_clip: float = 10.0  #: max gradient norm (0 = no clipping)
    seed: int = 0
    # safety calibration after training (nbtoolkit.training.calibrate)
    calibrate_pass_rate: float = 0.995  #: share of validation steps the calibrated dt must pass, per system (0 = off)
    calibrate_steps: int = 256  #: unguarded steps of each validation system per calibration round
    # plugins (names in the registries) and their extra options
    integrator: str = "leapfrog"
    predictor: str = "mlp"
    sampler: str = "uniform"
    gate: str = "energy"  #: the gate that judges every step (training, Part 2, calibration)
    predictor_options: dict[str, Any] = field(default_factory=dict)
    sampler_options: dict[str, Any] = field(default_factory=dict)
    fallback_options: dict[str, Any] = field(default_factory=dict)
    integrator_options: dict[str, Any] = field(default_factory=dict)
    field: str = ""  #: external field the systems move in (a name in the registry; "" = none)
    field_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # architecture of the learned predictor
    history_len: int = 0  #: K past accepted states the predictor sees
    hidden_width: int = 64
    hidden_layers: int = 2
    activation: str = "tanh"
    fourier_features: int = 0  #: random Fourier features of the inputs (0 = off)
    fourier_scale: float = 1.0  #: standard deviation of the Fourier frequencies
    # run output (not restored from checkpoints)
    checkpoint_path: str = ""  #: write a checkpoint here at the end (and every checkpoint_every epochs)
    checkpoint_every: int = 0  #: 0 = only at the end
    metrics_log: str = ""  #: JSONL file the metrics-log observer appends to ("" = off)
    progress: bool = False  #: show the terminal progress bar (the CLI turns it on)
    device: str = "cpu"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = _RULES[f.name](f.name, value)
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        _cross_checks(self)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping of keys to values; unknown keys are a :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"training configuration must be a table of keys; got {type(data).__name__}")
        _reject_unknown(data)
        return cls(**data)

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
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("predictor_options", "sampler_options", "fallback_options", "integrator_options"):
            out[key] = dict(out[key])
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some keys changed; unknown keys are a :class:`ConfigError`."""
        _reject_unknown(changes)
        return dataclasses.replace(self, **changes)

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch``: ``learning_rate * lr_decay ** (epoch / (epochs - 1))``,
        falling geometrically from ``learning_rate`` in the first epoch to ``learning_rate * lr_decay``
        in the last (held there if training goes on past ``epochs``)."""
        progress = min(epoch, self.epochs - 1) / (self.epochs - 1) if self.epochs > 1 else 0.0
        return self.learning_rate * self.lr_decay**progress

    def predictor_build_options(self, accepted: set[str] | None) -> dict[str, Any]:
        """Options for the predictor factory: the architecture keys and ``seed`` it accepts
        (``accepted`` None means it takes ``**kwargs``: then only ``predictor_options``), then
        ``predictor_options`` on top."""
        options: dict[str, Any] = {}
        if accepted is not None:
            for key in (*ARCHITECTURE_KEYS, "seed"):
                if key in accepted:
                    options[key] = getattr(self, key)
        options.update(self.predictor_options)
        return options


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
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown configuration key '{key}'{hint}")


def _int(low: int, high: int | None = None) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise ConfigError(f"configuration key '{name}' must be an integer; got {value!r}")
        value = int(value)
        if value < low or (high is not None and value > high):
            rng = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ConfigError(f"configuration key '{name}' must be {rng}; got {value}")
        return value
    return check


def _float(low: float, *, strict: bool = True, high: float | None = None) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"configuration key '{name}' must be a number; got {value!r}")
        value = float(value)
        ok = math.isfinite(value) and (value > low if strict else value >= low) and (high is None or value < high)
        if not ok:
            rng = f"{'>' if strict else '>='} {_fmt(low)}" + (f" and < {_fmt(high)}" if high is not None else "")
            raise ConfigError(f"configuration key '{name}' must be finite and {rng}; got {value!r}")
        return value
    return check


def _fmt(bound: float) -> str:
    """``:g`` unless that rounds the bound (then the exact repr), so messages never contradict themselves."""
    short = f"{bound:g}"
    return short if float(short) == bound else repr(bound)


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in options:
            raise ConfigError(f"configuration key '{name}' must be one of {', '.join(options)}; got {value!r}")
        return value
    return check


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
        raise ConfigError(f"configuration key '{name}' must be a number in (0, 1]; got {value!r}")
    return float(value)


def _name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"configuration key '{name}' must be a non-empty name; got {value!r}")
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"configuration key '{name}' must be a string; got {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"configuration key '{name}' must be true or false; got {value!r}")
    return value


def _options(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"configuration key '{name}' must be a table of option names to values; got {value!r}")
    for key, item in value.items():
        if not isinstance(item, (bool, int, float, str)):
            raise ConfigError(f"configuration key '{name}': option '{key}' must be a number, string or boolean; got {item!r}")
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"configuration key '{name}': option '{key}' must be finite; got {item!r}")
    return dict(value)


def _device(name: str, value: Any) -> str:
    _text(name, value)
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"configuration key '{name}' is not a torch device: {value!r} ({exc})") from None
    if device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except Exception as exc:  # e.g. "Torch not compiled with CUDA enabled", no such device index
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(f"configuration key '{name}': device {value!r} is not usable here ({reason}); "
                              f"use \"cpu\" or a device this torch build and machine have") from None
    return value


_RULES: dict[str, Callable[[str, Any], Any]] = {
    "energy_threshold": _float(0.0, high=1.0),
    "E_lower": _float(1e-14, strict=False),  # ten times REL_DE_FLOOR, written exactly
    "E_upper": _float(0.0),
    "efficiency_weight": _float(0.0, strict=False),
    "nonfinite_penalty": _float(0.0),
    "epochs": _int(1),
    "steps_per_epoch": _int(1),
    "n_steps": _int(1),
    "max_retrain_steps": _int(1),
    "on_retrain_limit": _choice(("raise", "fallback")),
    "fallback_predictor": _name,
    "stop_at_period": _bool,
    "replay_batch_size": _int(1),
    "replay_steps": _int(1),
    "min_replay_size": _int(1),
    "replay_scope": _choice(("persistent", "epoch")),
    "buffer_capacity": _int(1, MAX_BUFFER_CAPACITY),
    "learning_rate": _float(0.0),
    "lr_decay": _fraction,
    "grad_clip": _float(0.0, strict=False),
    "seed": _int(0, 2**63 - 1),
    "calibrate_pass_rate": _float(0.0, high=1.0, strict=False),
    "calibrate_steps": _int(1),
    "integrator": _name,
    "predictor": _name,
    "sampler": _name,
    "gate": _name,
    "predictor_options": _options,
    "sampler_options": _options,
    "fallback_options": _options,
    "integrator_options": _options,
    "field": _text,
    "field_options": _options,
    "history_len": _int(0, 1024),
    "hidden_width": _int(1),
    "hidden_layers": _int(1),
    "activation": _choice(ACTIVATIONS),
    "fourier_features": _int(0),
    "fourier_scale": _float(0.0),
    "checkpoint_path": _text,
    "checkpoint_every": _int(0),
    "metrics_log": _text,
    "progress": _bool,
    "device": _device,
}


def _cross_checks(cfg: TrainConfig) -> None:
    if not cfg.E_lower < cfg.E_upper:
        raise ConfigError(f"configuration key 'E_lower' ({cfg.E_lower:g}) must be below E_upper ({cfg.E_upper:g})")
    if cfg.E_upper > cfg.energy_threshold:
        raise ConfigError(
            f"configuration key 'E_upper' ({cfg.E_upper:g}) must not exceed energy_threshold "
            f"({cfg.energy_threshold:g}): a failing step would then have zero loss and never be retrained"
        )
