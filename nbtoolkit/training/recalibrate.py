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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import validate
from ..errors import ConfigError
from ..plugin_manager import PluginHost, get_host
from .calibrate import CalibrationResult, calibrate_safety
from .checkpoint import load_trained, write_model
from .ensemble import combine_models, member_seed
from .trainset import DEFAULT_TRAINING_SET, load_training_set, pad_systems

#: the name ``--model`` accepts for the model that ships with nbtoolkit
SHIPPED = "learned"


def recalibrate_model(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                      integrator: str = "leapfrog", gate: str = "energy", threshold: float = 2e-4,
                      training_set: str = DEFAULT_TRAINING_SET, seed: int | None = None, pass_rate: float = 0.995,
                      steps: int = 1024, spread: float = 0.0, host: PluginHost | None = None) -> CalibrationResult:
    """Calibrate the model file or checkpoint ``source`` from scratch for ``integrator`` and ``gate``
    at ``threshold`` and write the model file ``out``; returns the calibration.

    ``source`` may be several model files of one recipe: they are combined into an ``mlp-ensemble``
    (:func:`~nbtoolkit.training.ensemble.combine_models`, with its option ``spread``) and calibrated as one. The validation
    systems are the training set drawn with ``seed + 1`` and ``seed + 2``; unset, ``seed`` is the
    training seed the model records (for an ensemble, the largest of its members': train the
    members with seeds 0, 1, ..., K - 1 and no member has seen the validation draws)."""
    host = host or get_host()
    if isinstance(source, (str, os.PathLike)):
        predictor, data = load_trained(source, host)
        seeds, origin = [member_seed(data)], str(source)
    else:
        predictor, data = combine_models(source, host, spread=spread)
        seeds, origin = [m["seed"] for m in data["info"]["members"]], ", ".join(str(s) for s in source)
    log_safety = getattr(predictor, "log_safety", None)
    if not isinstance(log_safety, torch.Tensor):
        raise ConfigError(f"the dt predictor in '{origin}' has no safety factors to calibrate")
    seed = max(seeds) if seed is None else seed
    validation = load_training_set(training_set)
    state = pad_systems(validation.validation_draws(seed))
    result = calibrate_safety(predictor, host.integrators.create(integrator), state, threshold=threshold,
                              target_pass_rate=pass_rate, steps=steps, gate=host.gates.create(gate), reset=True)
    calibration: dict[str, Any] = {
        **result.as_dict(), "integrator": integrator, "gate": gate, "threshold": threshold,
        "target_pass_rate": pass_rate, "training_set": training_set, "seed": seed, "steps": steps,
    }
    write_model(data, out, predictor_state={k: v.detach().cpu() for k, v in predictor.state_dict().items()},
                calibration=calibration, info={"calibrated_from": origin})
    return result


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``nbtoolkit calibrate``."""
    p.add_argument("--model", required=True, action="append",
                   help=f"model file or checkpoint to calibrate, or '{SHIPPED}' for the model that ships with nbtoolkit; "
                        "given several times, the models (mlp models of one recipe, e.g. trained with seeds 0, 1, ...) "
                        "are combined into one mlp-ensemble, calibrated as a whole")
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
    p.add_argument("--spread", type=validate.arg_number(low=0), default=0.0,
                   help="with several --model: the ensemble's option spread, how much shorter a step the members' "
                        "disagreement makes (default 0: the geometric mean of their dt)")
    p.add_argument("--seed", type=validate.arg_integer(low=0), default=None,
                   help="training seed of the model (default: the seed it records; for an ensemble, the largest)")
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
    sources = [model_source(model) for model in args.model]
    if args.spread and len(sources) == 1:
        raise ConfigError("--spread is an option of an ensemble: give several --model files to combine")
    result = recalibrate_model(sources[0] if len(sources) == 1 else sources, args.out, integrator=args.integrator,
                               gate=args.gate, threshold=args.threshold, training_set=args.training_set, seed=args.seed,
                               pass_rate=args.pass_rate, steps=args.steps, spread=args.spread)
    factors = ", ".join(f"{f:.3g}" for f in result.safety)
    print(f"safety factors     {factors}\nvalidation steps passing at factor 1 before the last round: "
          f"{100 * result.pass_rate:.2f} %\nmodel file         {args.out}")
    return 0


__all__ = ["add_calibrate_arguments", "cmd_calibrate", "model_source", "recalibrate_model"]
