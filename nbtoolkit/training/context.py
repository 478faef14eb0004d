"""The parts of one training run that Part 1 and Part 2 both use, in one object.

:func:`~nbtoolkit.training.collect.collect_trajectory` and
:func:`~nbtoolkit.training.replay.generalize_on_trajectory` take a :class:`LoopContext` and the
data they work on (the systems, the replay buffer, the epoch number). :meth:`Trainer.fit
<nbtoolkit.training.trainer.Trainer.fit>` builds one per run from its own parts; a script that
drives the two parts itself builds one by hand::

    loop = LoopContext(predictor, integrator, TrainConfig(), torch.optim.Adam(predictor.parameters()))
    collected = collect_trajectory(loop, state)
    replay = generalize_on_trajectory(loop, collected.buffer)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..contracts import DtPredictor, Gate, Integrator, Sampler
from ..control import RunControl, RunStopped
from ..gate import EnergyGate
from .config import TrainConfig
from .distributed import LOCAL, Collective


@dataclass(frozen=True)
class LoopContext:
    """What the generalization loop trains and with what, fixed for a run.

    ``predictor`` is trained by ``optimizer`` (over its parameters) under ``config``;
    ``integrator`` takes the steps and ``gate`` judges them (default: the energy gate, |dE/E|).
    ``hook`` receives the events (``host.hook``, or any object with the ``nbtoolkit_step_accepted``,
    ``nbtoolkit_step_rejected`` and ``nbtoolkit_replay_iteration`` methods; None: no events).
    ``control`` (pause/stop) is checked before every Part 1 attempt and Part 2 iteration.
    ``fallback`` is the classical predictor that takes a step when ``config.on_retrain_limit ==
    "fallback"``. ``sampler`` picks Part 2's minibatches (None: uniform without replacement)
    with ``generator``, the replay RNG. ``collective`` makes the rounds data-parallel
    (:mod:`.distributed`; default one process). Error messages name each part by the identity
    its registry stamped on it (:func:`nbtoolkit.registry.describe`), or by its class.
    """

    predictor: DtPredictor
    integrator: Integrator
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    gate: Gate = field(default_factory=EnergyGate)
    hook: Any = None
    control: RunControl | None = None
    fallback: DtPredictor | None = None
    sampler: Sampler | None = None
    generator: torch.Generator | None = None
    collective: Collective = LOCAL

    def stop_requested(self) -> bool:
        """Wait while ``control`` is paused; True when it asks the run to stop (False without one)."""
        if self.control is None:
            return False
        try:
            self.control.checkpoint()
        except RunStopped:
            return True
        return False
