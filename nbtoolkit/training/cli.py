"""``nbtoolkit train``: arguments and command.

Precedence of configuration values, lowest first: defaults, the checkpoint given to
``--resume`` (model keys only), the ``--config`` TOML file, command-line flags
(``predictor_options`` option by option). Every configuration key has a flag, made from its
declaration in :mod:`.config` (``--steps-per-epoch`` for ``steps_per_epoch``; option tables
take ``--predictor-option KEY=VALUE``, repeatable); ``--seed`` sets both the training seed and
the seed of presets that take one. The ``mlp`` architecture keys keep flags of their own
(``--hidden-width`` ...), which set predictor options, and the options that the registered plugins
(dt predictors, replay samplers, integrators, external fields) and the observers declare are
listed at the end of ``--help``.

The systems come from ``--preset``/``--state`` (with the preset flags), else from the
``[system]`` table of the TOML file (``preset = "..."`` plus parameters, which preset flags
override), else from ``--training-set`` or the ``[[systems]]`` tables of the TOML file, else,
when resuming, from the checkpoint, else from the built-in training set ``general``. A
training set is drawn with the training seed; the same set drawn twice more (seeds + 1 and
+ 2), with its ``[[validation]]`` tables, gives the validation systems of the safety calibration.
Ctrl-C or SIGTERM stops training cleanly at the next step (the checkpoint is still written, exit
status 130 or 143); a second one aborts.

Data-parallel training: under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this command
on its shard of the systems (:mod:`.distributed`); rank 0 alone reports, prints the summary and
writes the checkpoint. ``--nproc N`` starts such a run itself (:mod:`.launch`). Ctrl-C and SIGTERM
then end every process at once (no graceful stop: the ranks would have to agree on the step);
resume from the last checkpoint, which a stopped or killed process never leaves half written.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
import threading
import traceback
from pathlib import Path
from typing import Any, NoReturn

import torch

from .. import validate
from ..cli_system import add_system_arguments, preset_flag_values
from ..control import RunControl
from ..errors import ConfigError
from ..options import Option, Setting, format_default
from ..plugin_manager import get_host
from ..state import System
from .config import SETTINGS, TOP_LEVEL_OPTIONS, TrainConfig, merge_sources, read_toml
from .distributed import LOCAL, Collective, from_environment, report_once, shutdown
from .trainer import Trainer
from .trainset import pad_systems

EXIT_STOPPED = 130

#: what the command line uses where a key is not given, when that differs from the key's default
CLI_DEFAULTS = {"progress": "when stderr is a terminal"}


def _dest(key: str) -> str:
    return f"train_{key}"


def setting_flags(s: Setting) -> list[str]:
    """The flags of a setting: its declared ones, else ``--key-with-dashes`` (plus the lower-case
    spelling of ``--E-lower``); an option table ``x_options`` takes ``--x-option KEY=VALUE``."""
    if s.option.flags:
        return list(s.option.flags)
    if s.type is dict:
        return ["--" + s.name.removesuffix("_options").replace("_", "-") + "-option"]
    flag = "--" + s.name.replace("_", "-")
    return [flag] if flag == flag.lower() else [flag, flag.lower()]


def _argument(s: Setting) -> dict[str, Any]:
    """argparse keywords of a setting's flag: its type or choices, and its help with the default."""
    text = s.help + (" (repeatable)" if s.type is dict else "")
    shown = CLI_DEFAULTS.get(s.name) or ("" if s.default in ("", {}) else format_default(s.default))
    kwargs: dict[str, Any] = {"default": None, "help": (text + (f" (default: {shown})" if shown else "")).replace("%", "%%")}
    if s.type is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif s.type is dict:
        kwargs.update(action="append", type=validate.option_pair, metavar="KEY=VALUE")
    elif s.choices:
        kwargs.update(type=str, choices=list(s.choices))
    elif s.type in (int, float, str):
        kwargs["type"] = s.type
    else:
        kwargs["type"] = _plain_value
    return kwargs


