"""The plugin host: loads default and third-party plugins and builds the named registries.

Loading order: the default plugins by module path or ``module:object`` (:data:`DEFAULT_PLUGINS`),
then the entry points of group ``nbtoolkit``, then ``check_pending()``. A plugin that fails to import,
register or honour its contract is recorded in :attr:`PluginHost.failures` (and warned about)
with its name and the cause; the other plugins keep working.

Environment variables:

* ``NBTOOLKIT_BLOCK_PLUGINS``: comma-separated plugin names (default entries or entry-point names) not
  to load; a module path also names the ``module:object`` defaults of that module.
* ``NBTOOLKIT_ONLY_PLUGINS``: if set, load only these plugin names (defaults included; a module
  path again stands for its ``module:object`` defaults).
* ``NBTOOLKIT_TRACE_HOOKS``: if set to a non-empty value other than ``0``, trace hook calls to stderr,
  with the plugins that answered each call.

A name in either list that matches no plugin is warned about, with the known names. Load failures are
warned about once per host (the process-wide host: once per process), attributed to the plugin (its
module file, or its entry point) rather than to this module.

Observer hooks (``nbtoolkit_fit_start`` ... ``nbtoolkit_fit_end``) fired through
:attr:`PluginHost.hook` are isolated: an observer that raises (anything but an nbtoolkit error)
is disabled with one warning naming it, recorded in :attr:`PluginHost.failures`, and the run
goes on without it.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .observer_options import collect_observer_options
from .registry import Registry

ENTRY_POINT_GROUP = "nbtoolkit"

#: default plugins, registered exactly like third-party ones: a module path registers the module's
#: hookimpl functions, ``"module:object"`` the object (one with hookimpl methods, such as an observer
#: instance); the entry is the plugin's name
DEFAULT_PLUGINS: tuple[str, ...] = (
    "plugins.integrators",
    "plugins.classical_predictors",
    "plugins.mlp_predictor",
    "plugins.ensemble_predictor",
    "plugins.learned_predictor",
    "plugins.symmetric",
    "plugins.feedback",
    "plugins.samplers",
    "plugins.gates",
    "plugins.fields",
    "plugins.observers:progress_bar",
    "plugins.observers:metrics_log",
)

#: registry attribute -> (hook name, kind used in messages)
REGISTRATION_HOOKS: dict[str, tuple[str, str]] = {
    "integrators": ("nbtoolkit_register_integrators", "integrator"),
    "predictors": ("nbtoolkit_register_dt_predictors", "dt predictor"),
    "samplers": ("nbtoolkit_register_replay_samplers", "replay sampler"),
    "gates": ("nbtoolkit_register_gates", "gate"),
    "fields": ("nbtoolkit_register_external_fields", "external field"),
}


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose registration failed."""

    plugin: str
    stage: str  # "import", "register" or the hook name
    reason: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' failed at {self.stage}: {self.reason}"


#: hooks that only observe training; one that raises is disabled, not fatal
OBSERVER_HOOKS: tuple[str, ...] = (
    "nbtoolkit_fit_start", "nbtoolkit_step_accepted", "nbtoolkit_step_rejected", "nbtoolkit_replay_iteration",
    "nbtoolkit_epoch_end", "nbtoolkit_fit_end",
)

def _warn_once(seen: set[str], message: str, plugin: Any = None, entry_point: str | None = None) -> None:
    """Warn unless ``message`` is in ``seen`` (a host's set: the process-wide host warns about each
    failure once, however often the registries are rebuilt), attributed to the plugin's module
    file (or its entry point)."""
    if message in seen:
        return
    seen.add(message)
    module = sys.modules.get(plugin.partition(":")[0]) if isinstance(plugin, str) else plugin
    filename = getattr(module, "__file__", None) or entry_point or (plugin if isinstance(plugin, str) else "<plugin>")
    warnings.warn_explicit(message, RuntimeWarning, filename=str(filename), lineno=0,
                           module=getattr(module, "__name__", None) or "nbtoolkit.plugins")


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


