"""The ``nbtoolkit gui`` command: its arguments, the up-front check of the files and preset it preloads,
and opening the viewer (or running the main job headless without a display)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import validate
from .errors import ConfigError, NBToolkitError


def add_gui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="training TOML file to preload")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to preload for Simulate")
    parser.add_argument("--preset", help="initial condition to preselect")
    parser.add_argument("--headless", action="store_true",
                        help="run the main job in the terminal even if a display exists")
    parser.add_argument("--epochs", type=validate.arg_integer(low=1), default=30,
                        help="headless main job: training epochs (default 30)")
    parser.set_defaults(func=cmd_gui)


def cmd_gui(args: argparse.Namespace) -> int:
    """Open the viewer; without a display (or with --headless) run the main job in the terminal."""
    from gui.app import display_available

    _check_gui_options(args)
    if args.headless or not display_available():
        from gui.headless import run_headless_demo

        if not args.headless:
            print("nbtoolkit gui: no display found; running the main job headless "
                  "(set DISPLAY or WAYLAND_DISPLAY to open the window)", file=sys.stderr)
        given = [f"--{k}" for k in ("config", "checkpoint", "preset") if getattr(args, k) is not None]
        if given:
            print(f"nbtoolkit gui: warning: the headless main job trains and evaluates its own built-in system; "
                  f"{', '.join(given)} only preload the window and are not used here", file=sys.stderr)
        return run_headless_demo(epochs=args.epochs)
    from gui.app import main as gui_main

    forwarded = [f"--{k}={v}" for k in ("config", "checkpoint", "preset") if (v := getattr(args, k)) is not None]
    return gui_main(forwarded)


def _check_gui_options(args: argparse.Namespace) -> None:
    """Check ``--config``, ``--checkpoint`` and ``--preset`` of ``nbtoolkit gui`` up front, naming every bad one."""
    from .presets import PRESETS

    problems = []
    if args.config is not None:
        from .training.config import TrainConfig, read_toml

        try:
            keys, table = read_toml(args.config)
            TrainConfig.from_dict(keys)
            if table is not None and table.get("preset") is not None and table["preset"] not in PRESETS:
                raise ConfigError(f"[system] preset: unknown preset '{table['preset']}'")
        except NBToolkitError as exc:
            problems.append(f"--config: {exc}")
    if args.checkpoint is not None:
        from .training.checkpoint import read_checkpoint

        try:
            read_checkpoint(args.checkpoint)
        except NBToolkitError as exc:
            problems.append(f"--checkpoint: {exc}")
    if args.preset is not None and args.preset not in PRESETS:
        problems.append(f"--preset: unknown preset '{args.preset}'; known: {', '.join(sorted(PRESETS))}")
    if problems:
        raise ConfigError("; ".join(problems))
