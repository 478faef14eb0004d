"""Single-step primitives shared by Part 1 and Part 2 (the seed's names, batched).

Everything here works on a batch of B systems at once. The dt returned by the predictor stays
on the autograd graph through the integrator step to the gate's error, so the loss on that
error trains the predictor. The gate (a :class:`~nbtoolkit.gate.Gate`; default, and the seed's,
the energy gate) is passed in; below, |dE/E| stands for its error.

Loss (per sample, on l = log |dE/E|, band [E_lower, E_upper]):

    loss = relu(l - log E_upper)^2 + relu(log E_lower - l)^2

zero inside the band, squared log-distance outside. |dE/E| is floored at
:data:`~nbtoolkit.training.config.REL_DE_FLOOR` (round-off). A non-finite |dE/E| (the step
blew up) costs ``nonfinite_penalty`` with a gradient that shrinks dt, and never yields NaN
gradients: such samples are re-stepped with dt detached, so nothing flows back through the
blown-up arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..contracts import DtPredictor, Gate, History, Integrator, checked_dt, checked_error, checked_step
from ..gate import EnergyGate
from ..state import NBodyState
from .config import REL_DE_FLOOR, TrainConfig


def attempt_single_step(integrator: Integrator, state: NBodyState, dt: Tensor, n_steps: int = 1) -> NBodyState:
    """Advance ``state`` (B systems) by ``n_steps`` integrator steps of ``dt`` (B,) each.

    Returns a new state on the graph of ``dt``; ``state`` itself is never modified (states are
    frozen and integrators return new ones). A step that breaks the integrator contract (wrong
    shapes, NaN out of a finite state, ...) raises :class:`~nbtoolkit.errors.PluginError` naming
    the integrator and its plugin.
    """
    new = state
    for _ in range(n_steps):
        new = checked_step(integrator, new, dt)
    return new


def check_energy_threshold(state0: NBodyState, state1: NBodyState, threshold: float, *,
                           energy0: Tensor | None = None, gate: Gate | None = None) -> tuple[Tensor, Tensor]:
    """Judge a step from ``state0`` to ``state1`` with ``gate`` (default: the energy gate).

    Returns ``(passed, rel_dE)``: ``rel_dE`` (B,) the gate's error, for the energy gate
    |E1 - E0| / |E0| (inf where not finite), on the graph of state1; ``passed`` (B,) bool, True
    where ``rel_dE <= threshold``. ``energy0`` may be given to skip recomputing what the gate
    measures on state0: ``gate.reference(state0)``, for the energy gate E0 (B,). The answer is
    checked (:func:`nbtoolkit.contracts.checked_error`).
    """
    rel = checked_error(EnergyGate() if gate is None else gate, state0, state1, energy0)
    return rel.detach() <= threshold, rel


def compute_single_step_loss(rel_dE: Tensor, config: TrainConfig, dt: Tensor | None = None) -> Tensor:
    """Band loss per sample, (B,), on log |dE/E| outside [E_lower, E_upper] (see module docstring).

    Non-finite ``rel_dE`` gives ``config.nonfinite_penalty``; when ``dt`` (B,) is given, that
    penalty carries the gradient ``2 sqrt(penalty)`` per unit of log dt, so training shrinks dt,
    as the band loss would at |dE/E| = E_upper * exp(sqrt(penalty)). Gradients are always finite.
    """
    finite = torch.isfinite(rel_dE)
    safe = torch.where(finite, rel_dE, torch.ones_like(rel_dE)).clamp_min(REL_DE_FLOOR)
    log_rel = safe.log()
    band = torch.relu(log_rel - math.log(config.E_upper)).square() + torch.relu(math.log(config.E_lower) - log_rel).square()
    penalty = torch.full_like(band, config.nonfinite_penalty)
    if dt is not None:
        log_dt = dt.log()
        penalty = penalty + 2.0 * math.sqrt(config.nonfinite_penalty) * (log_dt - log_dt.detach())
    return torch.where(finite, band, penalty)


@dataclass(frozen=True)
class StepOutcome:
    """One predicted step of a batch: dt (B,) and losses (B,) on the graph; the rest detached."""

    dt: Tensor
    state: NBodyState
    rel_dE: Tensor
    passed: Tensor
    losses: Tensor


def padding_groups(state: NBodyState) -> list[tuple[Tensor, int]] | None:
    """Systems grouped by their number of real bodies rounded up to 2, 3, 4, 8, 16, ...: a list of
    (indices, bodies to keep), or None when the batch holds no padding bodies (padding must
    trail the real bodies, as :func:`~nbtoolkit.training.trainset.pad_systems` lays it out)."""
    real = state.body_mask
    if bool(real.all()):
        return None
    counts = real.sum(-1)
    bucket = torch.where(counts <= 3, counts, 2 ** torch.ceil(torch.log2(counts.to(torch.float64))).long())
    bucket = bucket.clamp(max=state.n_bodies)
    groups = []
    for b in torch.unique(bucket).tolist():
        idx = torch.nonzero(bucket == b).squeeze(-1)
        groups.append((idx, int(counts[idx].max())))
    return groups


def predict_and_step(predictor: DtPredictor, integrator: Integrator, state: NBodyState, history: History | None,
                     config: TrainConfig, *, reference: Tensor | None = None, gate: Gate | None = None) -> StepOutcome:
    """Predict dt for every system, step, measure the gate's error (default gate: |dE/E|) and the
    per-sample loss, all batched. ``reference`` is ``gate.reference(state)`` if already known.

    A batch padded to mix numbers of bodies is evaluated as one batched computation per
    group of similar N (:func:`padding_groups`), each trimmed of its padding, so a two-body
    system does not pay for the 64 slots of the largest one. Padding bodies exert no force
    and hold no energy, so the result is the same as on the padded batch; they stay where
    they are.
    """
    gate = EnergyGate() if gate is None else gate
    groups = padding_groups(state)
    if groups is None or len(groups) == 1 and groups[0][1] == state.n_bodies:
        return _predict_and_step(predictor, integrator, state, history, config, reference, gate)
    ref = gate.reference(state) if reference is None else reference
    outs = []
    for idx, n in groups:
        sub = state.index(idx).trim_bodies(n)
        hsub = None if history is None else History(history.position[idx, :, :n], history.velocity[idx, :, :n],
                                                    history.mask[idx])
        outs.append(_predict_and_step(predictor, integrator, sub, hsub, config, None if ref is None else ref[idx], gate))
    order = torch.cat([idx for idx, _ in groups])
    inverse = torch.argsort(order)
    position, velocity = state.position.detach().clone(), state.velocity.detach().clone()
    caches = all(o.state.acceleration is not None for o in outs)
    acceleration = torch.zeros_like(position) if caches else None
    for (idx, n), o in zip(groups, outs):
        position[idx, :n], velocity[idx, :n] = o.state.position, o.state.velocity
        if acceleration is not None and o.state.acceleration is not None:
            acceleration[idx, :n] = o.state.acceleration
    time = torch.cat([o.state.time for o in outs])[inverse]
    new = state.detach().replace(position=position, velocity=velocity, time=time, acceleration=acceleration)
    pick = lambda name: torch.cat([getattr(o, name) for o in outs])[inverse]  # noqa: E731
    return StepOutcome(dt=pick("dt"), state=new, rel_dE=pick("rel_dE"), passed=pick("passed"), losses=pick("losses"))


def _predict_and_step(predictor: DtPredictor, integrator: Integrator, state: NBodyState, history: History | None,
                      config: TrainConfig, reference: Tensor | None, gate: Gate) -> StepOutcome:
    """:func:`predict_and_step` on one batch without padding groups.

    Systems whose step is not finite are stepped again with their dt detached, so their
    (penalty) loss reaches the predictor only through :func:`compute_single_step_loss`'s dt
    term. The returned state is detached (it is only ever accepted, not trained through).
    """
    dt = checked_dt(predictor(state, history), state, predictor)
    ref = gate.reference(state) if reference is None else reference
    new = attempt_single_step(integrator, state, dt, config.n_steps)
    passed, rel = check_energy_threshold(state, new, config.energy_threshold, energy0=ref, gate=gate)
    finite = torch.isfinite(rel)
    if dt.requires_grad and not bool(finite.all()):
        safe_dt = torch.where(finite, dt, dt.detach())
        new = attempt_single_step(integrator, state, safe_dt, config.n_steps)
        passed, rel = check_energy_threshold(state, new, config.energy_threshold, energy0=ref, gate=gate)
    losses = compute_single_step_loss(rel, config, dt)
    return StepOutcome(dt=dt, state=new.detach(), rel_dE=rel.detach(), passed=passed, losses=losses)


def batch_objective(losses: Tensor, rel_dE: Tensor, config: TrainConfig) -> Tensor:
    """The training objective of one evaluated batch (Part 1 attempt or Part 2 minibatch).

    Mean loss of the samples failing the gate, plus ``efficiency_weight`` times the mean loss
    of the passing ones (which pushes dt up where |dE/E| < E_lower). A scalar on the graph of
    ``losses``; 0 when there is nothing to learn.
    """
    passed = rel_dE <= config.energy_threshold
    total = losses.sum() * 0.0
    if bool((~passed).any()):
        total = total + losses[~passed].mean()
    if config.efficiency_weight > 0 and bool(passed.any()):
        total = total + config.efficiency_weight * losses[passed].mean()
    return total


def optimizer_step(optimizer: torch.optim.Optimizer, loss: Tensor, grad_clip: float = 0.0,
                   reduce: Callable[[list[Tensor]], None] | None = None) -> bool:
    """Backpropagate ``loss`` and step ``optimizer`` (gradient norm clipped at ``grad_clip`` > 0).

    ``reduce`` (data-parallel training) is called on all the optimizer's parameters after the
    backward pass, to combine their gradients across ranks. If any gradient is not finite the
    update is skipped (returns False) so the model is never corrupted; returns True when the
    parameters were updated.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if reduce is not None:
        reduce([p for group in optimizer.param_groups for p in group["params"]])
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        return False
    if not all(bool(torch.isfinite(p.grad).all()) for p in params):
        optimizer.zero_grad(set_to_none=True)
        return False
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return True
