"""Declared settings: a setting's name, type, default, help and check are written once, where it belongs.

A setting is a Python declaration with an :class:`Option` attached: a field of a dataclass
(``field(default=..., metadata={"option": Option(...)})``, as :class:`~nbtoolkit.training.TrainConfig`
does through :func:`setting`) or a keyword parameter of a plugin's factory::

    def __init__(self, hidden_width: Annotated[int, Option("width of the hidden layers", integer(1))] = 64): ...

The declaration gives the name, the type and the default; the :class:`Option` gives the help text
(which never restates the default: whoever prints it takes the default from the declaration) and
the check. Validation, the command line's flags, TOML tables and the settings reference
(``docs/settings.md``) all read the same :class:`Setting`.

A check is called as ``check(label, value)`` and returns the value, normalised (an integer given
for a float becomes a float), or raises :class:`~nbtoolkit.errors.ConfigError` with ``label`` (for
example ``configuration key 'epochs'``) at the start of its message; ``check.rule`` says in words
what it accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, DuplicateNameError, OptionError, PluginError


def _fmt(bound: float) -> str:
    """``:g`` unless that rounds the bound (then the exact repr), so messages never contradict themselves."""
    short = f"{bound:g}"
    return short if float(short) == bound else repr(bound)


# ----------------------------------------------------------------------------- checks
class Check:
    """Base of the checks: ``check(label, value)`` returns the accepted value or raises ConfigError."""

    rule = "any value"
    choices: tuple[str, ...] = ()

    def __call__(self, label: str, value: Any) -> Any:
        return value


class integer(Check):
    """An integer (a float with an integral value is accepted), at least ``low`` and at most ``high``
    where they are given."""

    def __init__(self, low: int | None = None, high: int | None = None) -> None:
        self.low, self.high = low, high
        if low is None:
            self.range = "" if high is None else f"<= {high}"
        else:
            self.range = f">= {low}" if high is None else f"in [{low}, {high}]"
        self.rule = f"an integer {self.range}".rstrip()

    def __call__(self, label: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise ConfigError(f"{label} must be an integer; got {value!r}")
        value = int(value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigError(f"{label} must be {self.range}; got {value}")
        return value


class number(Check):
    """A finite float, above ``low`` (or at it, with ``strict=False``) and below ``high`` (or at it,
    with ``high_strict=False``) where they are given."""

    def __init__(self, low: float | None = None, *, strict: bool = True, high: float | None = None,
                 high_strict: bool = True) -> None:
        self.low, self.strict, self.high, self.high_strict = low, strict, high, high_strict
        bounds = [] if low is None else [f"{'>' if strict else '>='} {_fmt(low)}"]
        bounds += [] if high is None else [f"{'<' if high_strict else '<='} {_fmt(high)}"]
        self.range = " and ".join(bounds)
        self.rule = f"a finite number {self.range}".rstrip()

    def __call__(self, label: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label} must be a number; got {value!r}")
        value = float(value)
        ok = math.isfinite(value) and (self.low is None or (value > self.low if self.strict else value >= self.low)) \
            and (self.high is None or (value < self.high if self.high_strict else value <= self.high))
        if not ok:
            raise ConfigError(f"{label} must be finite{' and ' + self.range if self.range else ''}; got {value!r}")
        return value


class fraction(Check):
    """A number in (0, 1]."""

    rule = "a number in (0, 1]"

    def __call__(self, label: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
            raise ConfigError(f"{label} must be a number in (0, 1]; got {value!r}")
        return float(value)


class one_of(Check):
    """One of the given strings."""

    def __init__(self, *choices: str) -> None:
        self.choices = tuple(choices)
        self.rule = "one of " + ", ".join(choices)

    def __call__(self, label: str, value: Any) -> str:
        if value not in self.choices:
            raise ConfigError(f"{label} must be one of {', '.join(self.choices)}; got {value!r}")
        return value


class name(Check):
    """A non-empty string (a name in a registry)."""

    rule = "a non-empty name"

    def __call__(self, label: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{label} must be a non-empty name; got {value!r}")
        return value


class name_or(Check):
    """A name in a registry (a non-empty string) or, given from Python, an object of class ``cls``:
    what a plugin that wraps another plugin (the ``symmetric`` predictor's base) takes. ``kind``
    names the registry in messages."""

    def __init__(self, cls: type, kind: str) -> None:
        self.cls = cls
        self.rule = f"a registered {kind} name, or from Python an object of class {cls.__name__}"

    def __call__(self, label: str, value: Any) -> Any:
        if isinstance(value, self.cls) or (isinstance(value, str) and value.strip()):
            return value
        raise ConfigError(f"{label} must be {self.rule}; got {value!r}")


class _instance_of(Check):
    """A value of Python type ``kind``, taken as it is."""

    kind: type = object

    def __call__(self, label: str, value: Any) -> Any:
        if not isinstance(value, self.kind):
            raise ConfigError(f"{label} must be {self.rule}; got {value!r}")
        return value


class text(_instance_of):
    """Any string."""

    kind, rule = str, "a string"


class boolean(_instance_of):
    """True or false."""

    kind, rule = bool, "true or false"


class option_table(Check):
    """A table of option names to plain values (numbers, strings, booleans): a plugin's options."""

    rule = "a table of options (KEY = number, string or boolean)"

    def __call__(self, label: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{label} must be a table of option names to values; got {value!r}")
        for key, item in value.items():
            if not isinstance(item, (bool, int, float, str)):
                raise ConfigError(f"{label}: option '{key}' must be a number, string or boolean; got {item!r}")
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{label}: option '{key}' must be finite; got {item!r}")
        return dict(value)


#: the check of a declared type that has no check of its own
_TYPE_CHECKS: dict[Any, Check] = {bool: boolean(), int: integer(), float: number(), str: text()}


# ----------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Option:
    """What a declaration adds to a name, type and default: the help text and the check.

    ``flags``: the command-line flags, where they are not ``--name-with-dashes``; ``runtime``: the
    setting describes the run, not the model (a checkpoint does not restore it).
    """

    help: str
    check: Check | None = None
    flags: tuple[str, ...] = ()
    runtime: bool = False


@dataclass(frozen=True)
class Setting:
    """One declared setting: ``name``, ``type`` (int, float, str, bool, dict, ...), ``default`` and its
    :class:`Option`."""

    name: str
    type: Any
    default: Any
    option: Option

    @property
    def help(self) -> str:
        return self.option.help

    @property
    def check(self) -> Check | None:
        return self.option.check or _TYPE_CHECKS.get(self.type)

    @property
    def choices(self) -> tuple[str, ...]:
        return self.check.choices if self.check is not None else ()

    @property
    def rule(self) -> str:
        return self.check.rule if self.check is not None else "any value"

    def validate(self, value: Any, label: str) -> Any:
        """``value`` checked (and normalised) by the declared check; ``label`` starts the error message.
        A setting whose default is None (unset) also takes None."""
        if self.check is None or (value is None and self.default is None):
            return value
        return self.check(label, value)


def setting(default: Any, help: str, check: Check | None = None, *, flags: tuple[str, ...] = (),
            runtime: bool = False) -> Any:
    """A dataclass field declaring a setting: its default and its :class:`Option` (a dict or list
    default is copied for every instance)."""
    option = Option(help, check, flags, runtime)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=functools.partial(type(default), default), metadata={"option": option})
    return dataclasses.field(default=default, metadata={"option": option})


def _base_type(annotation: Any) -> Any:
    """``int`` of ``int`` or ``Annotated[int, ...]``; ``dict`` of ``dict[str, Any]``."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_origin(annotation) or annotation


def dataclass_settings(cls: type) -> tuple[Setting, ...]:
    """The settings declared by the fields of dataclass ``cls`` (every field must carry an :class:`Option`)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        out.append(Setting(f.name, _base_type(hints[f.name]), default, f.metadata["option"]))
    return tuple(out)


@functools.cache
def declared_options(factory: Callable[..., Any]) -> tuple[Setting, ...]:
    """The options a plugin's factory declares: its keyword parameters annotated
    ``Annotated[type, Option(...)]``, with their defaults. A factory whose annotations cannot be
    resolved declares none."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target, include_extras=True)
        parameters = inspect.signature(factory).parameters
    except Exception:  # unresolvable annotations or no signature: nothing declared
        return ()
    out = []
    for key, parameter in parameters.items():
        hint = hints.get(key)
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        option = next((a for a in typing.get_args(hint)[1:] if isinstance(a, Option)), None)
        if option is not None and parameter.default is not inspect.Parameter.empty:
            out.append(Setting(key, _base_type(hint), parameter.default, option))
    return tuple(out)


def check_options(declared: Iterable[Setting], given: dict[str, Any], owner: str) -> dict[str, Any]:
    """``given`` with every declared option checked and normalised; a refused value is an
    :class:`~nbtoolkit.errors.OptionError` naming the option and ``owner`` (e.g. ``dt predictor 'mlp'
    (plugin 'plugins.mlp_predictor')``)."""
    out = dict(given)
    for s in declared:
        if s.name in out:
            try:
                out[s.name] = s.validate(out[s.name], f"option '{s.name}' of {owner}")
            except ConfigError as exc:
                raise OptionError(str(exc)) from None
    return out


def check_arguments(factory: Callable[..., Any], **values: Any) -> dict[str, Any]:
    """``values``, arguments of ``factory``, checked and normalised by the options it declares: for a
    factory that is also called directly, not only through :meth:`~nbtoolkit.registry.Registry.create`
    (which checks them first). A refused value is an :class:`~nbtoolkit.errors.OptionError` naming
    the option and ``factory``."""
    return check_options(declared_options(factory), values, getattr(factory, "__qualname__", repr(factory)))


class DeclaredOptions(dict[str, tuple[Setting, str]]):
    """Options that plugins declare through a hook (the observers' ``observer_options``), by name:
    (the declaration, the plugin that declared it). ``kind`` ("observer") is used in messages."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, setting: Setting, plugin: str) -> None:
        """The ``register`` callback of the declaring hook, with ``plugin`` bound. Declaring a name
        that another plugin declared is an error, unless it is the same :class:`Setting` object."""
        if not isinstance(setting, Setting):
            raise PluginError(f"plugin '{plugin}' declared a {self.kind} option that is not an "
                              f"nbtoolkit.options.Setting: {setting!r}")
        if setting.name in self:
            if self[setting.name][0] is setting:
                return  # the same declaration again: a second instance of the same observer
            raise DuplicateNameError(f"{self.kind} option '{setting.name}' is declared twice: by plugin "
                                     f"'{self[setting.name][1]}' and by plugin '{plugin}'")
        self[setting.name] = (setting, plugin)

    def resolve(self, given: dict[str, Any], where: str) -> dict[str, Any]:
        """``given`` (the table ``where``) checked by the declarations, with the declared defaults filled
        in. An option no plugin declares is a ConfigError; a refused value an OptionError naming the
        plugin and the option."""
        unknown = [key for key in given if key not in self]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(self), n=1)
            known = ", ".join(f"{key} (plugin {plugin})" for key, (_, plugin) in sorted(self.items())) or "none"
            raise ConfigError(f"{where}: no {self.kind} declares option '{unknown[0]}' (declared: {known})"
                              + (f"; did you mean '{close[0]}'?" if close else ""))
        out = {}
        for key, (s, plugin) in self.items():
            out[key] = check_options((s,), given, f"{self.kind} plugin '{plugin}'")[key] if key in given else s.default
        return out


def format_default(value: Any) -> str:
    """A default as the help and the docs show it (``2e-4`` as ``0.0002``, booleans as on / off, the
    empty string as ``""``, None as unset)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return _fmt(value)
    return '""' if value == "" else str(value)
