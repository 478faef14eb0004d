"""Part 1: trajectory collection under the gate, for a batch of systems at once.

The gate (a :class:`~nbtoolkit.gate.Gate`, the energy gate by default) judges every step; its
error is what the buffer, the events and the messages call |dE/E| (it is that for the default).

Each iteration predicts dt for every still-collecting system and takes one step. Systems whose
step passes the gate advance (their pre-step state, dt, |dE/E| and history window go into the
replay buffer); the failing ones stay where they are, the predictor takes one optimizer step on
their mean loss, and they are retried in the next iteration with a fresh prediction. A system
is done after ``steps_per_epoch`` accepted steps (or, with a stop time, once it reaches it).

Efficiency: with ``efficiency_weight`` w > 0 the optimizer step also carries w times the mean
band loss of the systems that passed (see :func:`~nbtoolkit.training.steps.batch_objective`),
and an iteration in which every system passed takes that step alone; this is what pushes dt up
where |dE/E| < E_lower. Only steps taken because of failures count as retrains.

Warmup: with ``history_len`` K > 0 a sample is only recorded once its history window is full,
so the first K accepted steps from a fresh history are taken but not put in the buffer.

Retry cap: ``max_retrain_steps`` consecutive rejections of one system raise
:class:`~nbtoolkit.errors.RetrainLimitError`, or with ``on_retrain_limit =
"fallback"`` that step is taken with the fallback (classical) predictor's dt, halved until it
passes the gate (at most :data:`FALLBACK_HALVINGS` times), and collection goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..contracts import History, checked_dt
from ..errors import RetrainLimitError
from ..events import StepAccepted, StepRejected
from ..physics import state_accelerations
from ..state import NBodyState
from .buffer import ReplayBuffer
from .context import LoopContext
from .distributed import Round
from .steps import attempt_single_step, check_energy_threshold, optimizer_step, predict_and_step

#: most dt halvings the fallback tries before giving up on a step
FALLBACK_HALVINGS = 40


@dataclass
class CollectResult:
    """What :func:`collect_trajectory` did.

    ``state`` and ``history``: where the systems are now (detached); ``buffer``: the replay
    buffer the samples went to; ``accepted`` and ``rejected`` (B,) long: accepted steps and
    rejected attempts per system; ``recorded``: samples added to the buffer; ``retrains``:
    optimizer steps taken; ``fallbacks``: steps taken with the fallback predictor;
    ``dt_sum``: sum of accepted dt (all systems); ``stopped``: ended by a stop request.
    """

    state: NBodyState
    history: History | None
    buffer: ReplayBuffer
    accepted: Tensor
    rejected: Tensor
    recorded: int
    retrains: int
    fallbacks: int
    dt_sum: float
    stopped: bool

    @property
    def mean_dt(self) -> float:
        """Mean accepted dt over all accepted steps (0 if none)."""
        total = int(self.accepted.sum())
        return self.dt_sum / total if total else 0.0


def _put(full: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    out = full.clone()
    out[idx] = rows
    return out


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


class _Collection:
    """Mutable bookkeeping of one :func:`collect_trajectory` call."""

    def __init__(self, loop: LoopContext, state: NBodyState, buffer: ReplayBuffer, history: History | None,
                 epoch: int, stop_time: Tensor | None) -> None:
        self.loop, self.config, self.collective = loop, loop.config, loop.collective
        self.buffer, self.epoch = buffer, epoch
        self.state = state.detach()
        if self.state.acceleration is None:  # integrators that reuse the cache then never recompute it
            self.state = self.state.replace(acceleration=state_accelerations(self.state).detach())
        self.history = history
        self.reference = loop.gate.reference(self.state)  # what the gate measures on each system's current state
        B = state.batch_size
        device = state.device
        self.accepted = torch.zeros(B, dtype=torch.long, device=device)
        self.rejected = torch.zeros(B, dtype=torch.long, device=device)
        self.attempts = torch.zeros(B, dtype=torch.long, device=device)  # consecutive rejections
        self.stop_time = stop_time
        self.recorded = self.retrains = self.fallbacks = 0
        self.dt_sum = 0.0

    def active(self) -> Tensor:
        active = self.accepted < self.config.steps_per_epoch
        if self.stop_time is not None:
            active &= self.state.time < self.stop_time
        return torch.nonzero(active).squeeze(1)

    def iterate(self, idx: Tensor) -> Round:
        """One batched attempt for systems ``idx``: accept the passing ones, retrain on the failing ones.

        In data-parallel training ``idx`` may be empty (this rank's systems are done); the rank
        still joins the round, with nothing to learn. The round's ``collecting``: some rank still
        had systems to collect from after its accepted steps (a fallback step taken after the
        round may finish the last of them; one more round, empty on every rank, then ends Part 1)."""
        loop = self.loop
        if idx.numel() == 0:
            outcome = self.collective.round(None, None, self.config, loop.predictor)
            self.settle(outcome)
            return outcome
        sub = self.state.index(idx)
        hsub = None if self.history is None else self.history.index(idx)
        out = predict_and_step(loop.predictor, loop.integrator, sub, hsub, self.config,
                               reference=None if self.reference is None else self.reference[idx], gate=loop.gate)
        ok = out.passed
        if bool(ok.any()):
            rows = torch.nonzero(ok).squeeze(1)
            self.accept(idx[rows], sub.index(rows), out.state.index(rows), None if hsub is None else hsub.index(rows),
                        out.dt.detach()[rows], out.rel_dE[rows])
        outcome = self.collective.round(out.losses, out.rel_dE, self.config, loop.predictor,
                                        collecting=bool(self.active().numel()))
        self.settle(outcome)
        if bool(ok.all()):
            return outcome
        rows = torch.nonzero(~ok).squeeze(1)
        failing = idx[rows]
        loss = out.losses[rows].mean()
        self.attempts[failing] += 1
        self.rejected[failing] += 1
        if loop.hook is not None:
            loop.hook.nbtoolkit_step_rejected(event=StepRejected(
                epoch=self.epoch, step=int(self.accepted[failing[0]]), attempt=int(self.attempts[failing].max()),
                systems=_np(failing) + self.collective.offset, dt=_np(out.dt[rows]), rel_dE=_np(out.rel_dE[rows]),
                loss=float(loss.detach()),
            ))
        over = self.attempts[failing] >= self.config.max_retrain_steps
        if bool(over.any()):
            self.retrain_limit(failing[over], sub.index(rows[over]), None if hsub is None else hsub.index(rows[over]),
                               out.rel_dE[rows[over]])
        return outcome

    def settle(self, outcome: Round) -> None:
        """Take the round's optimizer step when some system failed (a retrain) or, with every system
        passing, when the efficiency term alone is positive."""
        if outcome.any_failed or outcome.value > 0:
            optimizer_step(self.loop.optimizer, outcome.objective, self.config.grad_clip, self.collective.reduce_gradients)
        self.retrains += int(outcome.any_failed)

    def accept(self, idx: Tensor, before: NBodyState, after: NBodyState, hist: History | None, dt: Tensor,
               rel: Tensor) -> None:
        """Advance systems ``idx`` to ``after``, record their samples and fire StepAccepted."""
        if hist is None:
            record = torch.ones_like(idx, dtype=torch.bool)
        else:
            record = hist.mask.all(dim=1)
        if bool(record.any()):
            r = torch.nonzero(record).squeeze(1)
            self.buffer.add(before.index(r), dt[r], rel[r], history=None if hist is None else hist.index(r),
                            system=idx[r] + self.collective.offset, epoch=self.epoch)
            self.recorded += int(r.numel())
        if hist is not None:
            pushed = hist.push(before)
            assert self.history is not None
            self.history = History(_put(self.history.position, idx, pushed.position),
                                   _put(self.history.velocity, idx, pushed.velocity), _put(self.history.mask, idx, pushed.mask))
        self.state = self.state.scatter(idx, after)
        new_reference = None if self.reference is None else self.loop.gate.reference(after)
        if self.reference is not None and new_reference is not None:
            self.reference = _put(self.reference, idx, new_reference)
        step = int(self.accepted[idx[0]])
        self.accepted[idx] += 1
        self.dt_sum += float(dt.sum())
        if self.loop.hook is not None:
            self.loop.hook.nbtoolkit_step_accepted(event=StepAccepted(
                epoch=self.epoch, step=step, systems=_np(idx) + self.collective.offset, dt=_np(dt), rel_dE=_np(rel),
                retrains=_np(self.attempts[idx]),
                time=_np(after.time), position=_np(after.position), velocity=_np(after.velocity), mass=_np(after.mass),
            ))
        self.attempts[idx] = 0

    def retrain_limit(self, idx: Tensor, sub: NBodyState, hist: History | None, rel: Tensor) -> None:
        """Systems ``idx`` reached ``max_retrain_steps``: raise, or take the step with the fallback."""
        cfg, loop = self.config, self.loop
        first = int(idx[0])
        if cfg.on_retrain_limit == "raise" or loop.fallback is None:
            raise RetrainLimitError(first + self.collective.offset, float(rel[0]), cfg.energy_threshold,
                                    int(self.attempts[first]), self.epoch, int(self.accepted[first]))
        with torch.no_grad():
            dt = checked_dt(loop.fallback(sub, hist), sub, loop.fallback)
            e0 = None if self.reference is None else self.reference[idx]
            for _ in range(FALLBACK_HALVINGS + 1):
                after = attempt_single_step(loop.integrator, sub, dt, cfg.n_steps)
                passed, rel = check_energy_threshold(sub, after, cfg.energy_threshold, energy0=e0, gate=loop.gate)
                if bool(passed.all()):
                    break
                dt = torch.where(passed, dt, dt / 2)
            else:
                bad = int(torch.nonzero(~passed)[0, 0])
                raise RetrainLimitError(
                    int(idx[bad]) + self.collective.offset, float(rel[bad]), cfg.energy_threshold,
                    int(self.attempts[idx[bad]]), self.epoch, int(self.accepted[idx[bad]]),
                    detail=f"the fallback predictor '{cfg.fallback_predictor}' did not pass either after "
                           f"{FALLBACK_HALVINGS} halvings of its dt",
                )
        self.fallbacks += int(idx.numel())
        self.accept(idx, sub, after.detach(), hist, dt, rel.detach())


def collect_trajectory(loop: LoopContext, state: NBodyState, *, buffer: ReplayBuffer | None = None,
                       history: History | None = None, epoch: int = 0, stop_time: Tensor | None = None) -> CollectResult:
    """Part 1: collect ``loop.config.steps_per_epoch`` accepted steps from every system of ``state``.

    ``loop`` holds the predictor, integrator, optimizer, gate, event hook, control, fallback and
    collective (:class:`~nbtoolkit.training.context.LoopContext`). ``buffer`` receives the samples
    (a new one of ``config.buffer_capacity`` is made if None); ``history`` is the systems'
    current history window (None: a fresh, empty one when the predictor reads history).
    ``epoch`` numbers the events and errors. ``stop_time`` (B,) ends a system's collection once
    its time reaches it. ``loop.hook`` gets StepAccepted / StepRejected events; ``loop.control``
    is checked before every attempt, and a stop request ends collection early with
    ``stopped=True`` and everything accepted so far kept. ``loop.fallback`` takes the step when
    ``config.on_retrain_limit == "fallback"``. A data-parallel ``loop.collective``
    (:mod:`.distributed`) keeps the rounds going while any rank collects; events and errors
    then name global system indices.

    Raises :class:`~nbtoolkit.errors.RetrainLimitError` when a system is rejected
    ``max_retrain_steps`` times in a row (and no fallback applies).
    """
    K = int(getattr(loop.predictor, "history_len", 0))
    state = state.detach()
    if buffer is None:
        buffer = ReplayBuffer.like(state, loop.config.buffer_capacity, K)
    if K and history is None:
        history = History.empty(state, K)
    run = _Collection(loop, state, buffer, history if K else None, epoch, stop_time)
    stopped = False
    idx = run.active()
    collecting = loop.collective.any(idx.numel() > 0)
    while collecting:
        if loop.stop_requested():
            stopped = True
            break
        outcome = run.iterate(idx)
        idx = run.active()
        collecting = outcome.collecting if loop.collective.world_size > 1 else idx.numel() > 0
    return CollectResult(state=run.state, history=run.history, buffer=buffer, accepted=run.accepted, rejected=run.rejected,
                         recorded=run.recorded, retrains=run.retrains, fallbacks=run.fallbacks, dt_sum=run.dt_sum,
                         stopped=stopped)