def _plain_value(text: str) -> Any:
    """A flag value read as ``--predictor-option`` reads one (8 an int, 0.5 a float, tanh a string)."""
    return validate.option_pair(f"value={text}")[1]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the system, run and configuration flags of ``nbtoolkit train`` to ``parser``, and list
    the options that the registered plugins and the observers declare at the end of its help."""

    add_system_arguments(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--config", type=Path, help="TOML file of configuration keys (and an optional [system] table)")
    run.add_argument("--resume", type=Path, help="continue training from this checkpoint (written back to it "
                                                 "unless --checkpoint says otherwise)")
    run.add_argument("--threads", type=validate.arg_integer(low=1), help="torch CPU threads (small models run fastest with 1)")
    run.add_argument("--nproc", type=validate.arg_integer(low=1), metavar="N",
                     help="train data-parallel on N processes (per node) started through torch.distributed.run")
    run.add_argument("--nnodes", type=validate.arg_integer(low=1), metavar="N",
                     help="with --nproc: number of machines of a multi-node run (start it on every one)")
    run.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                     help="with --nproc and --nnodes: rendezvous address, the same on every machine")
    run.add_argument("--training-set", metavar="NAME|FILE",
                     help="train on a built-in training set (general, ...) or a TOML file of [[systems]] tables "
                          "(default: general, when no --preset/--state/[system] is given)")
    run.add_argument("--export-model", type=Path, metavar="FILE",
                     help="also write a model file (weights, options and calibration only; see docs/models.md)")
    group = parser.add_argument_group("training configuration (flags override --config, which overrides --resume)")
    for s in SETTINGS:
        if s.name != "seed":  # set by --seed of the system flags, which also seeds the presets
            group.add_argument(*setting_flags(s), dest=_dest(s.name), **_argument(s))
    host = get_host()
    default = TrainConfig.predictor
    declared = {s.name: s for s in host.predictors.get(default).options()} if default in host.predictors else {}
    _add_top_level(parser.add_argument_group(f"options of the '{default}' dt predictor (or --predictor-option "
                                             "KEY=VALUE; every predictor's options are listed at the end)"),
                   TOP_LEVEL_OPTIONS["predictor_options"], declared)
    _add_top_level(parser.add_argument_group("options of the observers (or --observer-option KEY=VALUE)"),
                   TOP_LEVEL_OPTIONS["observer_options"], {key: s for key, (s, _) in host.observer_options.items()})
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = plugin_options_help(host)


def _add_top_level(group: Any, keys: tuple[str, ...], declared: dict[str, Setting]) -> None:
    """Flags of their own for the plugin options that may be written at top level (see
    :data:`~.config.TOP_LEVEL_OPTIONS`), typed and explained by the plugin's declaration."""
    for key in keys:
        s = declared.get(key) or Setting(key, object, "", Option(f"option {key}"))
        group.add_argument("--" + key.replace("_", "-"), dest=_dest(key), **_argument(s))


#: the plugin options that ``--help`` lists: registry attribute -> the flag and the configuration table that set them
PLUGIN_OPTION_FLAGS = {"predictors": ("--predictor-option", "predictor_options"),
                       "samplers": ("--sampler-option", "sampler_options"),
                       "integrators": ("--integrator-option", "integrator_options"),
                       "fields": ("--field-option", "field_options")}


