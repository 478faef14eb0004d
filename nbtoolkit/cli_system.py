"""Command-line selection of the system to run, shared by every command: ``--preset``/``--state``
with the preset parameters, and ``--field``/``--field-option`` for an external field."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import validate
from .errors import ConfigError
from .plugin_manager import PluginHost
from .state import System


def add_system_arguments(parser: argparse.ArgumentParser) -> None:
    """``--preset``/``--state`` and the preset parameters (unset ones keep the preset defaults)."""
    from .presets import PRESETS

    group = parser.add_argument_group("system")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), help="built-in initial condition")
    source.add_argument("--state", type=Path, help="initial state .npz (keys mass, position, velocity[, time, G, softening])")
    group.add_argument("--eccentricity", type=float, help="kepler: orbital eccentricity, 0 <= e < 1")
    group.add_argument("--semi-major-axis", type=float, help="kepler, kepler-batch: semi-major axis")
    group.add_argument("--masses", type=_float_list, help="kepler, kepler-batch: the two masses, e.g. 1,1")
    group.add_argument("--start", choices=["apocentre", "pericentre"], help="kepler, kepler-batch: starting point")
    group.add_argument("--num-orbits", type=int, help="kepler-batch: number of orbits in the batch")
    group.add_argument("--e-min", type=float, help="kepler-batch: smallest eccentricity")
    group.add_argument("--e-max", type=float, help="kepler-batch: largest eccentricity")
    group.add_argument("--n", type=int, help="plummer: number of bodies")
    group.add_argument("--seed", type=int, help="random seed (plummer, kepler-batch; training)")


PRESET_FLAGS = ("eccentricity", "semi_major_axis", "masses", "start", "num_orbits", "e_min", "e_max", "n", "seed")


def preset_flag_values(args: argparse.Namespace, name: str, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset parameters set by flags (unset ones omitted); a flag the preset does not take is an error."""
    from .presets import PRESETS

    accepted = PRESETS[name].params
    given = {k: getattr(args, k) for k in PRESET_FLAGS if k not in exclude and getattr(args, k, None) is not None}
    unused = sorted(k for k in given if k not in accepted)
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise ConfigError(f"preset '{name}' does not take {flags}; it takes: {', '.join(sorted(accepted)) or '(nothing)'}")
    return given


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def load_system(args: argparse.Namespace, default_preset: str | None = None) -> System:
    """The system to run, from ``--state`` (no period) or ``--preset`` and its flags."""
    from .io import load_state
    from .presets import make_preset

    if args.state is not None:
        return System(load_state(args.state))
    name = args.preset or default_preset
    if name is None:
        raise ConfigError("give --preset NAME or --state FILE")
    return make_preset(name, **preset_flag_values(args, name))


def with_field(host: PluginHost, system: System, args: argparse.Namespace) -> System:
    """``system`` in the external field of ``--field NAME`` (built with its ``--field-option``s), or
    unchanged without ``--field``."""
    options = validate.option_dict(args.field_option, "--field-option")
    if args.field is None:
        if options:
            raise ConfigError("--field-option needs --field NAME (see `nbtoolkit plugins` for the external fields)")
        return system
    return System(system.state.replace(field=host.fields.create(args.field, **options)), system.period)