class PluginHost:
    """Owns the pluggy manager, the plugin sources, the five registries (integrators, predictors,
    samplers, gates, external fields) and the options the observers declare (``observer_options``).

    ``default_plugins`` are loaded first, each a module path or a ``"module:object"`` entry (see
    :data:`DEFAULT_PLUGINS`); then, with ``load_entry_points``, the installed entry points.
    ``blocked`` adds to the environment's block list, ``only`` replaces its only list; ``trace``
    (default: ``NBTOOLKIT_TRACE_HOOKS``) traces hook calls to stderr.
    """

    def __init__(
        self,
        default_plugins: Iterable[str] = DEFAULT_PLUGINS,
        *,
        load_entry_points: bool = True,
        blocked: Iterable[str] | None = None,
        only: Iterable[str] | None = None,
        trace: bool | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.sources: dict[str, str] = {}
        self.disabled_observers: set[str] = set()
        self._warned: set[str] = set()
        self.skipped: dict[str, str] = {}  # plugin name -> why it was not loaded (blocked / not in the only list)
        env_blocked = _env_names("NBTOOLKIT_BLOCK_PLUGINS") or set()
        self.blocked = set(blocked or ()) | env_blocked
        self.only = set(only) if only is not None else _env_names("NBTOOLKIT_ONLY_PLUGINS")
        if trace is None:
            trace = os.environ.get("NBTOOLKIT_TRACE_HOOKS", "") not in ("", "0")
        self.trace = bool(trace)
        if trace:
            self.pm.trace.root.setwriter(sys.stderr.write)
            self.pm.enable_tracing()
            self.pm.add_hookcall_monitoring(self._trace_before, lambda *args: None)
        self.integrators = Registry("integrator")
        self.predictors = Registry("dt predictor")
        self.samplers = Registry("replay sampler")
        self.gates = Registry("gate")
        self.fields = Registry("external field")

        self._known_names: list[str] = []
        for entry in default_plugins:
            self._known_names += [entry, entry.partition(":")[0]]
            if self._wanted(entry):
                self._load_default(entry)
        if load_entry_points:
            self._load_entry_points()
        self._check_filter_names()
        self.pm.check_pending()
        self.refresh()

    # ------------------------------------------------------------------ loading
    def _wanted(self, name: str) -> bool:
        """Whether to load the plugin ``name``; a ``module:object`` default is also named by its module."""
        names = {name, name.partition(":")[0]}
        if names & self.blocked:
            self.skipped[name] = "blocked by NBTOOLKIT_BLOCK_PLUGINS"
            return False
        if self.only is not None and not names & self.only:
            self.skipped[name] = "not listed in NBTOOLKIT_ONLY_PLUGINS"
            return False
        return True

    def _check_filter_names(self) -> None:
        """Warn about names in the block / only lists that match no plugin (typically a typo)."""
        known = sorted(set(self._known_names))
        for var, names in (("NBTOOLKIT_BLOCK_PLUGINS", self.blocked), ("NBTOOLKIT_ONLY_PLUGINS", self.only or set())):
            for name in sorted(set(names) - set(known)):
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                _warn_once(self._warned, f"{var} names '{name}', which is not a plugin{hint}; known plugins: "
                           f"{', '.join(known)}", var)

    def _fail(self, plugin: str, stage: str, exc: BaseException | str, entry_point: str | None = None) -> None:
        reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        failure = PluginFailure(plugin, stage, reason)
        self.failures.append(failure)
        _warn_once(self._warned, str(failure), plugin, entry_point)

    def unknown_name_hint(self, name: str = "") -> str:
        """For "unknown NAME" errors: the plugins that were not loaded and why (empty when none)."""
        if name in self.skipped:
            return f"; plugin '{name}', which may provide it, is {self.skipped[name]}"
        if not self.skipped:
            return ""
        return "; not loaded, and may provide it: " + ", ".join(
            f"plugin '{n}' ({why})" for n, why in sorted(self.skipped.items()))

    def _load_default(self, entry: str) -> None:
        """Import and register a default plugin: a module path, or ``module:object`` (a dotted
        attribute path in the module), under the name ``entry``."""
        module_path, _, attribute = entry.partition(":")
        try:
            plugin = importlib.import_module(module_path)
            for part in attribute.split(".") if attribute else ():
                plugin = getattr(plugin, part)
        except Exception as exc:
            self._fail(entry, "import", exc)
            return
        self._register(plugin, entry, f"module {module_path}")

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            self._known_names.append(ep.name)
            if not self._wanted(ep.name):
                continue
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.value
            where = f"entry point '{ep.name} = {ep.value}' of {dist}"
            if self.pm.get_plugin(ep.name) is not None:
                if self.sources.get(ep.name) != dist:
                    self._fail(ep.name, "register", f"the plugin name is already taken by {self.sources.get(ep.name)}; "
                               f"{where} was not loaded")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._fail(ep.name, "import", f"{type(exc).__name__}: {exc} ({where})", entry_point=where)
                continue
            self._register(plugin, ep.name, dist)

    def _register(self, plugin: Any, name: str, source: str) -> bool:
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validates hookimpl signatures here
            detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # one line
            self._fail(name, "register", f"{type(exc).__name__}: {detail} ({source})")
            return False
        unknown = self._unknown_hooks(plugin)
        if unknown:  # a misspelt hook would otherwise make check_pending() fail for every plugin
            self.pm.unregister(plugin)
            hints = "; ".join(
                f"{hook}" + "".join(f" (did you mean {m}?)" for m in difflib.get_close_matches(hook, self._spec_names(), 1))
                for hook in unknown
            )
            self._fail(name, "register", f"implements unknown hook(s) {hints} ({source})")
            return False
        self.sources[name] = source
        return True

    def _spec_names(self) -> list[str]:
        """Names of the hooks nbtoolkit specifies."""
        return sorted(n for n, caller in vars(self.pm.hook).items() if not n.startswith("_") and caller.has_spec())

    def _unknown_hooks(self, plugin: Any) -> list[str]:
        """Hooks ``plugin`` implements (not as ``optionalhook``) that nbtoolkit does not specify."""
        return sorted(
            caller.name for caller in self.pm.get_hookcallers(plugin) or []
            if not caller.has_spec()
            and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
        )

    # ------------------------------------------------------------------ public
    def register_plugin(self, plugin: Any, name: str | None = None, source: str | None = None) -> str:
        """Register a plugin object or module at run time (tests, notebooks) and rebuild registries."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if not self._register(plugin, name, source or f"object {name}"):
            raise PluginError(str(self.failures[-1]))
        self.refresh()
        return name

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin by name and rebuild the registries."""
        self.pm.unregister(name=name)
        self.sources.pop(name, None)
        self.disabled_observers.discard(name)  # a plugin registered again under this name starts enabled
        self.failures = [f for f in self.failures if f.plugin != name]
        self.refresh()

    def refresh(self) -> None:
        """Rebuild every registry and the observers' options by calling each plugin's hooks, one plugin at a time."""
        self.failures = [f for f in self.failures if f.stage in ("import", "register")]
        for attr, (hook_name, kind) in REGISTRATION_HOOKS.items():
            registry = Registry(kind)
            hook = getattr(self.pm.hook, hook_name)
            plugins = [impl.plugin for impl in hook.get_hookimpls()]  # registration order
            for plugin in plugins:
                name = self.pm.get_name(plugin) or repr(plugin)
                others = [p for p in plugins if p is not plugin]
                caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)

                def register(entry_name: str, factory: Any, _name: str = name, _registry: Registry = registry) -> None:
                    _registry.add(entry_name, factory, _name, self.sources.get(_name, _name))

                try:
                    caller(register=register)
                except Exception as exc:
                    self._fail(name, hook_name, exc)
            registry.unknown_hint = self.unknown_name_hint
            setattr(self, attr, registry)
        self.observer_options = collect_observer_options(self.pm, self._fail)

    def registries(self) -> tuple[Registry, ...]:
        """The named registries, in the order ``nbtoolkit plugins`` lists them."""
        return tuple(getattr(self, attr) for attr in REGISTRATION_HOOKS)

    def plugin_hooks(self, name: str) -> list[str]:
        """Names of the hooks a registered plugin implements."""
        plugin = self.pm.get_plugin(name)
        if plugin is None:
            return []
        return sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])

    @property
    def hook(self) -> Any:
        """The hook relay, for firing observer hooks: ``host.hook.nbtoolkit_epoch_end(event=...)``.

        Observer hooks go to each plugin in turn; one that raises is disabled (see the module doc).
        Other hooks are pluggy's own callers.
        """
        return _ObserverRelay(self)

    def describe(self) -> dict[str, Any]:
        """Everything ``nbtoolkit plugins`` shows, as plain data (for ``--json``)."""
        return {
            "entries": [
                {"kind": registry.kind, "name": e.name, "plugin": e.plugin, "source": e.source,
                 "options": None if e.accepted_options() is None else sorted(e.accepted_options() or ())}
                for registry in self.registries() for e in registry.entries()
            ],
            "plugins": [{"name": n, "source": self.sources[n], "hooks": self.plugin_hooks(n)} for n in sorted(self.sources)],
            "failures": [{"plugin": f.plugin, "stage": f.stage, "reason": f.reason} for f in self.failures],
            "not_loaded": [{"plugin": n, "reason": why} for n, why in sorted(self.skipped.items())],
        }

    # ------------------------------------------------------------------ observers and tracing
    def _call_observers(self, hook_name: str, **kwargs: Any) -> list[Any]:
        from .control import RunStopped
        from .errors import NBToolkitError

        caller = getattr(self.pm.hook, hook_name)
        impls = caller.get_hookimpls()
        if any(impl.hookwrapper or impl.wrapper for impl in impls):
            return caller(**kwargs)  # wrappers need pluggy's own calling loop
        results = []
        for impl in reversed(impls):  # pluggy's order: last registered first
            if impl.plugin_name in self.disabled_observers:
                continue
            if self.trace:
                sys.stderr.write(f"  {hook_name} -> plugin '{impl.plugin_name}'\n")
            try:
                result = impl.function(*[kwargs[name] for name in impl.argnames])
            except (NBToolkitError, RunStopped):
                raise
            except Exception as exc:
                self.disabled_observers.add(impl.plugin_name)
                source = self.sources.get(impl.plugin_name, impl.plugin_name)
                reason = f"{type(exc).__name__}: {exc}; the observer is disabled for the rest of this process"
                self.failures.append(PluginFailure(impl.plugin_name, hook_name, reason))
                _warn_once(self._warned, f"observer plugin '{impl.plugin_name}' ({source}) raised in {hook_name}: {reason}",
                           impl.plugin if hasattr(impl.plugin, "__file__") else sys.modules.get(type(impl.plugin).__module__))
                continue
            if result is not None:
                results.append(result)
        return results

    def _trace_before(self, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        names = ", ".join(f"'{impl.plugin_name}'" for impl in reversed(hook_impls)) or "(no plugin)"
        sys.stderr.write(f"nbtoolkit trace: {hook_name} answered by {names}\n")


class _ObserverRelay:
    """``host.hook``: observer hooks through :meth:`PluginHost._call_observers`, the rest through pluggy."""

    def __init__(self, host: PluginHost) -> None:
        self._host = host

    def __getattr__(self, name: str) -> Any:
        if name in OBSERVER_HOOKS:
            return functools.partial(self._host._call_observers, name)
        return getattr(self._host.pm.hook, name)


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, created on first use."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST


def reset_host() -> None:
    """Forget the process-wide host so the next :func:`get_host` reloads all plugins."""
    global _HOST
    _HOST = None