def plugin_options_help(host: Any, registries: tuple[str, ...] = tuple(PLUGIN_OPTION_FLAGS), *,
                        training: bool = True) -> str:
    """The options that the plugins of ``registries`` (attributes of the host, keys of
    :data:`PLUGIN_OPTION_FLAGS`) declare and, with ``training``, those of the observers, as the end
    of ``train --help`` (``simulate`` and ``evaluate`` list theirs without ``training``)."""
    def lines(s: Setting) -> list[str]:
        return textwrap.wrap(f"{s.name} = {format_default(s.default)}: {s.help} ({s.rule})", 96,
                             initial_indent="    ", subsequent_indent="      ")

    out: list[str] = []
    for attr in registries:
        registry, (flag, table) = getattr(host, attr), PLUGIN_OPTION_FLAGS[attr]
        listed = []
        for entry in registry.entries():
            if entry.options():
                listed += [f"  {entry.name} (plugin {entry.plugin}):", *(line for s in entry.options() for line in lines(s))]
        if listed:
            where = f"{flag} KEY=VALUE" + (f", or the [{table}] table of --config" if training else "")
            out += [*textwrap.wrap(f"options of the {registry.kind}s ({where}), with their defaults:", 100), *listed, ""]
    if training and host.observer_options:
        out += ["options of the observers (--observer-option KEY=VALUE, or the [observer_options] table of",
                "--config), with their defaults:"]
        for plugin in dict.fromkeys(plugin for _, plugin in host.observer_options.values()):  # declaration order
            out += [f"  plugin {plugin}:",
                    *(line for s, owner in host.observer_options.values() if owner == plugin for line in lines(s))]
    return "\n".join(out).rstrip()


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration keys given as flags (top-level plugin options among them)."""
    out: dict[str, Any] = {}
    for key in (*(s.name for s in SETTINGS), *(key for keys in TOP_LEVEL_OPTIONS.values() for key in keys)):
        value = getattr(args, _dest(key), None)
        if value is None:
            continue
        out[key] = dict(value) if isinstance(value, list) else value
    if getattr(args, "seed", None) is not None:
        out["seed"] = args.seed
    return out


def _system(args: argparse.Namespace, table: dict[str, Any] | None) -> System | None:
    """The system to train on from --state / --preset (+ flags) / the [system] table, or None."""
    from ..io import load_state
    from ..presets import PRESETS, make_preset

    if getattr(args, "state", None) is not None:
        return System(load_state(args.state))
    table = dict(table or {})
    table_preset = table.pop("preset", None)
    name = getattr(args, "preset", None) or table_preset
    if name != table_preset:
        table = {}  # the [system] table describes another preset than --preset
    if name is None:
        return None
    if name not in PRESETS:
        raise ConfigError(f"[system] preset: unknown preset '{name}'; known: {', '.join(sorted(PRESETS))}")
    accepted = PRESETS[name].params
    given = preset_flag_values(args, name, exclude=("seed",))  # --seed also seeds training, so it is never "unused"
    if "seed" in accepted and getattr(args, "seed", None) is not None:
        given["seed"] = args.seed
    return make_preset(name, **{**table, **given})


def _training_set(args: argparse.Namespace, systems: Any, validation: Any = None) -> Any:
    """The training set of --training-set, the [[systems]] (and [[validation]]) tables of --config, or
    ``general``."""
    from .trainset import DEFAULT_TRAINING_SET, TrainingSet, load_training_set

    if getattr(args, "training_set", None) is not None:
        return load_training_set(args.training_set)
    if systems is not None:
        return TrainingSet.from_tables(systems, name=str(args.config), validation=validation)
    return load_training_set(DEFAULT_TRAINING_SET)


def _trained_on(trainer: Trainer) -> str:
    """A one-line description of what the trainer trained on, for the model file."""
    s = trainer.initial_state
    return f"{s.batch_size} systems, up to {s.n_bodies} bodies, {trainer.epoch} epochs"


def _install_interrupt(control: RunControl) -> Any:
    """Ctrl-C (SIGINT) and SIGTERM ask the run to stop at its next step (the checkpoint is then
    written); a second one interrupts. Returns the old handlers, to give back to :func:`_restore`."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        if control.stop_requested:
            raise KeyboardInterrupt
        control.signal = signum  # type: ignore[attr-defined]
        control.stop()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore(previous: Any) -> None:
    for sig, old in (previous or {}).items():
        signal.signal(sig, old)


