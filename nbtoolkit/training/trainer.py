"""The training driver: epochs of Part 1 (collection) + Part 2 (generalization), with observer events.

:class:`Trainer` owns the predictor, integrator, optimizer, replay buffer, the systems' current
state and history, and the replay RNG. :meth:`Trainer.fit` runs epochs until ``config.epochs``
are done, firing the observer hooks of :mod:`nbtoolkit.hookspecs` through ``host.hook``; it
prints nothing. Epoch numbers in events are 0-based indices of the running epoch;
:attr:`Trainer.epoch` counts completed epochs.

The replay buffer persists across epochs by default (``replay_scope = "persistent"``): Part 2
then keeps the predictor correct on every region of phase space visited so far, not just the
last ``steps_per_epoch`` steps, which with the seed's small per-epoch trajectories would make
Part 2 a no-op. ``replay_scope = "epoch"`` clears it at the start of every epoch (the seed's
behaviour).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import validate
from ..control import RunControl, RunStopped
from ..errors import CheckpointError, ConfigError
from ..events import EpochEnd, FitEnd, FitStart
from ..field import ExternalField
from ..plugin_manager import PluginHost, get_host
from ..predictor import DtPredictor, History
from ..state import NBodyState, System
from .buffer import ReplayBuffer
from .calibrate import CalibrationResult, calibrate_safety, reset_safety
from .checkpoint import read_checkpoint, write_checkpoint
from .collect import CollectResult, collect_trajectory
from .config import TrainConfig, merge_sources, saved_config
from .context import LoopContext
from .distributed import LOCAL, Collective
from .replay import ReplayOutcome, generalize_on_trajectory
from .restart import restart_dispersed
from .trainer_state import restore_trainer, trainer_payload


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did: ``epochs_completed`` (total, including epochs of earlier runs
    this trainer resumed from), ``stopped`` (ended by a stop request), and one metrics dict per
    epoch completed in this call (the keys of :class:`~nbtoolkit.events.EpochEnd`, plus
    ``fallbacks``, ``restarted`` (dispersed systems started again, see :mod:`.restart`),
    ``mean_rel_dE`` and ``max_rel_dE`` of the last replay minibatch)."""

    epochs_completed: int
    stopped: bool
    epoch_metrics: list[dict[str, Any]] = field(default_factory=list)


class _Part1(NamedTuple):
    """Part 1 of one epoch over all the ranks (retrains: rounds, the same on every rank)."""

    accepted: int
    retrains: int
    dt_sum: float
    fallbacks: int
    restarted: int


