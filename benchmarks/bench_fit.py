"""Where a trained dt model is conservative and where it is bold, family by family.

A model trained with the loss band [E_lower, E_upper] should, at its *raw* dt (the network's dt
before the calibrated class factor), make a per-step |dE/E| inside that band on systems like its
training set. This script checks that for every ``[[systems]]`` table of a training set:

1. draw ``--per-table`` systems of each table with ``--seed`` (3 by default: the training draws
   use seed 0, the validation draws seeds 1 and 2, so these are systems the model has not seen);
2. fly them all in one batch, unguarded, with the model's calibrated dt for ``--steps`` steps, as
   ``evaluate`` would;
3. at every state, also take one step with the raw dt and record its |dE/E|, and the class
   factor the calibration put on that state.

Per table it prints the 10/50/90 % quantiles of the raw |dE/E|, the share of states below
E_lower and above the gate, and the median class factor. A table whose median sits below E_lower
is one the network under-fits on the safe side: its dt could be larger, and only training (not
calibration, whose factor its states share with others) can make it so. A table above E_upper
is one the network is bold on, and which pulls its classes' factors down.

Run: ``python benchmarks/bench_fit.py [--model learned|FILE] [--training-set general|FILE.toml]
[--per-table 4] [--steps 256] [--seed 3] [--json out.json]`` (about a minute on one core with
the defaults). The band is the training set's ``[train]`` table's unless ``--band LOW HIGH``
gives it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from nbtoolkit import get_host
from nbtoolkit.contracts import checked_error, checked_step
from nbtoolkit.families import draw_family
from nbtoolkit.gate import EnergyGate
from nbtoolkit.training.calibrate import unguarded_rollout
from nbtoolkit.training.config import TrainConfig
from nbtoolkit.training.trainset import TrainingSet, load_training_set, pad_systems
from plugins.learned_predictor import model_options

QUANTILES = (0.1, 0.5, 0.9)


def draw_tables(training_set: TrainingSet, per_table: int, seed: int) -> tuple[list[Any], list[int]]:
    """``per_table`` systems of each table (fewer where the table has fewer) drawn with ``seed``,
    and the table index of each."""
    generator = torch.Generator().manual_seed(seed)
    draws: list[Any] = []
    table: list[int] = []
    for k, spec in enumerate(training_set.systems):
        got = draw_family(spec.family, min(spec.count, per_table), generator, **spec.params)
        draws += got
        table += [k] * len(got)
    return draws, table


@torch.no_grad()
def raw_errors(predictor: Any, integrator: Any, state: Any, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """|dE/E| of one step at the raw dt (the calibrated dt over its class factor) and the class
    factor, each (steps, B), along the :func:`unguarded_rollout` with the calibrated dt; NaN once a
    system has blown up."""
    gate = EnergyGate()
    errors = torch.full((steps, state.batch_size), float("nan"), dtype=state.dtype)
    factors = torch.full_like(errors, float("nan"))
    for k, (current, _, dt, classes, alive) in enumerate(unguarded_rollout(predictor, integrator, state, steps)):
        factor = predictor.log_safety[classes].exp()
        raw_step = checked_step(integrator, current, dt / factor)
        errors[k] = torch.where(alive, checked_error(gate, current, raw_step), errors[k])
        factors[k] = torch.where(alive, factor, factors[k])
    return errors, factors


def table_rows(training_set: TrainingSet, table: list[int], errors: torch.Tensor, factors: torch.Tensor,
               band: tuple[float, float], threshold: float) -> list[dict[str, Any]]:
    """One row per table: quantiles of the raw |dE/E| over all its states, shares below the band
    and above the gate, median class factor."""
    index = torch.tensor(table)
    rows = []
    for k, spec in enumerate(training_set.systems):
        err = errors[:, index == k].flatten()
        fac = factors[:, index == k].flatten()
        seen = ~err.isnan()
        err, fac = err[seen], fac[seen]
        q = torch.quantile(err, torch.tensor(QUANTILES, dtype=err.dtype)).tolist() if len(err) else [float("nan")] * 3
        rows.append({
            "table": k + 1, "family": spec.family, "systems": int((index == k).sum()), "states": len(err),
            "raw_error_quantiles": q,
            "below_band": float((err < band[0]).double().mean()) if len(err) else float("nan"),
            "above_gate": float((err > threshold).double().mean()) if len(err) else float("nan"),
            "median_factor": float(fac.median()) if len(fac) else float("nan"),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="learned", help="'learned' (the shipped model) or a model file or checkpoint")
    parser.add_argument("--training-set", default="general", help="a built-in training set or a TOML file")
    parser.add_argument("--per-table", type=int, default=4, help="systems drawn per [[systems]] table")
    parser.add_argument("--steps", type=int, default=256, help="unguarded steps per system")
    parser.add_argument("--seed", type=int, default=3, help="seed of the draws (0 trains, 1 and 2 validate)")
    parser.add_argument("--band", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                        help="the loss band [E_lower, E_upper] (default: the training set's [train] table's)")
    parser.add_argument("--threshold", type=float, default=2e-4, help="the energy gate")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.per_table < 1 or args.steps < 1:
        parser.error("--per-table and --steps must be at least 1")
    torch.manual_seed(args.seed)
    host = get_host()
    predictor = host.predictors.create("learned", feedback=False, **model_options(args.model))
    if not hasattr(predictor, "log_safety"):
        parser.error(f"--model {args.model}: not a model with calibrated class factors (an mlp predictor)")
    training_set = load_training_set(args.training_set)
    config = TrainConfig.from_dict(dict(training_set.settings))
    band = (args.band[0], args.band[1]) if args.band else (config.E_lower, config.E_upper)
    draws, table = draw_tables(training_set, args.per_table, args.seed)
    errors, factors = raw_errors(predictor, host.integrators.create("leapfrog"), pad_systems(draws), args.steps)
    rows = table_rows(training_set, table, errors, factors, band, args.threshold)
    print(f"model {args.model}, training set '{training_set.name}', band [{band[0]:.2g}, {band[1]:.2g}], "
          f"gate {args.threshold:.2g}; raw |dE/E| per table over {args.steps} steps of each system")
    print(f"{'table':>5} {'family':14s} {'systems':>7} {'q10':>9} {'q50':>9} {'q90':>9} {'< band':>7} "
          f"{'> gate':>7} {'factor':>7}")
    for r in rows:
        q10, q50, q90 = r["raw_error_quantiles"]
        print(f"{r['table']:5d} {r['family']:14s} {r['systems']:7d} {q10:9.2e} {q50:9.2e} {q90:9.2e} "
              f"{100 * r['below_band']:6.1f}% {100 * r['above_gate']:6.1f}% {r['median_factor']:7.3f}")
    under = [str(r["table"]) for r in rows if r["raw_error_quantiles"][1] < band[0]]
    over = [str(r["table"]) for r in rows if r["raw_error_quantiles"][1] > band[1]]
    print(f"median below the band (conservative): {', '.join(under) or 'none'}; "
          f"above it (bold): {', '.join(over) or 'none'}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"band": band, "threshold": args.threshold, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
