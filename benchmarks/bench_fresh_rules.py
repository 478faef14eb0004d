"""Unseen draws against per-system tuned rules: the step requirement measured on many systems, not a list.

``bench_generalization.py`` and ``bench_outside.py`` compare the learned dt with classical rules tuned
for each of a few dozen named systems; ``bench_fresh.py`` flies hundreds of unseen draws but compares
them only with the network alone. This takes the first ``--per-table`` systems of every ``[[systems]]``
table of the training set, drawn with a seed the model never saw (training draws seed 0, calibration
seeds 1 and 2; the default here is 30), flies each alone for ``--steps`` steps (see below for where the
span ends), unguarded, with the shipped ``learned`` predictor (or ``--model`` / ``--predictor``), and tunes the
``freefall`` and ``aarseth`` rules so that every step of the same span [0, T] passes the gate (T: the time the learned
dt reached; :func:`nbtoolkit.evaluate.tune_rule`, a per-system tuning a user cannot do in advance).

Printed per family and for all: systems, the median ratio of the learned steps to the better tuned
rule's, how many systems need more steps than that rule, and the lowest learned pass rate; then one
row per system above 1. The requirement for a general model is a ratio of at most 1 and a pass rate
of at least 99 % on every system.

The span ends in a quiet phase of the learned run: after ``--steps`` steps, once the dt has passed a
maximum above the run's median (an apocentre; at most four times ``--steps``). A system whose bodies fly
apart (an unbound pair after its passage) ends once it has dispersed, as training would restart it
(:mod:`nbtoolkit.training.restart`): its dt grows geometrically from there and the span would otherwise
reach times of 1e150. An end at or soon after a close
passage, where steps are densest, would make the comparison a matter of timing: the energy errors a
rule tuned for that span is allowed to accumulate shift the time of its passage, so it can meet the
passage after T and skip most of it (with the end at exactly 256 steps, three eccentric Kepler spans
read 1.36-1.65 that way; with the end at the first step as long as the median, just after the passage,
1.47-2.89).

Run: ``python benchmarks/bench_fresh_rules.py [--model learned|FILE] [--predictor NAME:KEY=VALUE,...]
[--training-set general|FILE.toml] [--seed 30] [--per-table 3] [--steps 256] [--json out.json]``
(about 10 minutes on one core with the defaults, most of it tuning the rules).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nbtoolkit import get_host, validate
from nbtoolkit.errors import NBToolkitError
from nbtoolkit.evaluate import evaluate_tuned_rule
from nbtoolkit.families import SystemDraw
from nbtoolkit.integrator import Integrator
from nbtoolkit.predictor import DtPredictor
from nbtoolkit.simulate import iter_steps
from nbtoolkit.system import System
from nbtoolkit.training.restart import dispersal_limit, has_dispersed
from nbtoolkit.training.trainset import TrainingSet, load_training_set, pad_systems
from plugins.learned_predictor import model_options

THRESHOLD = 2e-4
#: the pass rate a system must reach
REQUIRED = 0.99
#: the tuned rules, each with its eta tuned per system
RULES = ("freefall", "aarseth")


@dataclass(frozen=True)
class Comparison:
    """One system: the learned run and the tuned rules' steps over the same span."""

    table: int  # index of its [[systems]] table
    family: str
    n_bodies: int
    steps: int  # learned steps (fewer than asked where the run stopped)
    pass_fraction: float  # of those, the share whose |dE/E| <= THRESHOLD
    time: float  # T, the time the learned run reached
    rule_steps: dict[str, int | None]  # per rule, its steps over [0, T] (None: no eta passes every step)

    @property
    def best_rule(self) -> int | None:
        """Steps of the better tuned rule (None if neither passes every step)."""
        known = [s for s in self.rule_steps.values() if s is not None]
        return min(known) if known else None

    @property
    def ratio(self) -> float | None:
        """Learned steps over the better tuned rule's (None without a tuned rule)."""
        best = self.best_rule
        return self.steps / best if best else None


def first_of_each_table(training_set: TrainingSet, seed: int, per_table: int) -> list[tuple[int, SystemDraw]]:
    """The first ``per_table`` draws of every [[systems]] table, drawn with ``seed``, with their table's index."""
    draws = training_set.draw(seed)
    picked, start = [], 0
    for t, spec in enumerate(training_set.systems):
        picked += [(t, draws[start + k]) for k in range(min(per_table, spec.count))]
        start += spec.count
    return picked


def _just_past_a_longest_step(dts: list[float]) -> bool:
    """Whether the step before the last was at least as long as the last and as the run's median step."""
    return len(dts) > 1 and dts[-2] >= max(dts[-1], statistics.median(dts))


