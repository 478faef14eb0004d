"""The ``nbtoolkit`` command line: ``plugins``, ``new-plugin``, ``simulate``, ``train``, ``evaluate``, ``gui``.

User errors (bad input, unknown names, broken plugins) print one paragraph on stderr and exit
with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import __version__, validate
from .cli_gui import add_gui_arguments, cmd_gui  # noqa: F401  (cmd_gui re-exported: it used to live here)
from .cli_system import (  # noqa: F401  (re-exported: the commands' shared system flags)
    PRESET_FLAGS,
    add_system_arguments,
    load_system,
    preset_flag_values,
    with_field,
)
from .control import RunStopped
from .errors import ConfigError, NBToolkitError
from .evaluate import format_gate_table  # noqa: F401  (re-exported for the benchmarks)
from .plugin_manager import PluginHost, get_host

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _integrator_and_checkpoint(host: PluginHost, args: argparse.Namespace) -> tuple[Any, Any]:
    """The integrator (with ``--integrator-option``s) and, with ``--checkpoint``, the trained predictor.

    Without ``--integrator`` a checkpoint's model flies with the integrator it was trained with;
    an ``--integrator`` that differs from it is used, with a warning on stderr.
    """
    name, trained = args.integrator, None
    if args.checkpoint is not None:
        from .training.checkpoint import load_trained

        trained, data = load_trained(args.checkpoint, host=host)
        stored = data["plugins"]["integrator"]["name"]
        stored_options = data["config"].get("integrator_options") or {}
        if name is None:
            name = stored
            if not args.integrator_option:
                return host.integrators.create(name, **stored_options), trained
        elif name != stored:
            print(f"nbtoolkit {args.command}: warning: checkpoint '{args.checkpoint}' was trained with integrator "
                  f"'{stored}'; flying it with '{name}' as --integrator asks (its dt may not suit it)", file=sys.stderr)
    options = validate.option_dict(args.integrator_option, "--integrator-option")
    return host.integrators.create(name or "leapfrog", **options), trained


def create_predictor(host: PluginHost, name: str, options: dict[str, Any]) -> Any:
    """Build a dt predictor from the registry, passing only the options the user set."""
    return host.predictors.create(name, **{k: v for k, v in options.items() if v is not None})


# ----------------------------------------------------------------------------- plugins
def cmd_plugins(args: argparse.Namespace) -> int:
    host = get_host()
    if args.json:
        import json

        print(json.dumps(host.describe(), indent=2))
        return 0
    rows = [("kind", "name", "plugin", "from")]
    for registry in host.registries():
        for entry in registry.entries():
            rows.append((registry.kind, entry.name, entry.plugin, entry.source))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if args.verbose:
        print("\nplugins:")
        for name in sorted(host.sources):
            hooks = ", ".join(host.plugin_hooks(name)) or "(no hooks)"
            print(f"  {name}  [{host.sources[name]}]\n    hooks: {hooks}")
    if host.failures:
        print("\nfailed to load:", file=sys.stderr if not args.verbose else sys.stdout)
        for failure in host.failures:
            print(f"  {failure}", file=sys.stderr if not args.verbose else sys.stdout)
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import module_name, new_plugin

    host = get_host()
    if args.name in host.integrators or args.name in host.sources:
        taken = host.integrators.get(args.name).plugin if args.name in host.integrators else args.name
        raise ConfigError(f"'{args.name}' is already taken (by plugin '{taken}'); the new plugin would clash with it. "
                          "Choose another name")
    folder = new_plugin(args.name, args.dir)
    print(f"wrote {folder}/ (module {module_name(args.name)}, integrator '{args.name}')\n"
          f"next: pip install -e {folder} && python -m pytest -q {folder}")
    return 0


# ----------------------------------------------------------------------------- simulate
def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate

    host = get_host()
    validate.writable_file(args.out, "--out")
    system = with_field(host, load_system(args), args)
    if args.checkpoint is not None and args.predictor_option:
        raise ConfigError("--predictor-option does not apply to --checkpoint: the trained predictor keeps the "
                          "options it was trained with")
    integrator, trained = _integrator_and_checkpoint(host, args)
    if trained is not None:
        predictor = trained
    else:
        predictor_name = args.predictor or "freefall"
        predictor = create_predictor(host, predictor_name, {"dt": args.dt, "eta": args.eta,
                                                           **validate.option_dict(args.predictor_option, "--predictor-option")})
    guard = args.guard_threshold if args.guard else None
    gate = host.gates.create(args.gate)
    progress = _ProgressPrinter(enabled=not args.quiet)
    traj = simulate(
        system.state, integrator, predictor, steps=args.steps, t_end=args.t_end, orbits=args.orbits,
        period=system.period, guard_threshold=guard, max_halvings=args.max_halvings, max_steps=args.max_steps,
        progress=progress, gate=gate,
    )
    progress.close()
    if args.out is not None:
        traj.save(args.out)
    summary = traj.summary()
    lines = [
        f"systems            {summary['systems']}",
        f"steps              {summary['steps']}",
        f"force evaluations  {summary['force_evals']}",
        f"max step |dE/E|    {summary['max_step_rel_dE']:.3e}",
        f"final |dE/E|       {summary['final_rel_dE']:.3e}",
    ]
    if "max_step_error" in summary:
        lines.append(f"max gate error     {summary['max_step_error']:.3e} ({args.gate}: {gate.label})")
    if guard is not None:
        lines.append(f"guarded steps      {summary['guarded_steps']} (threshold {guard:g}, gate {args.gate})")
    lines.append(f"wall time          {summary['wall_time']:.2f} s")
    if args.out is not None:
        lines.append(f"trajectory         {args.out}")
    print("\n".join(lines))
    return 0


class _ProgressPrinter:
    """A tqdm bar over the fraction of the run done on stderr when it is a terminal; otherwise (a log
    file, a batch job) a plain line every ``every`` seconds once the run has lasted that long."""

    def __init__(self, enabled: bool, *, every: float = 10.0, clock: Any = None) -> None:
        import time

        from tqdm import tqdm

        self._bar = tqdm(total=1000, unit="‰", disable=not enabled or None, leave=False, desc="simulating")
        self._lines = enabled and self._bar.disable
        self._clock = clock or time.monotonic
        self._every = every
        self._next = self._clock() + every

    def __call__(self, step: int, fraction: float) -> None:
        target = int(1000 * min(max(fraction, 0.0), 1.0))
        if target > self._bar.n:
            self._bar.update(target - self._bar.n)
        self._bar.set_postfix_str(f"step {step}", refresh=False)
        if self._lines and self._clock() >= self._next:
            self._next = self._clock() + self._every
            print(f"simulating: {100 * min(max(fraction, 0.0), 1.0):.1f}% done, step {step}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._bar.close()


def add_plugin_arguments(group: Any) -> None:
    """``--integrator``, ``--integrator-option``, ``--checkpoint``, ``--gate``, ``--field`` and
    ``--field-option`` of simulate and evaluate."""
    group.add_argument("--integrator", help="integrator name (default: the checkpoint's, else leapfrog; "
                                            "see `nbtoolkit plugins`)")
    group.add_argument("--integrator-option", action="append", type=validate.option_pair, metavar="KEY=VALUE",
                       help="option of the integrator's factory (repeatable)")
    group.add_argument("--checkpoint", type=Path, help="use the trained predictor stored in this checkpoint or model file")
    group.add_argument("--gate", default="energy",
                       help="gate that judges every step: energy (whole-system |dE/E|, the default), pair-energy "
                            "(every body's Kepler orbit), ... (see `nbtoolkit plugins`)")
    group.add_argument("--field", help="external field the system moves in: plummer-host, point-mass-host, ... "
                                       "(default: none; see `nbtoolkit plugins`)")
    group.add_argument("--field-option", action="append", type=validate.option_pair, metavar="KEY=VALUE",
                       help="option of the external field's factory (repeatable), e.g. mass=1000")


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    add_system_arguments(parser)
    plug = parser.add_argument_group("plugins")
    add_plugin_arguments(plug)
    plug.add_argument("--predictor", help="dt predictor name (default freefall; see `nbtoolkit plugins`)")
    plug.add_argument("--dt", type=validate.arg_number(low=0, low_open=True), help="constant predictor: the timestep")
    plug.add_argument("--eta", type=validate.arg_number(low=0, low_open=True),
                      help="aarseth/freefall predictors: accuracy parameter")
    plug.add_argument("--predictor-option", action="append", type=validate.option_pair, metavar="KEY=VALUE",
                      help="option of the dt predictor's factory (repeatable), e.g. eta=0.02")
    span = parser.add_argument_group("run length (give one)").add_mutually_exclusive_group(required=True)
    span.add_argument("--steps", type=validate.arg_integer(low=1), help="number of steps")
    span.add_argument("--t-end", type=validate.arg_number(), help="end time")
    span.add_argument("--orbits", type=validate.arg_number(low=0, low_open=True),
                      help="number of orbital periods (presets with a known period)")
    run = parser.add_argument_group("run")
    run.add_argument("--guard", action="store_true", help="retry steps that fail the gate with half the dt")
    run.add_argument("--guard-threshold", type=validate.arg_number(low=0, low_open=True), default=2e-4,
                     help="threshold of the guard's gate (default 2e-4)")
    run.add_argument("--max-halvings", type=validate.arg_integer(low=0), default=20,
                     help="guard: most dt halvings per step (default 20)")
    run.add_argument("--max-steps", type=validate.arg_integer(low=1), default=1_000_000,
                     help="cap on the number of steps (default 1e6)")
    run.add_argument("--out", type=Path, help="write the trajectory to this .npz file")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate_predictor, evaluate_tuned_rule, greedy_oracle, tuned_option
    from .state import System

    host = get_host()
    system = with_field(host, load_system(args, default_preset="kepler"), args)
    state = system.state
    if args.t_end is not None:
        span = args.t_end - state.time
        if not bool((span > 0).all()):
            raise ConfigError(f"--t-end {args.t_end:g} must lie after the start time of every system")
        system, orbits = System(state, span), 1.0  # one "orbit" of length t_end - t0
    elif system.period is None:
        raise ConfigError("this system has no orbital period: give --t-end T (the end time of each run)")
    else:
        orbits = args.orbits
    integrator, learned = _integrator_and_checkpoint(host, args)
    gate = host.gates.create(args.gate)
    extra = validate.option_dict(args.predictor_option, "--predictor-option")
    for rule in args.rules:  # refuse a rule that cannot be tuned before any run
        tuned_option(host, rule, extra)
    predictors = [(spec, host.predictors.create(name, **options))  # a predictor that cannot be built, too
                  for name, options, spec in args.predictor]
    reference = None
    if args.reference is not None:
        from .reference import load_reference

        if state.field is not None:
            raise ConfigError("--reference holds a trajectory without external field; it cannot judge a run "
                              "with --field")

        reference = load_reference(args.reference, state)
    rows: list[Any] = []
    for b in range(state.batch_size):
        one = system.index(b)
        run = dict(orbits=orbits, threshold=args.threshold, gate=gate)
        ref = None if reference is None else reference.system(b)
        if learned is not None:
            rows += evaluate_predictor(one, integrator, learned, **run, label=f"system {b}: learned", reference=ref)
        for spec, predictor in predictors:
            rows += evaluate_predictor(one, integrator, predictor, **run, label=f"system {b}: {spec}", reference=ref)
        for rule in args.rules:
            tuned, report = evaluate_tuned_rule(host, rule, one, integrator, **run, options=extra, reference=ref)
            rows.append(replace(report, label=f"system {b}: {rule} ({tuned.option}={tuned.value:.4g})"))
        if args.oracle:
            oracle = greedy_oracle(one, integrator, orbits=orbits, threshold=args.threshold, reference=ref, gate=gate)
            rows.append(oracle | {"label": f"system {b}: greedy oracle"})
    table = [r if isinstance(r, dict) else r.as_dict() for r in rows]
    print(json.dumps(table, indent=1) if args.json else format_gate_table(table, gate.label))
    return 0


# ----------------------------------------------------------------------------- parser and entry point
def add_train_parser_arguments(parser: argparse.ArgumentParser) -> None:
    from .training.cli import add_train_arguments, run_train

    add_train_arguments(parser)
    parser.set_defaults(func=run_train)


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    from .training.recalibrate import add_calibrate_arguments as add

    add(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbtoolkit", description="Learned adaptive timesteps for N-body simulation.")
    parser.add_argument("--version", action="version", version=f"nbtoolkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list registered integrators, dt predictors, replay samplers, gates and external fields")
    p.add_argument("--verbose", "-v", action="store_true", help="also show each plugin's hooks and load failures")
    p.add_argument("--json", action="store_true", help="print registry entries, plugins, hooks and failures as JSON")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("new-plugin", help="write a plugin package (an integrator, pyproject.toml, tests) to start from")
    p.add_argument("name", help="plugin and integrator name, e.g. forest-ruth")
    p.add_argument("--dir", type=Path, default=Path("."), help="where to create nbtoolkit-NAME/ (default: here)")
    p.set_defaults(func=cmd_new_plugin)

    from .training.cli import plugin_options_help

    run_options = plugin_options_help(get_host(), ("predictors", "integrators", "fields"), training=False)
    p = sub.add_parser("simulate", help="run a simulation headless and write its trajectory", epilog=run_options,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_simulate_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train a dt predictor with the generalization loop")
    add_train_parser_arguments(p)

    p = sub.add_parser("calibrate", help="calibrate a trained model again for another integrator, gate or target")
    add_calibrate_arguments(p)

    p = sub.add_parser("gui", help="open the desktop viewer (headless main job when there is no display)")
    add_gui_arguments(p)

    p = sub.add_parser("evaluate", help="compare dt predictors on whole orbits against the gate", epilog=run_options,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_arguments(p)
    add_plugin_arguments(p)
    p.add_argument("--predictor", action="append", default=[], type=validate.predictor_spec,
                   metavar="NAME[:KEY=VALUE,...]",
                   help="also evaluate this registered dt predictor, with these factory options, e.g. learned or "
                        "learned:feedback=false (repeatable)")
    p.add_argument("--predictor-option", action="append", type=validate.option_pair, metavar="KEY=VALUE",
                   help="extra factory option of every rule in --rules (repeatable)")
    p.add_argument("--rules", nargs="*", default=["aarseth", "freefall"],
                   help="classical rules to tune by bisection so every step passes (default: aarseth freefall)")
    p.add_argument("--oracle", action="store_true", help="also run the greedy oracle (largest passing dt each step)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--orbits", type=validate.arg_number(low=0, low_open=True), default=10.0,
                        help="orbital periods per run (default 10)")
    length.add_argument("--t-end", type=validate.arg_number(), help="run to this time instead (systems without a "
                                                                    "period: pythagorean, plummer, --state)")
    p.add_argument("--json", action="store_true", help="print the table as JSON (a list of rows)")
    p.add_argument("--threshold", type=validate.arg_number(low=0, low_open=True), default=2e-4,
                   help="threshold of the gate: a step passes when its error (|dE/E| for the energy gate) is at "
                        "most this (default 2e-4)")
    p.add_argument("--reference", type=Path,
                   help="reference trajectory (nbtoolkit reference): adds position and velocity errors at the end time")
    p.set_defaults(func=cmd_evaluate)

    from .reference import add_reference_parser

    add_reference_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `train --nproc` passes on to its workers
    if args.command != "gui":  # the viewer sets its own threads; train's --threads overrides this
        from .threads import apply_thread_policy

        apply_thread_policy()
    try:
        return int(args.func(args) or 0)
    except (NBToolkitError, RunStopped, KeyboardInterrupt, MemoryError, RuntimeError) as exc:
        return failure_status(args, exc)


def failure_status(args: argparse.Namespace, exc: BaseException) -> int:
    """Print what stopped ``nbtoolkit args.command`` (``exc``, being handled) in one line and return
    the exit status. Re-raises what is not the user's to fix (a programming error) and, under
    ``--debug``, everything."""
    if args.debug:
        raise
    if isinstance(exc, (RunStopped, KeyboardInterrupt)):
        print("nbtoolkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(exc, (MemoryError, RuntimeError)):
        if isinstance(exc, RuntimeError) and not _is_allocation_failure(exc):
            raise
        exc = NBToolkitError(f"out of memory ({' '.join(str(exc).split())[-200:] or type(exc).__name__}); "
                             "use a smaller system, fewer systems or fewer steps")
    elif not isinstance(exc, NBToolkitError):
        raise
    print(f"nbtoolkit {args.command}: error: {exc}", file=sys.stderr)
    return EXIT_USER_ERROR


def _is_allocation_failure(exc: BaseException) -> bool:
    text = str(exc)
    return "can't allocate memory" in text or "not enough memory" in text or "out of memory" in text.lower()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
