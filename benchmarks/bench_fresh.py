"""Unseen draws of the training set: how many systems pass the gate on 99 % of their steps.

``bench_outside.py`` flies 47 hand-picked systems. This flies hundreds more, drawn from the
training set's own families with seeds the model never saw (training draws seed 0, calibration
seeds 1 and 2; the defaults here are 20 and 21). Each system is flown unguarded for ``--steps``
steps (``leapfrog``, gate |dE/E| <= 2e-4) with the shipped ``learned`` predictor (or the one
``--predictor`` names) and with its calibrated network alone (``feedback=false``). Per family it
prints the systems, how many pass fewer than 99 % of their steps, the lowest pass rate, and the
median, over the family, of the time the predictor reached in those steps over the time the network
alone reached (above 1: longer steps).

Systems are flown in batches of equal N and softening, so no batch holds padding bodies. A
system that has dispersed (an unbound pair after its passage; the test by which training
restarts a system) ends its flight there and is left out of the time ratio. A system whose run
stops early (its dt overflowed) counts with the steps it took; a batch that stops is flown again
system by system.

Run: ``python benchmarks/bench_fresh.py [--model learned|FILE] [--predictor NAME:KEY=VALUE,...]
[--training-set general|FILE.toml] [--seeds 20 21] [--steps 1024] [--json out.json]`` (about 10
minutes on one core with the defaults). ``--predictor`` compares another predictor, or other options,
with the same network alone: ``feedback:memory=32`` flies the shipped network in a controller with
other options, ``feedback:base=freefall,eta=0.02`` a classical rule. It is built as given
(``--model`` sets only the network alone and the default ``learned``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nbtoolkit import get_host, validate
from nbtoolkit.errors import NBToolkitError
from nbtoolkit.families import SystemDraw
from nbtoolkit.simulate import iter_steps
from nbtoolkit.training.restart import dispersal_limit, has_dispersed
from nbtoolkit.training.trainset import load_training_set, pad_systems
from plugins.learned_predictor import model_options

THRESHOLD = 2e-4
#: the pass rate a system must reach
REQUIRED = 0.99


@dataclass(frozen=True)
class Flight:
    """One system flown for up to ``steps`` steps."""

    family: str
    steps: int  # steps taken (fewer than asked where the run stopped)
    pass_fraction: float  # of those steps, the share whose |dE/E| <= THRESHOLD
    time: float  # the time reached
    dispersed: bool = False  # whether the flight ended because the system had dispersed


def _fly(draws: list[SystemDraw], make_predictor: Callable[[], Any], integrator: Any, steps: int, *,
         stop_quietly: bool = False) -> list[Flight]:
    """Fly ``draws`` (equal N and softening) as one batch for up to ``steps`` steps. A system's flight ends
    at the step after which it has dispersed (:func:`~nbtoolkit.training.restart.has_dispersed`: an
    unbound pair after its passage, whose dt would grow geometrically from there); the batch flies on
    until every system has ended or taken ``steps`` steps. A step that fails (a dt that overflowed)
    raises, or with ``stop_quietly`` ends the run there: the systems count with the steps taken (a
    system that takes none counts as failing)."""
    state = pad_systems(draws)
    errors, counted, time = [], [], state.time
    ended = torch.zeros(len(draws), dtype=torch.bool)
    limit = dispersal_limit(state)
    try:
        for k, result in enumerate(iter_steps(state, integrator, make_predictor())):
            errors.append(result.error)
            counted.append(~ended)
            time = torch.where(ended, time, result.state.time)
            ended = ended | has_dispersed(result.state, limit)
            if k + 1 >= steps or bool(ended.all()):
                break
    except NBToolkitError:
        if not stop_quietly:
            raise
    if not errors:
        return [Flight(d.family, 0, 0.0, float(time[b])) for b, d in enumerate(draws)]
    taken = torch.stack(counted)
    flown, passed = taken.sum(0), ((torch.stack(errors) <= THRESHOLD) & taken).sum(0)
    return [Flight(d.family, int(flown[b]), float(passed[b]) / int(flown[b]), float(time[b]), bool(ended[b]))
            for b, d in enumerate(draws)]


def fly_draws(draws: list[SystemDraw], make_predictor: Callable[[], Any], integrator: Any,
              steps: int) -> list[Flight]:
    """Every draw flown for ``steps`` steps with a predictor from ``make_predictor`` (one per batch),
    in the order of ``draws``."""
    groups: dict[tuple[int, float], list[int]] = defaultdict(list)
    for i, draw in enumerate(draws):
        groups[(int(draw.mass.shape[-1]), float(draw.softening))].append(i)
    flights: dict[int, Flight] = {}
    for members in groups.values():
        try:
            flights.update(zip(members, _fly([draws[i] for i in members], make_predictor, integrator, steps)))
        except NBToolkitError:  # one system's run stopped: fly each alone
            flights.update((i, _fly([draws[i]], make_predictor, integrator, steps, stop_quietly=True)[0])
                           for i in members)
    return [flights[i] for i in range(len(draws))]


def family_rows(network: list[Flight], compared: list[Flight]) -> list[dict[str, Any]]:
    """Per family (and 'all'): systems, below REQUIRED and lowest pass rate of the network alone and of
    the compared predictor, and the median ratio of the times reached (compared / network) over the
    systems neither flight saw disperse (a dispersed system ends at about the same time either way)."""
    families = sorted({f.family for f in network}) + ["all"]
    rows = []
    for family in families:
        pairs = [(a, b) for a, b in zip(network, compared) if family in ("all", a.family)]
        ratios = [b.time / a.time for a, b in pairs if a.time > 0 and not (a.dispersed or b.dispersed)]
        rows.append({
            "family": family, "systems": len(pairs),
            "network_below": sum(a.pass_fraction < REQUIRED for a, _ in pairs),
            "network_lowest": min(a.pass_fraction for a, _ in pairs),
            "predictor_below": sum(b.pass_fraction < REQUIRED for _, b in pairs),
            "predictor_lowest": min(b.pass_fraction for _, b in pairs),
            "time_ratio": statistics.median(ratios) if ratios else float("nan"),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="learned", help="'learned' (the shipped model) or a model file or checkpoint")
    parser.add_argument("--predictor", type=validate.predictor_spec, default=None,
                        help="NAME or NAME:KEY=VALUE,... : the predictor compared with the network alone (default: learned)")
    parser.add_argument("--training-set", default="general", help="the set whose families are drawn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[20, 21], help="draw seeds (0-2 are the model's own)")
    parser.add_argument("--steps", type=int, default=1024, help="steps per system")
    parser.add_argument("--json", default=None, help="also write every flight to this file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    torch.set_num_threads(1)
    host = get_host()
    options = model_options(args.model)
    name, compared_options, label = args.predictor or ("learned", options, "learned")
    try:
        host.predictors.create(name, **compared_options)
    except NBToolkitError as exc:
        parser.error(f"--predictor {label}: {exc}")
    leapfrog = host.integrators.create("leapfrog")
    training_set = load_training_set(args.training_set)
    draws = [draw for seed in args.seeds for draw in training_set.draw(seed)]
    print(f"{len(draws)} systems of '{training_set.name}' (seeds {', '.join(map(str, args.seeds))}), "
          f"{args.steps} steps each, unguarded, gate |dE/E| <= {THRESHOLD:g}", flush=True)
    network = fly_draws(draws, lambda: host.predictors.create("learned", feedback=False, **options), leapfrog,
                        args.steps)
    compared = fly_draws(draws, lambda: host.predictors.create(name, **compared_options), leapfrog, args.steps)
    rows = family_rows(network, compared)
    below, reached = f"{label}: <99 %", f"time reached, {label} / network"
    wb, wr = max(14, len(below)), max(31, len(reached))
    print(f"{'family':14s} {'systems':>7}  {'network alone: <99 %':>20} {'lowest':>7}  {below:>{wb}} "
          f"{'lowest':>7}  {reached:>{wr}}")
    for r in rows:
        print(f"{r['family']:14s} {r['systems']:7d}  {r['network_below']:20d} {100 * r['network_lowest']:6.2f}%  "
              f"{r['predictor_below']:{wb}d} {100 * r['predictor_lowest']:6.2f}%  {r['time_ratio']:{wr}.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"predictor": label, "rows": rows, "network": [asdict(f) for f in network],
                       "compared": [asdict(f) for f in compared]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
