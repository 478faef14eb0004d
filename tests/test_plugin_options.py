"""The options of the default plugins: every factory declares each of its keyword options
(``Annotated[type, Option(help, check)]``), the registries check them, the command line and the
settings reference go through the same declarations."""

from __future__ import annotations

import inspect
import json

import pytest

from nbtoolkit.cli import main
from nbtoolkit.errors import OptionError
from nbtoolkit.plugin_manager import PluginHost
from nbtoolkit.registry import RegistryEntry
from nbtoolkit.training.settings_doc import SETTINGS_DOC

#: the options each default plugin declares, by registry and name
DECLARED = {
    "integrators": {"leapfrog": [], "yoshida4": [], "rk4": []},
    "predictors": {
        "constant": ["dt"], "aarseth": ["eta"], "freefall": ["eta"],
        "learned": ["model", "feedback", "time_symmetric", "error_cap", "further_raise"],
        "mlp": ["hidden_width", "hidden_layers", "activation", "fourier_features", "fourier_scale", "history_len",
                "init_factor", "max_pairs", "timescale", "time_symmetric", "seed"],
        "mlp-ensemble": ["size", "spread"],
        "symmetric": ["base", "iterations", "integrator", "checkpoint", "base_options", "solver"],
        "feedback": ["base", "target", "ceiling", "window", "memory", "trust", "growth", "max_boost", "min_level",
                     "early", "early_boost", "trend", "base_options"],
    },
    "samplers": {"uniform": [], "prioritized": ["alpha", "uniform_mix"], "recent": ["half_life"]},
    "gates": {"energy": [], "pair-energy": []},
    "fields": {"plummer-host": ["mass", "radius"], "point-mass-host": ["mass", "distance", "phase"]},
}


def default_entries() -> list[tuple[str, RegistryEntry]]:
    host = PluginHost(load_entry_points=False)
    return [(attr, entry) for attr in DECLARED for entry in getattr(host, attr).entries()]


