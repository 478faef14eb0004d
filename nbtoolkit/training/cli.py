"""``nbtoolkit train``: arguments and command.

Precedence of configuration values, lowest first: defaults, the checkpoint given to
``--resume`` (model keys only), the ``--config`` TOML file, command-line flags. Every
configuration key has a flag (``--steps-per-epoch`` for ``steps_per_epoch``; option tables
take ``--predictor-option KEY=VALUE``, repeatable); ``--seed`` sets both the training seed and
the seed of presets that take one.

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
import dataclasses
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from .. import validate
from ..cli_system import add_system_arguments, preset_flag_values
from ..control import RunControl
from ..errors import ConfigError
from ..plugin_manager import get_host
from ..state import System
from .config import TrainConfig, read_toml
from .distributed import LOCAL, Collective, from_environment, report_once, shutdown
from .trainer import Trainer
from .trainset import pad_systems

EXIT_STOPPED = 130

#: help text per configuration key
KEY_HELP: dict[str, str] = {
    "energy_threshold": "energy gate: a step passes when |dE/E| <= this (default 2e-4)",
    "E_lower": "lower edge of the loss band on |dE/E| (default 1e-6)",
    "E_upper": "upper edge of the loss band on |dE/E| (default 1e-4)",
    "efficiency_weight": "weight of the band loss on passing steps, pushing dt up below E_lower (0 = off; default 1)",
    "nonfinite_penalty": "loss of a step whose energy error is not finite (default 100)",
    "epochs": "number of epochs (Part 1 + Part 2) in total, counting resumed ones (default 20)",
    "steps_per_epoch": "accepted Part 1 steps per system and epoch (default 64)",
    "n_steps": "integrator sub-steps with the predicted dt per step (default 1)",
    "max_retrain_steps": "consecutive rejected attempts of one system before giving up (default 1000)",
    "on_retrain_limit": "at max_retrain_steps: raise an error, or take the step with the fallback predictor",
    "fallback_predictor": "classical predictor used by --on-retrain-limit fallback (default freefall)",
    "stop_at_period": "stop collecting from a system once it completed its orbital period",
    "replay_batch_size": "Part 2 minibatch size (default 512)",
    "replay_steps": "cap on Part 2 iterations per epoch (default 1000)",
    "min_replay_size": "skip Part 2 while the buffer holds fewer samples (default 2)",
    "replay_scope": "keep the replay buffer across epochs (persistent) or clear it every epoch (epoch)",
    "buffer_capacity": "most replay samples kept, oldest dropped first (default 100000)",
    "learning_rate": "Adam learning rate (default 1e-3)",
    "lr_decay": "the learning rate falls geometrically over the epochs to learning_rate * this (default 1 = constant)",
    "grad_clip": "gradient norm clipping, 0 = off (default 10)",
    "calibrate_pass_rate": ("after training, scale dt so each validation system passes this share of its steps "
                            "(0 = off; default 0.995)"),
    "calibrate_steps": "unguarded steps per validation system and calibration round (default 256)",
    "integrator": "integrator name (default leapfrog; see `nbtoolkit plugins`)",
    "predictor": "dt predictor to train (default mlp)",
    "sampler": "replay sampler name: uniform, prioritized, recent, ... (default uniform)",
    "gate": "gate that judges every step: energy (whole-system |dE/E|), pair-energy, ... (default energy)",
    "predictor_options": "extra predictor factory option KEY=VALUE (repeatable), e.g. init_factor=0.01",
    "sampler_options": "replay sampler option KEY=VALUE (repeatable), e.g. alpha=0.7",
    "fallback_options": "fallback predictor option KEY=VALUE (repeatable), e.g. eta=0.02",
    "integrator_options": "integrator factory option KEY=VALUE (repeatable)",
    "field": "external field the systems move in: plummer-host, point-mass-host, ... (default: none)",
    "field_options": "external field option KEY=VALUE (repeatable), e.g. mass=1000",
    "history_len": "number of past accepted states the predictor sees (default 0)",
    "hidden_width": "width of the predictor's hidden layers (default 64)",
    "hidden_layers": "number of hidden layers (default 2)",
    "activation": "hidden activation: tanh, silu, relu, gelu, softplus (default tanh)",
    "fourier_features": "random Fourier features of the inputs, 0 = off (default 0)",
    "fourier_scale": "standard deviation of the Fourier frequencies (default 1)",
    "checkpoint_path": "write a checkpoint here at the end (and every --checkpoint-every epochs)",
    "checkpoint_every": "also write the checkpoint every K epochs (0 = only at the end)",
    "metrics_log": "append one JSON line per training event to this file",
    "progress": "show the progress bar (default: when stderr is a terminal)",
    "device": "torch device, e.g. cpu or cuda (default cpu)",
}

#: keys whose flag is not simply --key-with-dashes
_FLAG_NAMES: dict[str, list[str]] = {
    "checkpoint_path": ["--checkpoint", "--checkpoint-path"],
    "E_lower": ["--E-lower", "--e-lower"],
    "E_upper": ["--E-upper", "--e-upper"],
    "predictor_options": ["--predictor-option"],
    "sampler_options": ["--sampler-option"],
    "fallback_options": ["--fallback-option"],
    "integrator_options": ["--integrator-option"],
    "field_options": ["--field-option"],
}


def _dest(key: str) -> str:
    return f"train_{key}"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the system, run and configuration flags of ``nbtoolkit train`` to ``parser``."""

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
    for f in dataclasses.fields(TrainConfig):
        if f.name == "seed":
            continue  # --seed of the system group
        flags = _FLAG_NAMES.get(f.name, ["--" + f.name.replace("_", "-")])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        kwargs: dict[str, Any] = {"dest": _dest(f.name), "default": None, "help": KEY_HELP[f.name]}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, dict):
            kwargs.update(action="append", type=validate.option_pair, metavar="KEY=VALUE")
        elif f.name in ("on_retrain_limit", "replay_scope", "activation"):
            kwargs.update(type=str, choices=_choices(f.name))
        else:
            kwargs["type"] = type(default)
        group.add_argument(*flags, **kwargs)


def _choices(key: str) -> list[str]:
    from .config import ACTIVATIONS

    return {"on_retrain_limit": ["raise", "fallback"], "replay_scope": ["persistent", "epoch"],
            "activation": list(ACTIVATIONS)}[key]


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, _dest(f.name), None)
        if value is None:
            continue
        out[f.name] = dict(value) if isinstance(value, list) else value
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


def _run_rank(args: argparse.Namespace) -> int:
    """One rank of a data-parallel run. The first rank to fail raises (and so reports the error;
    a rank that lost the others reports a :class:`~nbtoolkit.errors.DistributedError`); the ranks
    that fail because of it exit with status 1 and print nothing."""
    from .launch import die_with_launcher

    die_with_launcher()
    collective = from_environment(getattr(args, _dest("device"), None) or "cpu")
    try:
        status = _train(args, collective)
        shutdown(collective)
    except Exception:
        if not report_once():
            raise SystemExit(1) from None
        raise
    return status


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
    overrides.update(_flag_overrides(args))
    overrides.setdefault("progress", sys.stderr.isatty())
    system = _system(args, table)
    validation = None
    if system is not None and (getattr(args, "training_set", None) is not None or systems is not None):
        raise ConfigError("give either a system (--preset, --state, [system]) or a training set "
                          "(--training-set, [[systems]]), not both")
    if system is None and (args.resume is None or getattr(args, "training_set", None) is not None or systems is not None):
        tset = _training_set(args, systems, validation_tables)
        overrides = {**tset.settings, **overrides}  # the set's [train] settings, under the user's own
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
