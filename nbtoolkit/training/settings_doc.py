"""The settings reference, ``docs/settings.md``, made from the declarations.

``python -m nbtoolkit.training.settings_doc > docs/settings.md`` writes it again; a test checks
that the file is up to date. It lists every key of :class:`~nbtoolkit.training.TrainConfig`, every
default plugin that takes options (integrators, dt predictors, replay samplers, external fields)
with the options it declares on its factory (see :mod:`nbtoolkit.options`), and the options that
the default observers declare.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..options import Setting, format_default
from ..plugin_manager import PluginHost
from .cli import CLI_DEFAULTS, setting_flags
from .config import SETTINGS, TOP_LEVEL_OPTIONS

#: where the reference lives in the source tree
SETTINGS_DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"

#: the configuration table that holds the options of each registry's plugins
_TABLES = {"integrators": "integrator_options", "predictors": "predictor_options", "samplers": "sampler_options",
           "fields": "field_options"}
#: other tables that hold options of a registry's plugins
_OTHER_TABLES = {"predictors": " (`[fallback_options]` for the fallback predictor)"}
#: the registries whose option flags `nbtoolkit simulate` and `nbtoolkit evaluate` take as well
_RUN_FLAGS = ("integrators", "predictors", "fields")

_HEAD = """# Training settings

<!-- Made by `python -m nbtoolkit.training.settings_doc > docs/settings.md` from the declarations
(nbtoolkit/training/config.py and the plugins' factories); edit those, not this file. -->

Every key of the training configuration (`TrainConfig`): a top-level key of a `--config` TOML file, a
keyword of `TrainConfig(...)` and a flag of `nbtoolkit train`. Flags override the file, which overrides
the checkpoint given to `--resume`; run keys (marked *run*) are never restored from a checkpoint. A
value outside what a key accepts is a `ConfigError` naming the key.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(s: Setting) -> str:
    """The default as TOML writes it."""
    toml = {"True": "true", "False": "false"}.get(str(s.default))
    shown = "unset" if s.default is None else f"`{toml or format_default(s.default)}`"
    return shown + (f" ({CLI_DEFAULTS[s.name]} on the command line)" if s.name in CLI_DEFAULTS else "")


def _flag_cell(s: Setting) -> str:
    if s.type is dict:
        return ", ".join(f"`{f} KEY=VALUE`" for f in setting_flags(s))
    if s.type is bool:
        return ", ".join(f"`{f}`, `--no-{f[2:]}`" for f in setting_flags(s))
    return ", ".join(f"`{f}`" for f in setting_flags(s))


def settings_reference() -> str:
    """The text of ``docs/settings.md``."""
    lines = [_HEAD, "| key | flag | default | accepts | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        meaning = _cell(s.help) + (" (*run*)" if s.option.runtime else "")
        lines.append(f"| `{s.name}` | {_flag_cell(s)} | {_default(s)} | {_cell(s.rule)} | {meaning} |")
    host = PluginHost(load_entry_points=False)
    for attr, table in _TABLES.items():
        registry = getattr(host, attr)
        article = "An" if registry.kind[0] in "aeiou" else "A"
        flag = f"`--{table.removesuffix('_options').replace('_', '-')}-option KEY=VALUE`"
        if attr in _RUN_FLAGS:
            flag += " (of `nbtoolkit simulate` and `nbtoolkit evaluate` too)"
        lines += ["", f"## Options of the {registry.kind}s", "",
                  f"{article} {registry.kind} declares its options on its factory; set them in the `[{table}]` table "
                  f"of the TOML file{_OTHER_TABLES.get(attr, '')} or with {flag}. A value it refuses is an "
                  f"`OptionError` (a `ConfigError`) naming the {registry.kind}, its plugin and the option."]
        if table in TOP_LEVEL_OPTIONS:
            lines.append(_top_level(table))
        for entry in registry.entries():
            lines += ["", f"### `{entry.name}` (plugin `{entry.plugin}`)",
                      *(_table(entry.options()) if entry.options() else ["", "No options."])]
    lines += ["", "## Options of the observers", "",
              "An observer declares the options it reads through the hook `nbtoolkit_register_observer_options`; "
              "set them in the `[observer_options]` table of the TOML file or with `--observer-option KEY=VALUE`. "
              "They are run keys, checked when the run starts: an option no observer declares is a `ConfigError`, "
              "a value its declaration refuses an `OptionError` naming the plugin and the option.",
              _top_level("observer_options")]
    for plugin in dict.fromkeys(plugin for _, plugin in host.observer_options.values()):  # declaration order
        lines += ["", f"### plugin `{plugin}`",
                  *_table(s for s, owner in host.observer_options.values() if owner == plugin)]
    return "\n".join(lines) + "\n"


def _top_level(table: str) -> str:
    keys = TOP_LEVEL_OPTIONS[table]
    flags = ", ".join("`--" + key.replace("_", "-") + "`" for key in keys)
    return (f"The options {', '.join(f'`{key}`' for key in keys)} may also be written at top level and have flags "
            f"of their own ({flags}), as before their plugin declared them.")


def _table(settings: Iterable[Setting]) -> list[str]:
    return ["", "| option | default | accepts | meaning |", "|---|---|---|---|",
            *(f"| `{s.name}` | {_default(s)} | {_cell(s.rule)} | {_cell(s.help)} |" for s in settings)]


if __name__ == "__main__":  # pragma: no cover
    print(settings_reference(), end="")