def keyword_parameters(entry: RegistryEntry) -> list[str]:
    """The keyword options the factory takes (``**kwargs`` aside)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(entry.factory).parameters.values() if p.kind in kinds]


def test_the_default_plugins_are_the_ones_listed_here():
    assert {attr: sorted(entry.name for a, entry in default_entries() if a == attr) for attr in DECLARED} \
        == {attr: sorted(names) for attr, names in DECLARED.items()}


@pytest.mark.parametrize("attr, entry", default_entries(), ids=lambda value: getattr(value, "name", value))
def test_every_keyword_option_of_a_default_factory_is_declared(attr, entry):
    declared = [s.name for s in entry.options()]
    assert declared == keyword_parameters(entry), f"{entry.name}: undeclared options"
    assert declared == DECLARED[attr][entry.name]
    for s in entry.options():
        assert s.help and not s.help.endswith(".") and s.rule != "any value", (entry.name, s.name)
        assert s.validate(s.default, s.name) == s.default, (entry.name, s.name)  # the default passes its own check


@pytest.mark.parametrize("attr, name, options, owner", [
    ("predictors", "freefall", {"eta": -1}, "dt predictor 'freefall' (plugin 'plugins.classical_predictors')"),
    ("predictors", "constant", {"dt": "fast"}, "dt predictor 'constant' (plugin 'plugins.classical_predictors')"),
    ("predictors", "learned", {"model": 3}, "dt predictor 'learned' (plugin 'plugins.learned_predictor')"),
    ("predictors", "symmetric", {"solver": 1}, "dt predictor 'symmetric' (plugin 'plugins.symmetric')"),
    ("samplers", "recent", {"half_life": -5}, "replay sampler 'recent' (plugin 'plugins.samplers')"),
    ("fields", "point-mass-host", {"phase": float("inf")}, "external field 'point-mass-host' (plugin 'plugins.fields')"),
])
def test_a_refused_value_names_the_plugin_and_the_option(host, attr, name, options, owner):
    [(option, value)] = options.items()
    with pytest.raises(OptionError) as refused:
        getattr(host, attr).create(name, **options)
    assert str(refused.value).startswith(f"option '{option}' of {owner} must be ")
    with pytest.raises(OptionError, match=f"option '{option}'"):
        getattr(host, attr).checked_options(name, options)  # the same check, without building


def test_unset_options_take_none(host):
    assert host.predictors.checked_options("symmetric", {"checkpoint": None, "integrator": None}) \
        == {"checkpoint": None, "integrator": None}


@pytest.mark.parametrize("argv, message", [
    (["simulate", "--preset", "kepler", "--steps", "2", "--predictor", "freefall", "--predictor-option", "eta=abc"],
     "option 'eta' of dt predictor 'freefall' (plugin 'plugins.classical_predictors') must be a number; got 'abc'"),
    (["simulate", "--preset", "kepler", "--steps", "2", "--predictor", "aarseth", "--predictor-option", "eta=0"],
     "option 'eta' of dt predictor 'aarseth' (plugin 'plugins.classical_predictors') must be finite and > 0; got 0.0"),
    (["simulate", "--preset", "kepler", "--steps", "2", "--predictor", "symmetric", "--predictor-option",
      "solver=newton"], "option 'solver' of dt predictor 'symmetric' (plugin 'plugins.symmetric') must be one of "
                        "fixed-point, secant; got 'newton'"),
    (["simulate", "--preset", "kepler", "--steps", "2", "--field", "point-mass-host", "--field-option", "distance=-1"],
     "option 'distance' of external field 'point-mass-host' (plugin 'plugins.fields') must be finite and > 0"),
    (["evaluate", "--preset", "kepler", "--orbits", "1", "--rules", "symmetric", "--predictor-option",
      "iterations=two"], "option 'iterations' of dt predictor 'symmetric' (plugin 'plugins.symmetric') must be an "
                         "integer; got 'two'"),
])
def test_command_line_options_go_through_the_declarations(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_command_line_values_are_converted_by_the_declarations(capsys):
    code = main(["simulate", "--preset", "kepler", "--steps", "2", "--predictor", "symmetric", "--predictor-option",
                 "iterations=1.0", "--predictor-option", "base=aarseth", "--predictor-option", "eta=1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "force evaluations  4" in capsys.readouterr().out  # 1 + 1 trial step a step: iterations became 1


def test_evaluate_refuses_a_bad_rule_option_before_any_run(monkeypatch, capsys):
    import nbtoolkit.evaluate

    def no_runs(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr(nbtoolkit.evaluate, "evaluate_predictor", no_runs)
    assert main(["evaluate", "--preset", "kepler", "--orbits", "1", "--predictor", "freefall", "--rules", "freefall",
                 "symmetric", "--predictor-option", "iterations=-1"]) == 2
    assert "dt predictor 'freefall'" in capsys.readouterr().err  # freefall takes no 'iterations'


def test_evaluate_gives_each_predictor_its_own_options(capsys):
    assert main(["evaluate", "--preset", "kepler", "--eccentricity", "0.5", "--orbits", "1", "--rules", "--json",
                 "--predictor", "freefall:eta=0.02", "--predictor", "freefall:eta=0.04"]) == 0
    rows = {row["label"]: row for row in json.loads(capsys.readouterr().out)}
    fine, coarse = rows["system 0: freefall:eta=0.02"], rows["system 0: freefall:eta=0.04"]
    assert 1.9 < fine["steps"] / coarse["steps"] < 2.1  # dt halves with eta
    assert main(["evaluate", "--preset", "kepler", "--orbits", "1", "--rules", "--predictor",
                 "learned:feedback=false"]) == 0
    assert "system 0: learned:feedback=false" in capsys.readouterr().out


def test_evaluate_refuses_a_bad_predictor_option_before_any_run(monkeypatch, capsys):
    import nbtoolkit.evaluate

    monkeypatch.setattr(nbtoolkit.evaluate, "evaluate_predictor", lambda *a, **k: pytest.fail("a run started"))
    assert main(["evaluate", "--preset", "kepler", "--orbits", "1", "--rules", "--predictor", "freefall",
                 "--predictor", "learned:nonsense=1"]) == 2
    err = capsys.readouterr().err
    assert "dt predictor 'learned'" in err and "does not take option(s) nonsense" in err
    with pytest.raises(SystemExit):
        main(["evaluate", "--preset", "kepler", "--predictor", "learned:feedback"])
    assert "expected KEY=VALUE, got 'feedback'" in capsys.readouterr().err


def test_the_settings_reference_lists_every_default_plugin_and_its_options():
    text = SETTINGS_DOC.read_text()
    for attr, plugins in DECLARED.items():
        if attr == "gates":  # a gate takes no options: nothing to set
            continue
        for name, options in plugins.items():
            assert f"### `{name}` (plugin `" in text
            section = text.split(f"### `{name}` (plugin `", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
            assert [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")] == options


@pytest.mark.parametrize("command, listed, absent", [
    ("simulate", ["options of the dt predictors (--predictor-option KEY=VALUE)", "options of the external fields",
                  "  freefall (plugin plugins.classical_predictors):\n    eta = 0.05: accuracy parameter"], "sampler"),
    ("evaluate", ["options of the dt predictors (--predictor-option KEY=VALUE)", "distance = 50: distance R"],
     "observer"),
    ("train", ["options of the replay samplers (--sampler-option KEY=VALUE, or the [sampler_options] table",
               "  recent (plugin plugins.samplers):\n    half_life = 1000", "radius = 10: scale radius",
               "options of the observers"], "options of the integrators"),
])
def test_the_help_of_each_command_lists_the_declared_options_it_takes(capsys, command, listed, absent):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for text in listed:
        assert text in out
    assert absent not in out.split("with their defaults:", 1)[1]  # no default integrator declares an option