def run_train(args: argparse.Namespace) -> int:
    """Run ``nbtoolkit train``; returns the exit status (0, or 130 when stopped by Ctrl-C).

    Errors the user can fix are raised as :class:`~nbtoolkit.errors.NBToolkitError`. With
    ``--nproc`` the command is started on that many processes; under torchrun this process
    trains its shard.
    """
    if getattr(args, "nproc", None) is not None and "WORLD_SIZE" not in os.environ:
        from .launch import launch

        return launch(args, args.argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _run_rank(args)
    return _train(args, LOCAL)


def _run_rank(args: argparse.Namespace) -> NoReturn:
    """One rank of a data-parallel run. The first rank to fail reports the error as ``nbtoolkit``
    does (a rank that lost the others reports a :class:`~nbtoolkit.errors.DistributedError`); the
    ranks that fail because of it exit with status 1 and print nothing. A rank ends its process at
    once when it is done, its checkpoint written and the process group left, or when it has failed
    (:func:`_end_rank`)."""
    from ..cli import failure_status
    from .launch import die_with_launcher

    die_with_launcher()
    collective = from_environment(getattr(args, _dest("device"), None) or "cpu")
    try:
        status = _train(args, collective)
        shutdown(collective)
    except Exception as exc:
        status = 1
        if report_once():
            try:
                status = failure_status(args, exc)
            except Exception:  # a programming error, or --debug: the traceback
                traceback.print_exc()
    _end_rank(status)


def _end_rank(status: int) -> NoReturn:
    """Flush what the rank printed and end its process with ``status`` without the interpreter's teardown.
    gloo's threads now and then abort a process during that teardown ("terminate called without an active
    exception", SIGABRT, about one run in ten), and the launcher would report the rank as killed: a run
    whose work is done, or one whose error the rank has already reported."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _train(args: argparse.Namespace, collective: Collective) -> int:
    """Train in this process (its shard of the systems under ``collective``); the exit status."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    host = get_host()
    overrides: dict[str, Any] = {}
    table = None
    systems = validation_tables = None
    if args.config is not None:
        overrides, table = read_toml(args.config)
        systems, validation_tables = overrides.pop("systems", None), overrides.pop("validation", None)
    # CLI_DEFAULTS; the progress bar may be blocked, and its option with it
    tty = {"progress": sys.stderr.isatty()} if "progress" in host.observer_options else {}
    overrides = merge_sources(tty, overrides, _flag_overrides(args))
    system = _system(args, table)
    validation = None
    if system is not None and (getattr(args, "training_set", None) is not None or systems is not None):
        raise ConfigError("give either a system (--preset, --state, [system]) or a training set "
                          "(--training-set, [[systems]]), not both")
    if system is None and (args.resume is None or getattr(args, "training_set", None) is not None or systems is not None):
        tset = _training_set(args, systems, validation_tables)
        overrides = merge_sources(tset.settings, overrides)  # the set's [train] settings, under the user's own
        seed = int(overrides.get("seed", TrainConfig.seed))
        system, validation = System(tset.build(seed)), pad_systems(tset.validation_draws(seed))
        if collective.is_main:
            print(f"{tset.summary()}; validation systems: the same set drawn with seeds {seed + 1} and {seed + 2}",
                  file=sys.stderr)
    control = RunControl()
    if args.resume is not None:
        overrides.setdefault("checkpoint_path", str(args.resume))
        trainer = Trainer.from_checkpoint(args.resume, system, host=host, control=control, collective=collective,
                                          **overrides)
        trainer.validation_state = validation
    else:
        assert system is not None  # no --resume: a system or a training set was built above
        trainer = Trainer(TrainConfig.from_dict(overrides), system, host=host, control=control,
                          validation_state=validation, collective=collective)
    if getattr(args, "export_model", None) is not None:  # checked before training, not after it
        if not trainer.config.checkpoint_path:
            raise ConfigError("--export-model needs --checkpoint PATH (the model file is written from it)")
        validate.writable_file(args.export_model, "--export-model")
    previous = _install_interrupt(control) if collective.world_size == 1 else None
    try:
        result = trainer.fit()
    finally:
        _restore(previous)
    buffered = int(collective.total([len(trainer.buffer)])[0])
    if not collective.is_main:
        return 0
    cfg = trainer.config
    last = result.epoch_metrics[-1] if result.epoch_metrics else None
    lines = [f"epochs             {result.epochs_completed}/{cfg.epochs}" + (" (stopped)" if result.stopped else ""),
             f"accepted steps     {trainer.total_accepted}",
             f"retrains           {trainer.total_retrains}",
             f"replay buffer      {buffered} samples"]
    if last is not None:
        lines.append(f"last replay        {last['replay_iterations']} iterations, pass rate {100 * last['pass_rate']:.1f}%"
                     + (" (skipped)" if last["replay_skipped"] else ""))
        lines.append(f"last mean dt       {last['mean_dt']:.4g}")
    if trainer.calibration is not None:
        factors = ", ".join(f"{f:.3g}" for f in trainer.calibration.safety)
        lines.append(f"safety factors     {factors} (per class of systems; calibrated to pass "
                     f"{100 * cfg.calibrate_pass_rate:g} % of steps on every validation system)")
    lines.append(f"checkpoint         {cfg.checkpoint_path}" if cfg.checkpoint_path
                 else "checkpoint         none written (use --checkpoint PATH)")
    if getattr(args, "export_model", None) is not None:
        if not cfg.checkpoint_path:
            raise ConfigError("--export-model needs --checkpoint PATH (the model file is written from it)")
        from .checkpoint import export_model

        export_model(cfg.checkpoint_path, args.export_model,
                     info={"trained_on": _trained_on(trainer)})
        lines.append(f"model file         {args.export_model}")
    print("\n".join(lines))
    if result.stopped and getattr(control, "signal", None) == signal.SIGTERM:
        print("nbtoolkit train: stopped by SIGTERM" + (f"; checkpoint written to {cfg.checkpoint_path}"
                                                        if cfg.checkpoint_path else ""), file=sys.stderr)
        return 128 + signal.SIGTERM
    return EXIT_STOPPED if result.stopped else 0