class Trainer:
    """Trains a dt predictor on ``system`` (B systems) with the generalization loop.

    ``system``: a :class:`~nbtoolkit.state.System` (a preset's, for instance), whose orbital
    periods ``stop_at_period`` needs, or a bare :class:`NBodyState` for systems without a known
    period. ``host``: plugin host (default :func:`nbtoolkit.get_host`); ``control``: pause/stop
    (checked between Part 1 attempts and Part 2 iterations); ``predictor``: a ready
    predictor instead of building ``config.predictor`` from the registry (it must match
    ``config.predictor`` and the architecture keys for checkpoints to load back);
    ``validation_state``: systems not trained on, for the safety calibration at the end of
    :meth:`fit` (default: the training systems from their initial state); ``collective``:
    data-parallel training (:mod:`.distributed`; default one process): ``system`` is then the
    global one and this rank trains on its shard of it.
    """

    def __init__(self, config: TrainConfig, system: System | NBodyState, *, host: PluginHost | None = None,
                 control: RunControl | None = None, predictor: DtPredictor | None = None,
                 validation_state: NBodyState | None = None, collective: Collective | None = None) -> None:
        state, period = (system.state, system.period) if isinstance(system, System) else (system, None)
        self.config = config
        self.collective = LOCAL if collective is None else collective
        self.host = host or get_host()
        self.control = control
        self.device = torch.device(config.device)
        self.field = self._external_field(config, state)
        state = state.replace(field=self.field)
        if validation_state is not None:
            validation_state = validation_state.replace(field=self.field)
        self.state = state.detach().to(device=self.device).validate("training state", allow_padding=True)
        validate.energy_normalisable(self.state, "training state")
        self.initial_state = self.state.clone()
        self.validation_state = None if validation_state is None else \
            validation_state.detach().to(device=self.device).validate("validation state", allow_padding=True)
        self.calibration: CalibrationResult | None = None
        self.period = None if period is None else period.to(device=self.device, dtype=self.state.dtype)
        self.n_systems = self.state.batch_size
        self.state, self.period = self.collective.shard_systems(self.state, self.period)
        self.stop_time: Tensor | None = None
        if config.stop_at_period:
            if self.period is None:
                raise ConfigError("configuration key 'stop_at_period' needs the orbital period of every system; "
                                  "this state has none (use a periodic preset or pass a System(state, period))")
            self.stop_time = self.state.time + self.period

        self.integrator = self.host.integrators.create(config.integrator, **config.integrator_options)
        entry = self.host.predictors.get(config.predictor)
        self.predictor_options = config.predictor_build_options(entry.accepted_options(), entry.options())
        if predictor is None:
            predictor = self.host.predictors.create(config.predictor, **self.predictor_options)
        self.predictor = predictor.to(device=self.device, dtype=self.state.dtype)
        self.collective.broadcast_parameters(self.predictor)
        if not isinstance(self.predictor, DtPredictor) or not self.predictor.trainable:
            raise ConfigError(f"dt predictor '{config.predictor}' has no trainable parameters; choose a learned one (e.g. mlp)")
        history_len = int(getattr(self.predictor, "history_len", 0))
        if self.predictor_options.get("history_len", history_len) != history_len:
            raise ConfigError(
                f"predictor option 'history_len' is {self.predictor_options['history_len']} but dt predictor "
                f"'{config.predictor}' reads {history_len} past states"
            )
        self.sampler = self.host.samplers.create(config.sampler, **config.sampler_options)
        self.observer_options = self.host.observer_options.resolve(config.observer_options,
                                                                   "configuration key 'observer_options'")
        self.gate = self.host.gates.create(config.gate)
        self.fallback: DtPredictor | None = None
        if config.on_retrain_limit == "fallback":
            self.fallback = self.host.predictors.create(config.fallback_predictor, **config.fallback_options)
            self.fallback = self.fallback.to(device=self.device, dtype=self.state.dtype)
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=config.learning_rate)
        self.generator = torch.Generator().manual_seed(config.seed + self.collective.rank)
        self.history: History | None = History.empty(self.state, history_len) if history_len else None
        self.buffer = ReplayBuffer.like(self.state, config.buffer_capacity, history_len)
        self.epoch = 0
        self.total_accepted = 0
        self.total_retrains = 0

    def _external_field(self, config: TrainConfig, state: NBodyState) -> ExternalField | None:
        """The field named by ``config.field`` (None for ""), built with ``config.field_options``.
        A state that carries a field of its own is refused: checkpoints record the field by name."""
        if state.field is not None:
            raise ConfigError("the training state carries an external field; name it in the configuration "
                              "instead (key 'field', options 'field_options'), so that checkpoints record it")
        if not config.field:
            if config.field_options:
                raise ConfigError("configuration key 'field_options' is set but 'field' names no external field")
            return None
        return self.host.fields.create(config.field, **config.field_options)

    # ------------------------------------------------------------------ training
    def fit(self) -> FitResult:
        """Run epochs until ``config.epochs`` are completed (or a stop request).

        Fires FitStart, then per epoch StepAccepted / StepRejected / ReplayIteration events and
        EpochEnd, then FitEnd. Training runs without the safety factor (it is reset to 1); once
        all epochs are done and ``calibrate_pass_rate`` > 0 it is calibrated
        (:meth:`calibrate`). A stop request (``RunStopped``) ends it cleanly with
        ``stopped=True``. Any other exception fires FitEnd(stopped=True, error=...) and is
        re-raised. With ``config.checkpoint_path`` set, a checkpoint is written every
        ``checkpoint_every`` epochs and at the end (also after a stop).
        """
        cfg = self.config
        loop = self.loop_context()
        start = time.perf_counter()
        results: list[dict[str, Any]] = []
        stopped = False
        self._prepare_fit()
        try:
            self._fit_start(loop.hook)
            while self.epoch < cfg.epochs:
                # this epoch's learning rate (with replay_scope "epoch", an empty buffer); dispersed systems restart
                restarted = self._start_epoch()
                # Part 1: every system collects steps_per_epoch accepted steps, retraining on rejections
                collected = collect_trajectory(loop, self.state, buffer=self.buffer, history=self.history,
                                               epoch=self.epoch, stop_time=self.stop_time)
                part1 = self._advance(collected, restarted)
                if collected.stopped:
                    stopped = True
                    break
                # Part 2: replay minibatches of the buffer until one passes the gate entirely
                replay = generalize_on_trajectory(loop, self.buffer, epoch=self.epoch)
                if replay.stopped:
                    stopped = True
                    break
                # events: EpochEnd to the observers, the epoch's figures to the result
                results.append(self._end_epoch(loop.hook, part1, replay, start))
                # checkpoint every checkpoint_every epochs (the last epoch's is written below)
                if cfg.checkpoint_path and cfg.checkpoint_every and self.epoch % cfg.checkpoint_every == 0 \
                        and self.epoch < cfg.epochs:
                    self.save_checkpoint(cfg.checkpoint_path)
            # after the last epoch: the safety calibration, then the final checkpoint
            if not stopped and cfg.calibrate_pass_rate > 0 and hasattr(self.predictor, "log_safety"):
                self.calibrate()
            if cfg.checkpoint_path:
                self.save_checkpoint(cfg.checkpoint_path)
        except RunStopped:
            stopped = True
        except BaseException as exc:
            self._fit_end(loop.hook, start, stopped=True, error=f"{type(exc).__name__}: {exc}")
            raise
        self._fit_end(loop.hook, start, stopped=stopped)
        return FitResult(epochs_completed=self.epoch, stopped=stopped, epoch_metrics=results)

    def loop_context(self) -> LoopContext:
        """The parts of this trainer that Part 1 and Part 2 use (see :mod:`.context`); events go to the
        host's observers on the main rank."""
        cfg = self.config
        return LoopContext(self.predictor, self.integrator, cfg, self.optimizer, gate=self.gate,
                           hook=self.collective.observers(self.host.hook), control=self.control, fallback=self.fallback,
                           sampler=self.sampler, generator=self.generator, collective=self.collective)

    def _prepare_fit(self) -> None:
        """Check that the checkpoint can be written, and train without the safety factor (reset to 1)."""
        validate.writable_file(self.config.checkpoint_path, "configuration key 'checkpoint_path'")
        reset_safety(self.predictor)

    def _fit_start(self, hook: Any) -> None:
        """Fire FitStart with every rank's systems."""
        cfg = self.config
        mass, position = (torch.cat(parts).numpy() for parts in zip(*self.collective.gather(
            (self.state.mass.cpu(), self.state.position.cpu()))))
        hook.nbtoolkit_fit_start(event=FitStart(
            epochs=cfg.epochs, start_epoch=self.epoch, n_systems=self.n_systems, n_bodies=self.state.n_bodies,
            dim=self.state.dim, energy_threshold=cfg.energy_threshold, mass=mass.copy(), position=position.copy(),
            config={**cfg.to_dict(), "observer_options": dict(self.observer_options)},
        ))

    def _fit_end(self, hook: Any, start: float, stopped: bool, error: str | None = None) -> None:
        """Fire FitEnd; ``error`` names the exception that ended the run, if any."""
        hook.nbtoolkit_fit_end(event=FitEnd(
            epochs_completed=self.epoch, total_accepted=self.total_accepted, total_retrains=self.total_retrains,
            wall_time=time.perf_counter() - start, stopped=stopped, error=error,
        ))

    def _start_epoch(self) -> int:
        """Set the learning rate of epoch ``self.epoch``; empty the buffer when it is kept for one epoch only;
        start the systems that have dispersed again (:mod:`.restart`) and return how many (on this rank)."""
        if self.config.replay_scope == "epoch":
            self.buffer.clear()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate_at(self.epoch)
        initial = self.collective.shard_systems(self.initial_state, None)[0]
        self.state, self.history, restarted = restart_dispersed(self.state, initial, self.history)
        return restarted

    def _advance(self, collected: CollectResult, restarted: int) -> _Part1:
        """Move on to where Part 1 left the systems and count its steps and restarts (summed over the ranks)."""
        self.state, self.history = collected.state, collected.history
        totals = self.collective.total([int(collected.accepted.sum()), collected.dt_sum, collected.fallbacks, restarted])
        part1 = _Part1(accepted=int(totals[0]), retrains=collected.retrains, dt_sum=totals[1], fallbacks=int(totals[2]),
                       restarted=int(totals[3]))
        self.total_accepted += part1.accepted
        self.total_retrains += part1.retrains
        return part1

    def _end_epoch(self, hook: Any, part1: _Part1, replay: ReplayOutcome, start: float) -> dict[str, Any]:
        """Count the epoch as done, fire EpochEnd and return the epoch's metrics (see :class:`FitResult`)."""
        event = EpochEnd(
            epoch=self.epoch, accepted_steps=part1.accepted, retrains=part1.retrains,
            replay_iterations=replay.iterations, replay_converged=replay.converged, replay_skipped=replay.skipped,
            pass_rate=replay.pass_rate, loss=replay.loss, mean_dt=part1.dt_sum / part1.accepted if part1.accepted else 0.0,
            buffer_size=replay.buffer_size, wall_time=time.perf_counter() - start,
        )
        self.epoch += 1
        hook.nbtoolkit_epoch_end(event=event)
        return {**vars(event), "fallbacks": part1.fallbacks, "restarted": part1.restarted, "mean_rel_dE": replay.mean_rel_dE,
                "max_rel_dE": replay.max_rel_dE}

    def calibrate(self) -> CalibrationResult:
        """Set the predictor's safety factor on the validation systems (see :mod:`.calibrate`), under
        the gate training used. In data-parallel training every rank calibrates on all the
        validation systems (the same computation), and rank 0's factor is broadcast."""
        cfg = self.config
        state = self.validation_state if self.validation_state is not None else self.initial_state
        self.calibration = calibrate_safety(self.predictor, self.integrator, state, threshold=cfg.energy_threshold,
                                            target_pass_rate=cfg.calibrate_pass_rate, steps=cfg.calibrate_steps,
                                            gate=self.gate)
        self.collective.broadcast_parameters(self.predictor)
        return self.calibration

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything :meth:`from_checkpoint` needs to continue exactly (see :mod:`.trainer_state`)."""
        return trainer_payload(self)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint atomically (see :mod:`nbtoolkit.training.checkpoint`). In data-parallel
        training every rank must call this; rank 0 writes the file."""
        payload = self.checkpoint_payload()
        return write_checkpoint(payload, path) if self.collective.is_main else Path(path)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], system: System | NBodyState | None = None, *,
                        host: PluginHost | None = None, control: RunControl | None = None,
                        collective: Collective | None = None, **config_overrides: Any) -> Trainer:
        """Resume training from a checkpoint.

        Without ``system`` the run continues exactly where it stopped (same systems, history,
        replay buffer, optimizer and RNG state). With ``system`` (a :class:`~nbtoolkit.state.System`,
        or a bare state as for :class:`Trainer`) the trained model, optimizer and epoch count carry
        over to new systems; the replay
        buffer is kept when the new systems have the same N, D, G and softening, else it starts
        empty. ``config_overrides`` change configuration keys (e.g. ``epochs`` to train
        longer; ``predictor_options`` change option by option). Run keys (checkpoint_path,
        checkpoint_every, observer_options, device) are not restored from the file: they come
        from the overrides or their defaults. With a data-parallel ``collective`` every rank
        restores its shard (see :mod:`.shards`).
        """
        data = read_checkpoint(path)
        where = f"checkpoint '{path}'"
        host = host or get_host()
        saved_predictor = str(data["plugins"]["predictor"]["name"])
        accepted = host.predictors.get(saved_predictor).accepted_options() if saved_predictor in host.predictors else None
        try:
            config = TrainConfig.from_dict(merge_sources(saved_config(dict(data["config"]), accepted), config_overrides))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if config.predictor != saved_predictor:
            raise CheckpointError(
                f"{where} holds dt predictor '{saved_predictor}'; cannot resume it as '{config.predictor}'"
            )
        restored_state = NBodyState.from_dict(data["state"], where=f"{where}: state", allow_padding=True)
        new_systems = system is not None
        if system is None:
            system = System(restored_state, data["period"])
        if config.predictor not in host.predictors:
            raise CheckpointError(
                f"{where} was trained with dt predictor '{config.predictor}', which is not registered now "
                f"(known: {', '.join(host.predictors.names())}); install or enable the plugin that provides it"
            )
        trainer = cls(config, system, host=host, control=control, collective=collective)
        restore_trainer(trainer, data, where, restored_state, new_systems=new_systems)
        return trainer
