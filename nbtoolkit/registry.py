"""Named registries of plugin-provided factories (integrators, dt predictors, replay samplers, gates,
external fields), and the identity they stamp on what they build.

:meth:`Registry.create` sets ``obj.registry_identity`` to a :class:`RegistryIdentity` (the kind,
the name it was built by, the plugin that registered that name and where the plugin came from),
so that an error about the object names its plugin wherever the object travels: through the
command line, the Python API, training or the viewer. :func:`describe` turns an object into that
description, and describes an object built outside the registries (a user's own ``nn.Module``
passed directly) by its class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import DuplicateNameError, PluginError, UnknownNameError
from .options import Setting, check_options, declared_options

#: the attribute that :meth:`Registry.create` sets on the objects it builds
IDENTITY_ATTRIBUTE = "registry_identity"


@dataclass(frozen=True)
class RegistryIdentity:
    """Where a built object came from: the registry's ``kind`` ("integrator", "dt predictor", ...),
    the ``name`` it was built by, the ``plugin`` that registered that name and the plugin's
    ``source`` (``module plugins.integrators``, or a distribution such as ``nbtoolkit-pefrl 0.1.0``)."""

    kind: str
    name: str
    plugin: str
    source: str

    def __str__(self) -> str:
        return f"{self.kind} '{self.name}' (plugin '{self.plugin}' from {self.source})"


def identity_of(obj: object) -> RegistryIdentity | None:
    """The identity :meth:`Registry.create` stamped on ``obj``, or None (built outside the registries,
    or an object that takes no attributes)."""
    try:
        identity = getattr(obj, IDENTITY_ATTRIBUTE, None)
    except Exception:  # an odd __getattr__ must not hide the error being reported
        return None
    return identity if isinstance(identity, RegistryIdentity) else None


def describe(obj: object, kind: str) -> str:
    """``obj`` for messages: ``dt predictor 'mlp' (plugin 'plugins.mlp_predictor' from module
    plugins.mlp_predictor)`` for an object built by a registry; for any other object, ``kind`` and
    its class (``dt predictor MyRule (class my_module.MyRule, not built by a plugin registry)``), or
    for a plain function the function itself."""
    identity = identity_of(obj)
    if identity is not None:
        return str(identity)
    what, named = ("function", obj) if inspect.isroutine(obj) else ("class", type(obj))
    name = getattr(named, "__qualname__", type(obj).__qualname__)
    return f"{kind} {name} ({what} {getattr(named, '__module__', '?')}.{name}, not built by a plugin registry)"


def stamp(obj: object, identity: RegistryIdentity) -> None:
    """Set ``obj.registry_identity = identity``, where ``obj`` takes attributes.

    The attribute is set with ``object.__setattr__``: an ``nn.Module`` keeps it as a plain
    attribute (not a parameter, buffer or state-dict entry), and a frozen dataclass takes it
    without its fields, equality or hash changing. Objects without an instance ``__dict__`` (a
    class with ``__slots__``, a bound method, a built-in function) cannot carry it; they are
    returned unstamped and described by their class.
    """
    try:
        object.__setattr__(obj, IDENTITY_ATTRIBUTE, identity)
    except (AttributeError, TypeError):
        pass


@dataclass(frozen=True)
class RegistryEntry:
    """One registered name: the factory and the plugin (and its module or distribution) that gave it."""

    name: str
    factory: Callable[..., Any]
    plugin: str
    source: str

    def accepted_options(self) -> set[str] | None:
        """Keyword options the factory takes, or None if it takes ``**kwargs`` (anything)."""
        try:
            params = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def options(self) -> tuple[Setting, ...]:
        """The options the factory declares (see :mod:`nbtoolkit.options`): type, default, help and check."""
        return declared_options(self.factory)


class Registry:
    """Maps names to :class:`RegistryEntry`; ``kind`` ("integrator", ...) is used in messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry] = {}
        #: returns extra text for "unknown name" errors (the host lists plugins it did not load)
        self.unknown_hint: Callable[[str], str] = lambda name: ""

    def add(self, name: str, factory: Callable[..., Any], plugin: str, source: str = "") -> RegistryEntry:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}' registered a {self.kind} with an invalid name {name!r}")
        if not callable(factory):
            raise PluginError(
                f"plugin '{plugin}' registered {self.kind} '{name}' with a factory that is not callable "
                f"({type(factory).__name__})"
            )
        if name in self._entries:
            other = self._entries[name]
            raise DuplicateNameError(
                f"{self.kind} '{name}' is registered twice: by plugin '{other.plugin}' and by plugin '{plugin}'"
            )
        entry = RegistryEntry(name, factory, plugin, source or plugin)
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> RegistryEntry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} '{name}'; known: {known}{self.unknown_hint(name)}") from None

    def checked_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` for the named factory, checked and normalised by its declarations (see
        :mod:`nbtoolkit.options`) without building anything. An option the factory does not accept
        is a ``PluginError`` naming it; a value that the factory's declaration of an option refuses
        is an ``OptionError`` naming the entry, its plugin and the option."""
        entry = self.get(name)
        accepted = entry.accepted_options()
        if accepted is not None:
            unknown = sorted(set(options) - accepted)
            if unknown:
                raise PluginError(
                    f"{self.kind} '{name}' (plugin '{entry.plugin}' from {entry.source}) does not take option(s) "
                    f"{', '.join(unknown)}; it takes: {', '.join(sorted(accepted)) or '(none)'}"
                )
        return check_options(entry.options(), options, f"{self.kind} '{name}' (plugin '{entry.plugin}')")

    def create(self, name: str, **options: Any) -> Any:
        """Build the named object, passing ``options`` (checked by :meth:`checked_options`) to its
        factory, and stamp its :class:`RegistryIdentity` on it (``obj.registry_identity``; see
        :func:`stamp`).

        A factory that raises is reported with the plugin that provided it. A factory that returns
        the same object for several names (or under several registries) leaves it with the identity
        of the last build.
        """
        entry = self.get(name)
        options = self.checked_options(name, options)
        try:
            built = entry.factory(**options)
        except (PluginError, UnknownNameError):
            raise
        except Exception as exc:
            raise PluginError(
                f"{self.kind} '{name}' from plugin '{entry.plugin}' failed to build: {type(exc).__name__}: {exc} "
                f"(plugin '{entry.plugin}' comes from {entry.source})"
            ) from exc
        stamp(built, RegistryIdentity(self.kind, entry.name, entry.plugin, entry.source))
        return built

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[RegistryEntry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
