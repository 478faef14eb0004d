"""Launching the viewer: ``nbtoolkit gui`` (via :func:`main`) or ``python -m gui``.

Qt is imported only inside :func:`main` and :func:`create_window`, so :func:`display_available`
and :func:`build_parser` work on machines without PyQt6 or without a display (the CLI uses
them to fall back to headless commands).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .main_window import MainWindow


def display_available() -> bool:
    """Whether a Qt window can be shown: always on Windows and macOS; elsewhere when an X11 or
    Wayland display is set (DISPLAY / WAYLAND_DISPLAY) or a Qt platform is forced (QT_QPA_PLATFORM)."""
    if sys.platform.startswith(("win", "darwin")):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def build_parser(prog: str = "nbtoolkit gui") -> argparse.ArgumentParser:
    """The viewer's command-line options."""
    from nbtoolkit.presets import PRESETS

    parser = argparse.ArgumentParser(prog=prog, description="Watch a dt predictor learn to step an orbit, live.")
    parser.add_argument("--config", type=Path, help="training TOML file to preload (its [system] table picks the preset)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to preload for Simulate")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="initial condition to preselect")
    return parser


def configure_runtime() -> None:
    """Process-wide settings of the viewer's process: runs execute in their own process
    (:mod:`gui.worker`), so the viewer's own torch work is small and gets one intra-op thread."""
    from nbtoolkit.threads import apply_thread_policy

    apply_thread_policy(1)


def create_window(args: argparse.Namespace) -> MainWindow:
    """Build the main window preloaded from parsed options (a QApplication must exist).

    Problems with the options (a bad config file, a missing checkpoint) are shown in the window's
    error banner, so the app still opens.
    """
    from nbtoolkit.errors import ConfigError, NBToolkitError

    from .main_window import MainWindow

    window = MainWindow()
    try:
        if args.config is not None:
            window.controls.load_config(args.config)
        if args.preset is not None:
            window.controls.system_form.set_preset(args.preset)
        if args.checkpoint is not None:
            if not args.checkpoint.is_file():
                raise ConfigError(f"checkpoint file '{args.checkpoint}' does not exist")
            window.controls.set_checkpoint(args.checkpoint)
            window.controls.set_mode("simulate")
    except (NBToolkitError, OSError, ValueError) as exc:
        window.show_error("Could not preload the options", str(exc))
    window.preview_system()
    return window


def main(argv: Sequence[str] | None = None) -> int:
    """Open the viewer and run the Qt event loop; returns the exit status."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if not display_available():
        print("nbtoolkit gui: no display found (set DISPLAY or WAYLAND_DISPLAY, or use the headless "
              "commands 'nbtoolkit train' / 'nbtoolkit simulate')", file=sys.stderr)
        return 2
    from PyQt6.QtWidgets import QApplication

    configure_runtime()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("nbtoolkit viewer")
    window = create_window(args)
    app.aboutToQuit.connect(window.shutdown)
    # Ctrl+C in the terminal closes the window cleanly (the frame timer lets Python see the signal)
    signal.signal(signal.SIGINT, lambda *_: window.close())
    window.show()
    return int(app.exec())
