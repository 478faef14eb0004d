"""Checks of user-given numbers, paths and states, shared by the command line and the API.

Every check raises :class:`~nbtoolkit.errors.ConfigError` (an :class:`NBToolkitError`) whose
message names the flag, key or parameter at fault and the value it got. The ``arg_*`` helpers
build ``argparse`` types from them, so a bad flag is reported by argparse (usage line, then
``argument --orbits: ...``, exit status 2) before any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, InvalidStateError

#: a state whose total energy is below this fraction of its energy scale T + |U| counts as E = 0
ZERO_ENERGY_FRACTION = 1e-9


def _fmt(value: float) -> str:
    """A bound as text: ``:g`` when that reads back exactly, else the full repr."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the given range, else a :class:`ConfigError` naming ``name``."""
    rule = "a finite number"
    if low is not None:
        rule += f" {'>' if low_open else '>='} {_fmt(low)}"
    if high is not None:
        rule += f"{' and' if low is not None else ''} {'<' if high_open else '<='} {_fmt(high)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import torch

            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = float(value)
            else:
                raise TypeError
        except TypeError:
            raise ConfigError(f"{name} must be {rule}; got {value!r}") from None
    x = float(value)
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        raise ConfigError(f"{name} must be {rule}; got {value!r}")
    return x


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high], else a :class:`ConfigError` naming ``name``."""
    rule = "an integer" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise ConfigError(f"{name} must be {rule}; got {value!r}")
    x = int(value)
    if (low is not None and x < low) or (high is not None and x > high):
        raise ConfigError(f"{name} must be {rule}; got {value!r}")
    return x


# ----------------------------------------------------------------------------- argparse types
def _arg_type(check: Callable[[str], Any], convert: Callable[[str], Any], kind: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check(value)
        except ConfigError as exc:
            message = str(exc).replace("value ", "", 1)
            cut = message.rfind("; got ")
            raise argparse.ArgumentTypeError(f"{message[:cut] if cut >= 0 else message}; got {text}") from None
    parse.__name__ = kind  # argparse names the type in some messages
    return parse


def arg_number(*, low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` accepting a finite float in range (``nan``/``inf`` are refused)."""
    return _arg_type(lambda v: number("value", v, low=low, high=high, low_open=low_open, high_open=high_open),
                     float, "a number")


