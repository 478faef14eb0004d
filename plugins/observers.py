"""Default training observers: a terminal progress bar and a JSONL metrics log.

Both listen to the observer hooks like any third-party plugin would. The instances
:data:`progress_bar` and :data:`metrics_log` are default plugins of their own (registered as
objects, ``plugins.observers:progress_bar`` and ``plugins.observers:metrics_log``, so the host
calls each one's hooks and isolates each one's faults); each declares its option through its own
``nbtoolkit_register_observer_options`` (:data:`PROGRESS`, :data:`METRICS_LOG`), and they switch
on per run from the ``observer_options`` of the configuration sent with FitStart: the progress bar
when ``progress`` is true (the CLI sets it), the metrics log when ``metrics_log`` names a file.
:class:`ProgressBar` and :class:`MetricsLog` can also be registered as further plugin objects
(``host.register_plugin(MetricsLog("run.jsonl"), name="my-log")``) to log always.

The default instances serve one training run at a time per process (as the CLI and the viewer do).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import IO, Any

from nbtoolkit import hookimpl
from nbtoolkit.errors import ConfigError
from nbtoolkit.events import EpochEnd, FitEnd, FitStart, ReplayIteration, StepAccepted, StepRejected, event_to_dict
from nbtoolkit.options import Option, Setting, text

#: event fields left out of the metrics log (per-body arrays are data, not metrics)
OMITTED_FIELDS = ("position", "velocity", "mass")
#: the progress bar's option (in the ``observer_options`` of the training configuration)
PROGRESS = Setting("progress", bool, False, Option("show the terminal progress bar"))
#: the metrics log's option
METRICS_LOG = Setting("metrics_log", str, "", Option("append one JSON line per training event to this file (\"\" = off)",
                                                    text()))


def _option(event: FitStart, option: Setting) -> Any:
    """This run's value of ``option``."""
    return event.config.get("observer_options", {}).get(option.name, option.default)


class ProgressBar:
    """A tqdm bar over epochs on stderr, with Part 1 and Part 2 figures in its postfix.

    ``always`` True shows it regardless of the run's ``progress`` setting.
    """

    def __init__(self, always: bool = False, stream: IO[str] | None = None) -> None:
        self.always = always
        self.stream = stream
        self._bar: Any = None
        self._accepted = 0
        self._retrains = 0
        self._replay = ""

    @hookimpl
    def nbtoolkit_register_observer_options(self, register: Any) -> None:
        register(PROGRESS)

    @hookimpl
    def nbtoolkit_fit_start(self, event: FitStart) -> None:
        self.close()
        if not (self.always or _option(event, PROGRESS)):
            return
        from tqdm import tqdm

        self._accepted = self._retrains = 0
        self._replay = ""
        self._bar = tqdm(total=event.epochs, initial=event.start_epoch, unit="epoch", desc="training",
                         file=self.stream or sys.stderr, dynamic_ncols=True)

    @hookimpl
    def nbtoolkit_step_accepted(self, event: StepAccepted) -> None:
        if self._bar is not None:
            self._accepted += len(event.systems)
            self._bar.set_postfix_str(self._postfix(f"dt {float(event.dt.mean()):.3g}"), refresh=False)

    @hookimpl
    def nbtoolkit_step_rejected(self, event: StepRejected) -> None:
        if self._bar is not None:
            self._retrains += 1
            self._bar.set_postfix_str(self._postfix(f"retry {event.attempt}"), refresh=False)

    @hookimpl
    def nbtoolkit_replay_iteration(self, event: ReplayIteration) -> None:
        if self._bar is not None:
            self._replay = f"replay {event.iteration}: {event.pass_count}/{event.batch_size} pass"
            self._bar.set_postfix_str(self._postfix(), refresh=False)

    @hookimpl
    def nbtoolkit_epoch_end(self, event: EpochEnd) -> None:
        if self._bar is not None:
            self._replay = (f"replay {event.replay_iterations} it, pass {100 * event.pass_rate:.0f}%"
                            + (" (skipped)" if event.replay_skipped else ""))
            self._bar.set_postfix_str(self._postfix(f"dt {event.mean_dt:.3g}"), refresh=False)
            self._bar.update(1)

    @hookimpl
    def nbtoolkit_fit_end(self, event: FitEnd) -> None:
        self.close()

    def _postfix(self, extra: str = "") -> str:
        parts = [f"steps {self._accepted}", f"retrains {self._retrains}"]
        if self._replay:
            parts.append(self._replay)
        if extra:
            parts.append(extra)
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _finite_or_none(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (strict JSON has no inf/NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


class MetricsLog:
    """Appends one JSON object per event (its fields plus ``"event"``: the type name) to a file.

    ``path`` None takes the file from the run's ``metrics_log`` option (off when empty).
    Per-body arrays (positions, velocities, masses) are left out; non-finite numbers (a
    blown-up step's |dE/E|) are written as null. Each line is flushed at once so the file can
    be followed while training runs.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._fh: IO[str] | None = None

    def _write(self, event: Any) -> None:
        if self._fh is None:
            return
        record = {k: v for k, v in event_to_dict(event).items() if k not in OMITTED_FIELDS}
        self._fh.write(json.dumps(_finite_or_none(record)) + "\n")
        self._fh.flush()

    @hookimpl
    def nbtoolkit_register_observer_options(self, register: Any) -> None:
        register(METRICS_LOG)

    @hookimpl
    def nbtoolkit_fit_start(self, event: FitStart) -> None:
        self.close()
        path = self.path or (Path(_option(event, METRICS_LOG)) if _option(event, METRICS_LOG) else None)
        if path is None:
            return
        try:
            self._fh = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"observer option 'metrics_log': cannot open '{path}' for writing: {exc}") from None
        self._write(event)

    @hookimpl
    def nbtoolkit_step_accepted(self, event: StepAccepted) -> None:
        self._write(event)

    @hookimpl
    def nbtoolkit_step_rejected(self, event: StepRejected) -> None:
        self._write(event)

    @hookimpl
    def nbtoolkit_replay_iteration(self, event: ReplayIteration) -> None:
        self._write(event)

    @hookimpl
    def nbtoolkit_epoch_end(self, event: EpochEnd) -> None:
        self._write(event)

    @hookimpl
    def nbtoolkit_fit_end(self, event: FitEnd) -> None:
        self._write(event)
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


#: the instances registered as default plugins (``plugins.observers:progress_bar`` and
#: ``plugins.observers:metrics_log`` in ``DEFAULT_PLUGINS``), switched on by the run's observer options
progress_bar = ProgressBar()
metrics_log = MetricsLog()