def compare(table: int, draw: SystemDraw, predictor: DtPredictor, integrator: Integrator, steps: int,
            host: Any) -> Comparison | None:
    """Fly ``draw`` for ``steps`` steps with ``predictor`` (then on, up to four times as many, until the step after one
    at least as long as the run's median and as its successor: the span ends in a quiet phase, at an apocentre
    rather than after a close passage; a system that flies apart ends once it has dispersed, as training would
    restart it), then tune each rule of RULES over the span it reached. None where the
    learned run took no step (its first dt overflowed)."""
    state = pad_systems([draw])
    limit = dispersal_limit(state)
    errors, dts, time = [], [], 0.0
    try:
        for k, result in enumerate(iter_steps(state, integrator, predictor)):
            errors.append(float(result.error[0]))
            dts.append(float(result.dt[0]))
            time = float(result.state.time[0])
            if k + 1 >= 4 * steps or (k + 1 >= steps and _just_past_a_longest_step(dts)) \
                    or bool(has_dispersed(result.state, limit)[0]):
                break
    except NBToolkitError:  # the run stopped (its bodies flew apart and dt overflowed): compare what it took
        pass
    if not errors:
        return None
    span = System(state, torch.tensor([time], dtype=state.dtype))
    rule_steps: dict[str, int | None] = {}
    for rule in RULES:
        try:
            rule_steps[rule] = evaluate_tuned_rule(host, rule, span, integrator, orbits=1.0, threshold=THRESHOLD,
                                                   max_steps=50 * len(errors))[1].steps
        except NBToolkitError:  # no eta passes every step within 50x the learned steps
            rule_steps[rule] = None
    passed = sum(e <= THRESHOLD for e in errors) / len(errors)
    return Comparison(table, draw.family, draw.n_bodies, len(errors), passed, time, rule_steps)


def family_rows(comparisons: list[Comparison]) -> list[dict[str, Any]]:
    """Per family (and 'all'): systems, systems with a tuned rule, the median learned / best-rule ratio, how
    many are above 1, how many pass fewer than REQUIRED of their steps, and the lowest pass rate."""
    families = sorted({c.family for c in comparisons}) + ["all"]
    rows = []
    for family in families:
        members = [c for c in comparisons if family in ("all", c.family)]
        ratios = [c.ratio for c in members if c.ratio is not None]
        rows.append({
            "family": family, "systems": len(members), "with_rule": len(ratios),
            "median_ratio": statistics.median(ratios) if ratios else float("nan"),
            "above_1": sum(r > 1 for r in ratios),
            "below_required": sum(c.pass_fraction < REQUIRED for c in members),
            "lowest_pass": min(c.pass_fraction for c in members),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="learned", help="'learned' (the shipped model) or a model file or checkpoint")
    parser.add_argument("--predictor", type=validate.predictor_spec, default=None,
                        help="NAME or NAME:KEY=VALUE,... : the predictor flown (default: learned)")
    parser.add_argument("--training-set", default="general", help="the set whose tables are drawn")
    parser.add_argument("--seed", type=int, default=30, help="draw seed (0-2 are the model's own)")
    parser.add_argument("--per-table", type=int, default=3, help="systems taken from each [[systems]] table")
    parser.add_argument("--steps", type=int, default=256,
                        help="learned steps per system (up to four times as many, to end at a longest step)")
    parser.add_argument("--json", default=None, help="also write every system to this file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.per_table < 1:
        parser.error("--steps and --per-table must be at least 1")
    torch.set_num_threads(1)
    host = get_host()
    name, options, label = args.predictor or ("learned", model_options(args.model),
                                              "learned" if args.model == "learned" else f"learned:model={args.model}")
    try:
        host.predictors.create(name, **options)
    except NBToolkitError as exc:
        parser.error(f"--predictor {label}: {exc}")
    leapfrog = host.integrators.create("leapfrog")
    training_set = load_training_set(args.training_set)
    picked = first_of_each_table(training_set, args.seed, args.per_table)
    print(f"{len(picked)} systems of '{training_set.name}' (seed {args.seed}, {args.per_table} per table), "
          f"{args.steps} steps of {label} each, unguarded, against {' and '.join(RULES)} tuned over the same span",
          flush=True)
    comparisons = [c for t, draw in picked
                   if (c := compare(t, draw, host.predictors.create(name, **options), leapfrog, args.steps, host))]
    rows = family_rows(comparisons)
    print(f"{'family':14s} {'systems':>7} {'median steps / best rule':>25} {'above 1':>8} {'<99 %':>6} {'lowest pass':>12}")
    for r in rows:
        print(f"{r['family']:14s} {r['systems']:7d} {r['median_ratio']:25.3f} {r['above_1']:8d} "
              f"{r['below_required']:6d} {100 * r['lowest_pass']:11.2f}%")
    above = [c for c in comparisons if c.ratio is not None and c.ratio > 1]
    for c in above:
        rules = ", ".join(f"{k} {v if v is not None else '-'}" for k, v in c.rule_steps.items())
        print(f"  above 1: table {c.table} ({c.family}, N = {c.n_bodies}): {c.steps} steps against {rules} "
              f"(ratio {c.ratio:.2f}, pass {100 * c.pass_fraction:.2f} %)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"predictor": label, "rows": rows,
                       "systems": [asdict(c) | {"ratio": c.ratio} for c in comparisons]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
