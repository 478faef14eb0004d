"""The main job without a display: train on the built-in default system, then show what it learned.

Trains the default ``mlp`` predictor on a batch of Kepler orbits (eccentricities 0.5–0.95), with
the terminal progress bar, then runs a held-out orbit (e = 0.75) for ten periods with the
learned dt, with the pretrained ``learned`` model that ships with nbtoolkit (trained on every
kind of system, never on this orbit) and with the free-fall rule tuned so that every step passes
the gate, and prints them side by side. ``nbtoolkit gui`` runs this when no display is available.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from nbtoolkit.evaluate import evaluate_predictor, evaluate_tuned_rule, format_gate_table
from nbtoolkit.plugin_manager import get_host
from nbtoolkit.presets import make_preset
from nbtoolkit.training import TrainConfig, Trainer

#: training set and held-out orbit of the demo
TRAIN_PRESET = {"num_orbits": 8, "e_min": 0.5, "e_max": 0.95, "seed": 0}
HELD_OUT_ECCENTRICITY = 0.75
ORBITS = 10
#: the loss band just under the gate, the learning-rate decay and the capped Part 2 of the 'general' set's
#: [train] table (a band this close to the gate rarely lets a whole minibatch pass, so the cap sets the cost)
TRAINING: dict[str, Any] = {"E_lower": 1.1e-4, "E_upper": 1.7e-4, "lr_decay": 0.03, "replay_batch_size": 256, "replay_steps": 20}


def run_headless_demo(*, epochs: int = 30, seed: int = 0, out: TextIO = sys.stdout) -> int:
    """Train, evaluate and print; returns 0. Progress goes to stderr when it is a terminal."""
    host = get_host()
    system = make_preset("kepler-batch", **TRAIN_PRESET)
    progress = {"progress": sys.stderr.isatty()} if "progress" in host.observer_options else {}  # the bar may be blocked
    config = TrainConfig(epochs=epochs, seed=seed, observer_options=progress, **TRAINING)
    print(f"training '{config.predictor}' on {system.state.batch_size} Kepler orbits, e in "
          f"[{TRAIN_PRESET['e_min']}, {TRAIN_PRESET['e_max']}], {epochs} epochs ...", file=out, flush=True)
    trainer = Trainer(config, system, host=host)
    result = trainer.fit()
    print(f"trained: {result.epochs_completed} epochs, {trainer.total_accepted} accepted steps, "
          f"{trainer.total_retrains} retrains", file=out)

    held_out = make_preset("kepler", eccentricity=HELD_OUT_ECCENTRICITY)
    integrator = host.integrators.create(config.integrator)
    learned = trainer.predictor.eval()
    rows = evaluate_predictor(held_out, integrator, learned, orbits=ORBITS, threshold=config.energy_threshold,
                              label="just trained (mlp)")
    rows += evaluate_predictor(held_out, integrator, host.predictors.create("learned"), orbits=ORBITS,
                               threshold=config.energy_threshold, label="pretrained 'learned'")
    rows.append(evaluate_tuned_rule(host, "freefall", held_out, integrator, orbits=ORBITS,
                                    threshold=config.energy_threshold)[1])
    print(f"\nheld-out Kepler orbit e = {HELD_OUT_ECCENTRICITY}, {ORBITS} periods, gate |dE/E| <= "
          f"{config.energy_threshold:g}, no guard:", file=out)
    print(format_gate_table([r.as_dict() for r in rows]), file=out)
    return 0

