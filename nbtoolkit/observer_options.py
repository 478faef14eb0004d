"""Collecting the options the observers declare through ``nbtoolkit_register_observer_options``.

:func:`collect_observer_options` calls the hook one plugin at a time, as the plugin host builds
its registries: a plugin whose declaration fails (a name another plugin declared, something that
is not a :class:`nbtoolkit.options.Setting`) is reported through ``fail`` and the others' options
are kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pluggy

from .options import DeclaredOptions

HOOK_NAME = "nbtoolkit_register_observer_options"


def collect_observer_options(pm: pluggy.PluginManager,
                             fail: Callable[[str, str, BaseException], None]) -> DeclaredOptions:
    """The options every plugin of ``pm`` declares, by name; ``fail(plugin, hook name, exception)``
    records a plugin whose declaration fails."""
    declared = DeclaredOptions("observer")
    plugins = [impl.plugin for impl in getattr(pm.hook, HOOK_NAME).get_hookimpls()]  # registration order
    for plugin in plugins:
        name = pm.get_name(plugin) or repr(plugin)
        caller = pm.subset_hook_caller(HOOK_NAME, remove_plugins=[p for p in plugins if p is not plugin])
        try:
            caller(register=functools.partial(declared.add, plugin=name))
        except Exception as exc:
            fail(name, HOOK_NAME, exc)
    return declared
