"""The status bar's counters of a run, kept from its messages, and their texts."""

from __future__ import annotations

import math

from nbtoolkit.events import EpochEnd, FitEnd, FitStart, ReplayIteration, StepAccepted, StepRejected

from .jobs import PlaybackFrame
from .modes import MODE_SIMULATE, MODE_TRAIN
from .session import RunState

#: the status bar's fields, left to right
FIELDS = ("state", "epoch", "steps", "retrains", "part2", "time", "elapsed")


class RunCounters:
    """Epoch, accepted steps, retrains and Part 2 progress of a training run, or step and time of
    a playback. The slots take the bridge's signals; :meth:`texts` formats them."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.epoch: int | None = None  # 1-based number of the running (or last finished) epoch
        self.epochs: int | None = None
        self.accepted = 0
        self.retrains = 0
        self.replay: tuple[int, int, int] | None = None  # iteration, passed, minibatch size
        self.step = 0
        self.time = math.nan
        self._finished_epochs: list[EpochEnd] = []

    def fit_started(self, event: FitStart) -> None:
        self.epochs = event.epochs
        self.epoch = event.start_epoch + 1

    def step_accepted(self, event: StepAccepted, reference: object = None) -> None:
        """``reference`` (the bridge's classical dt) is not counted."""
        self.accepted += len(event.systems)
        self.epoch = event.epoch + 1

    def step_rejected(self, _event: StepRejected) -> None:
        self.retrains += 1  # one optimizer step per rejected attempt, as the engine counts

    def replay_iteration(self, event: ReplayIteration) -> None:
        self.replay = (event.iteration, event.pass_count, event.batch_size)

    def epoch_ended(self, event: EpochEnd) -> None:
        self._finished_epochs.append(event)
        # resynchronise the running totals with the engine's own per-epoch counts
        self.accepted = sum(e.accepted_steps for e in self._finished_epochs)
        self.retrains = sum(e.retrains for e in self._finished_epochs)
        self.epoch = event.epoch + 1
        self.replay = None

    def fit_ended(self, event: FitEnd) -> None:
        self.accepted = event.total_accepted
        self.retrains = event.total_retrains

    def frames(self, frames: list[PlaybackFrame], system: int) -> None:
        """Playback steps; ``system`` is the one whose time is shown."""
        self.step = frames[-1].step
        self.time = float(frames[-1].time[system])

    def texts(self, state: RunState, mode: str | None, elapsed: float) -> dict[str, str]:
        """The text of each of :data:`FIELDS` ("" for those that do not apply)."""
        texts = dict.fromkeys(FIELDS, "")
        texts["state"] = state.value if state is not RunState.RUNNING else \
            "training" if mode == MODE_TRAIN else "simulating"
        if mode == MODE_SIMULATE or (mode is None and self.step):
            texts["steps"] = f"step {self.step}"
            if math.isfinite(self.time):
                texts["time"] = f"t = {self.time:.5g}"
        elif self.epoch is not None or self.accepted:
            epoch = "-" if self.epoch is None else str(self.epoch)
            texts["epoch"] = f"epoch {epoch}" + (f" / {self.epochs}" if self.epochs is not None else "")
            texts["steps"] = f"accepted {self.accepted}"
            texts["retrains"] = f"retrains {self.retrains}"
            if self.replay is not None:
                iteration, passed, size = self.replay
                texts["part2"] = f"Part 2 it {iteration}: {passed}/{size} pass"
        texts["elapsed"] = f"{int(elapsed // 60):02d}:{elapsed % 60:04.1f}"
        return texts