def arg_integer(*, low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` accepting an integer in range."""
    return _arg_type(lambda v: integer("value", v, low=low, high=high), int, "an integer")


# ----------------------------------------------------------------------------- run parameters
def run_span(*, t_end: Any = None, orbits: Any = None, guard_threshold: Any = None, max_halvings: Any = None,
             max_steps: Any = None, threshold: Any = None) -> None:
    """Check the run parameters of :func:`~nbtoolkit.simulate.simulate` and the evaluation functions
    (only those given): end time finite, orbits finite and > 0, thresholds finite and > 0,
    ``max_halvings`` >= 0, ``max_steps`` >= 1."""
    if t_end is not None and not hasattr(t_end, "shape"):
        number("t_end", t_end)
    elif t_end is not None:
        import torch

        t = torch.as_tensor(t_end)
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(f"t_end must be finite; got {t_end!r}")
    if orbits is not None:
        number("orbits", orbits, low=0, low_open=True)
    if guard_threshold is not None:
        number("guard_threshold", guard_threshold, low=0, low_open=True)
    if threshold is not None:
        number("threshold", threshold, low=0, low_open=True)
    if max_halvings is not None:
        integer("max_halvings", max_halvings, low=0)
    if max_steps is not None:
        integer("max_steps", max_steps, low=1)


# ----------------------------------------------------------------------------- energy normaliser
def energy_normalisable(state: Any, where: str = "state") -> None:
    """Refuse systems whose total energy is zero (to round-off), where |dE/E| is undefined.

    A system counts as E = 0 when |E| <= :data:`ZERO_ENERGY_FRACTION` * (T + |U|), which
    covers a lone body at rest (T = U = 0) and a parabolic pair (T = -U). Raises
    :class:`InvalidStateError` naming the system and its energies.
    """
    from .physics import kinetic_energy, potential_energy

    kinetic = kinetic_energy(state.mass, state.velocity).detach()
    potential = potential_energy(state.mass, state.position, state.G, state.softening).detach()
    total = kinetic + potential
    zero = total.abs() <= ZERO_ENERGY_FRACTION * (kinetic + potential.abs())
    if bool(zero.any()):
        b = int(zero.nonzero()[0, 0])
        raise InvalidStateError(
            f"{where}: system {b} has total energy E = {float(total[b]):.3g} (kinetic {float(kinetic[b]):.3g}, "
            f"potential {float(potential[b]):.3g}), zero to round-off, so the relative energy error |dE/E| "
            "that the energy gate measures is undefined; nbtoolkit refuses such states (a lone body, or "
            "bodies on exactly parabolic orbits). Give the system a bound or hyperbolic energy"
        )


# ----------------------------------------------------------------------------- memory
def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable, else physical memory), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def state_memory(batch: int, bodies: int, dim: int, itemsize: int = 8) -> tuple[int, int]:
    """(bytes to hold and step a state, bytes of that for the pairwise force kernel): a few copies of
    mass, positions, velocities and accelerations, plus the (B, N, N, D + 2) pair intermediates."""
    pair = itemsize * batch * bodies * bodies * (dim + 2)
    return 4 * itemsize * batch * bodies * (1 + 3 * dim) + pair, pair


def check_state_memory(batch: int, bodies: int, dim: int, where: str = "state", *,
                       available: Callable[[], int | None] | None = None, error: type[Exception] = InvalidStateError) -> None:
    """Refuse, before allocating it, a state whose force evaluation would not fit in the memory available."""
    need, pair = state_memory(batch, bodies, dim)
    if need < 2**26 and available is None:
        return  # small states: no need to ask the system
    have = (available or available_memory)()
    if have is not None and need > have:
        raise error(
            f"{where}: {batch} system(s) of {bodies} bodies in {dim}-D need about {_gib(need)} of memory to step "
            f"(the pairwise forces alone take {_gib(pair)}); only {_gib(have)} is available. Use fewer bodies or systems"
        )


# ----------------------------------------------------------------------------- output paths
def writable_file(path: str | os.PathLike[str] | None, what: str) -> None:
    """Check, before any work starts, that ``path`` can be written (atomically, via a temporary
    file in its directory). Raises :class:`ConfigError` naming ``what`` and the path."""
    if path is None or str(path) == "":
        return
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ConfigError(f"{what} '{target}' is a directory; give a file name")
    if not folder.is_dir():
        raise ConfigError(f"{what} '{target}': directory '{folder}' does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.probe.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ConfigError(f"{what} '{target}': cannot write into directory '{folder}' ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    if target.exists() and not os.access(target, os.W_OK) and not os.access(folder, os.W_OK):
        raise ConfigError(f"{what} '{target}' exists and cannot be replaced")


# ----------------------------------------------------------------------------- KEY=VALUE options
def option_pair(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` (an argparse ``type``). VALUE is read as a TOML value when it is one:
    ``0.02`` and ``1e-3`` are floats, ``8`` an int, ``true``/``false`` booleans, ``"text"`` a
    string; anything else (``tanh``) is kept as the plain string."""
    import tomllib

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"option {key.strip()} must be finite; got {raw.strip()!r}")
    return key.strip(), value


def predictor_spec(text: str) -> tuple[str, dict[str, Any], str]:
    """Parse ``NAME`` or ``NAME:KEY=VALUE[,KEY=VALUE...]`` (an argparse ``type``): a registered
    predictor, its factory options, each VALUE read as :func:`option_pair` reads it, and the text
    as given (stripped), to name it by."""
    name, sep, rest = text.partition(":")
    if not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME or NAME:KEY=VALUE,..., got {text!r}")
    options: dict[str, Any] = {}
    for item in rest.split(",") if sep else []:
        key, value = option_pair(item)
        if key in options:
            raise argparse.ArgumentTypeError(f"option {key} is given twice in {text!r}")
        options[key] = value
    return name.strip(), options, text.strip()


def option_dict(pairs: list[tuple[str, Any]] | None, flag: str) -> dict[str, Any]:
    """The options of a repeatable ``KEY=VALUE`` flag; a key given twice is a :class:`ConfigError`."""
    out: dict[str, Any] = {}
    for key, value in pairs or []:
        if key in out:
            raise ConfigError(f"{flag} {key} is given twice")
        out[key] = value
    return out
