"""Named registries of plugin-provided factories (integrators, dt predictors, replay samplers, gates,
external fields)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import DuplicateNameError, PluginError, UnknownNameError


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

    def create(self, name: str, **options: Any) -> Any:
        """Build the named object, passing ``options`` to its factory.

        An option the factory does not accept is an error naming it; a factory that raises is
        reported with the plugin that provided it.
        """
        entry = self.get(name)
        accepted = entry.accepted_options()
        if accepted is not None:
            unknown = sorted(set(options) - accepted)
            if unknown:
                raise PluginError(
                    f"{self.kind} '{name}' (plugin '{entry.plugin}' from {entry.source}) does not take option(s) "
                    f"{', '.join(unknown)}; it takes: {', '.join(sorted(accepted)) or '(none)'}"
                )
        try:
            return entry.factory(**options)
        except (PluginError, UnknownNameError):
            raise
        except Exception as exc:
            raise PluginError(
                f"{self.kind} '{name}' from plugin '{entry.plugin}' failed to build: {type(exc).__name__}: {exc} "
                f"(plugin '{entry.plugin}' comes from {entry.source})"
            ) from exc

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
