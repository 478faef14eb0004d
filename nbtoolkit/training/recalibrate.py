"""``nbtoolkit calibrate``: calibrate a trained model again, for another integrator, gate or target.

A model's safety factors (:mod:`nbtoolkit.training.calibrate`) hold for the integrator, gate and
threshold it was calibrated with. Flown with a higher-order integrator it stays safe but wastes
its headroom (``yoshida4``'s error at the same dt is far below ``leapfrog``'s); under a stricter
gate it fails. Recalibrating keeps the weights and measures the factors again on validation
systems (the training set drawn with seeds ``seed + 1`` and ``seed + 2``, as ``nbtoolkit train``
does, with its ``[[validation]]`` tables), then writes a new model file::

    nbtoolkit calibrate --model learned --integrator yoshida4 --out learned-yoshida4.pt
    nbtoolkit simulate --predictor learned --predictor-option model=learned-yoshida4.pt --integrator yoshida4 ...

The file records what it was calibrated for (``calibration``: integrator, gate, threshold,
pass-rate target, training set and seed).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from .. import validate
from ..errors import ConfigError
from ..plugin_manager import PluginHost, get_host
from .calibrate import CalibrationResult, calibrate_safety
from .checkpoint import load_trained, write_model
from .trainset import DEFAULT_TRAINING_SET, load_training_set, pad_systems

#: the name ``--model`` accepts for the model that ships with nbtoolkit
SHIPPED = "learned"


def recalibrate_model(source: str | os.PathLike[str], out: str | os.PathLike[str], *, integrator: str = "leapfrog",
                      gate: str = "energy", threshold: float = 2e-4, training_set: str = DEFAULT_TRAINING_SET,
                      seed: int = 0, pass_rate: float = 0.995, steps: int = 1024,
                      host: PluginHost | None = None) -> CalibrationResult:
    """Calibrate the model file or checkpoint ``source`` from scratch for ``integrator`` and ``gate``
    at ``threshold`` and write the model file ``out``; returns the calibration."""
    host = host or get_host()
    predictor, data = load_trained(source, host)
    log_safety = getattr(predictor, "log_safety", None)
    if not isinstance(log_safety, torch.Tensor):
        raise ConfigError(f"the dt predictor in '{source}' has no safety factors to calibrate")
    validation = load_training_set(training_set)
    state = pad_systems(validation.validation_draws(seed))
    result = calibrate_safety(predictor, host.integrators.create(integrator), state, threshold=threshold,
                              target_pass_rate=pass_rate, steps=steps, gate=host.gates.create(gate), reset=True)
    calibration: dict[str, Any] = {
        **result.as_dict(), "integrator": integrator, "gate": gate, "threshold": threshold,
        "target_pass_rate": pass_rate, "training_set": training_set, "seed": seed, "steps": steps,
    }
    write_model(data, out, predictor_state={k: v.detach().cpu() for k, v in predictor.state_dict().items()},
                calibration=calibration, info={"calibrated_from": str(source)})
    return result


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``nbtoolkit calibrate``."""
    p.add_argument("--model", required=True,
                   help=f"model file or checkpoint to calibrate, or '{SHIPPED}' for the model that ships with nbtoolkit")
    p.add_argument("--out", required=True, type=Path, help="model file to write")
    p.add_argument("--integrator", default="leapfrog", help="integrator the model will fly with (default leapfrog)")
    p.add_argument("--gate", default="energy", help="gate its steps must pass (default energy)")
    p.add_argument("--threshold", type=validate.arg_number(low=0, low_open=True), default=2e-4,
                   help="threshold of the gate (default 2e-4)")
    p.add_argument("--pass-rate", type=validate.arg_number(low=0, high=1, low_open=True, high_open=True),
                   default=0.995, help="share of its steps every validation system must pass (default 0.995)")
    p.add_argument("--steps", type=validate.arg_integer(low=1), default=1024,
                   help="unguarded steps per validation system and round (default 1024)")
    p.add_argument("--training-set", default=DEFAULT_TRAINING_SET, metavar="NAME|FILE",
                   help=f"validation systems: this set drawn with seeds SEED + 1 and + 2 (default {DEFAULT_TRAINING_SET})")
    p.add_argument("--seed", type=validate.arg_integer(low=0), default=0, help="training seed of the model (default 0)")
    p.set_defaults(func=cmd_calibrate)


def model_source(model: str, host: PluginHost | None = None) -> Path:
    """The file behind ``--model``: a path, or the name of a registered dt predictor that loads a model
    file (its factory's ``model_file`` attribute, as ``learned`` has; the file is not read here)."""
    path = Path(model)
    if path.exists():
        return path
    host = host or get_host()
    if model in host.predictors:
        source = getattr(host.predictors.get(model).factory, "model_file", None)
        if source is None:
            raise ConfigError(f"dt predictor '{model}' is not loaded from a model file; give the path of one")
        return Path(source)
    raise ConfigError(f"--model '{model}' is neither a file nor a registered dt predictor that loads one "
                      f"(such as '{SHIPPED}')")


def cmd_calibrate(args: argparse.Namespace) -> int:
    source = model_source(args.model)
    result = recalibrate_model(source, args.out, integrator=args.integrator, gate=args.gate, threshold=args.threshold,
                               training_set=args.training_set, seed=args.seed, pass_rate=args.pass_rate,
                               steps=args.steps)
    factors = ", ".join(f"{f:.3g}" for f in result.safety)
    print(f"safety factors     {factors}\nvalidation steps passing at factor 1 before the last round: "
          f"{100 * result.pass_rate:.2f} %\nmodel file         {args.out}")
    return 0


__all__ = ["add_calibrate_arguments", "cmd_calibrate", "model_source", "recalibrate_model"]
