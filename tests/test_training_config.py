"""TrainConfig: the seed's defaults, validation naming the key, TOML round trip, settings declared once."""

from __future__ import annotations

import dataclasses
import re

import pytest

from nbtoolkit.errors import ConfigError, OptionError, PluginError
from nbtoolkit.presets import make_preset
from nbtoolkit.training import TrainConfig, Trainer
from nbtoolkit.training.config import (
    SETTINGS,
    TOP_LEVEL_OPTIONS,
    merge_sources,
    read_toml,
    saved_config,
)


def test_seed_defaults():
    cfg = TrainConfig()
    assert cfg.energy_threshold == 2e-4
    assert cfg.replay_batch_size == 512 and cfg.replay_steps == 1000 and cfg.min_replay_size == 2
    assert cfg.E_lower == 1e-6 and cfg.E_upper == 1e-4
    assert cfg.n_steps == 1 and cfg.predictor_options == {}
    assert (cfg.integrator, cfg.predictor, cfg.sampler) == ("leapfrog", "mlp", "uniform")


@pytest.mark.parametrize("key, value", [
    ("energy_threshold", 0.0), ("energy_threshold", float("nan")), ("E_lower", -1.0), ("epochs", 0),
    ("steps_per_epoch", 2.5), ("replay_batch_size", 0), ("replay_steps", -3), ("max_retrain_steps", 0),
    ("learning_rate", float("inf")), ("on_retrain_limit", "ignore"), ("replay_scope", "forever"),
    ("buffer_capacity", 0), ("n_steps", True),
    ("seed", -1), ("predictor", ""), ("observer_options", {"progress": None}), ("predictor_options", {"a": [1, 2]}),
    ("device", "gpu9"),
    ("efficiency_weight", -0.5), ("lr_decay", 0.0), ("lr_decay", 1.5),
])
def test_out_of_range_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        TrainConfig(**{key: value})


def test_band_must_be_ordered_and_below_the_gate():
    with pytest.raises(ConfigError, match="E_lower"):
        TrainConfig(E_lower=1e-4, E_upper=1e-5)
    with pytest.raises(ConfigError, match="E_upper"):
        TrainConfig(E_upper=5e-4)  # above energy_threshold 2e-4: failing steps would cost nothing


def test_unknown_keys_are_errors_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown configuration key 'replay_batchsize'.*replay_batch_size"):
        TrainConfig.from_dict({"replay_batchsize": 8})
    with pytest.raises(ConfigError, match="'colour'"):
        TrainConfig().replace(colour="red")


def test_replace_validates_and_keeps_the_rest():
    cfg = TrainConfig(epochs=3).replace(learning_rate=0.01)
    assert cfg.epochs == 3 and cfg.learning_rate == 0.01
    with pytest.raises(ConfigError, match="learning_rate"):
        cfg.replace(learning_rate=0)


def test_learning_rate_falls_geometrically_from_first_to_last_epoch():
    cfg = TrainConfig(epochs=5, learning_rate=1e-3, lr_decay=0.01)
    rates = [cfg.learning_rate_at(k) for k in range(7)]
    assert rates[0] == 1e-3 and rates[2] == pytest.approx(1e-4, rel=1e-12)
    assert rates[4] == pytest.approx(1e-5, rel=1e-12) and rates[5:] == [rates[4]] * 2  # held after the last epoch
    assert TrainConfig(epochs=1, lr_decay=0.5).learning_rate_at(0) == 1e-3
    assert {TrainConfig(epochs=4).learning_rate_at(k) for k in range(4)} == {1e-3}  # default: constant


def test_integers_given_for_floats_are_accepted_as_floats():
    cfg = TrainConfig.from_dict({"learning_rate": 1, "grad_clip": 0})
    assert isinstance(cfg.learning_rate, float) and cfg.grad_clip == 0.0


def test_toml_round_trip_and_system_table(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'epochs = 7\nsteps_per_epoch = 3\nsampler = "prioritized"\nE_lower = 1e-7\n'
        '[sampler_options]\nalpha = 0.7\n'
        '[system]\npreset = "kepler"\neccentricity = 0.6\n'
    )
    cfg = TrainConfig.from_toml(path)
    assert cfg.epochs == 7 and cfg.steps_per_epoch == 3 and cfg.sampler_options == {"alpha": 0.7}
    assert cfg.E_lower == 1e-7
    data, system = read_toml(path)
    assert system == {"preset": "kepler", "eccentricity": 0.6} and "system" not in data
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_toml_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 0\n")
    with pytest.raises(ConfigError, match="bad.toml.*'epochs'"):
        TrainConfig.from_toml(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        TrainConfig.from_toml(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_toml(tmp_path / "missing.toml")


# ----------------------------------------------------------------------------- declared once
def test_every_key_is_declared_once_with_help_and_a_check():
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(TrainConfig)]
    for s in SETTINGS:
        assert s.help and s.check is not None, s.name
        # the default is printed from the declaration, never written into the help by hand
        assert not re.search(r"\bdefault\b", s.help), s.name
        assert s.validate(s.default, s.name) == s.default  # every default passes its own check


@pytest.mark.parametrize("key, value", [("history_len", -1), ("hidden_width", 0), ("activation", "swish"),
                                        ("fourier_scale", 0.0)])
def test_the_mlp_keys_are_the_plugins_options_and_checked_by_its_declaration(key, value):
    cfg = TrainConfig.from_dict({key: value})  # the top-level spelling moves into predictor_options
    assert cfg.predictor_options == {key: value} and key in TOP_LEVEL_OPTIONS["predictor_options"]
    with pytest.raises(OptionError, match=f"option '{key}' of dt predictor 'mlp' \\(plugin 'plugins.mlp_predictor'\\)"):
        Trainer(cfg, make_preset("kepler").state)
    assert issubclass(OptionError, ConfigError) and issubclass(OptionError, PluginError)


def test_top_level_predictor_options_fold_into_the_table_of_their_source():
    cfg = TrainConfig.from_dict({"hidden_width": 8, "predictor_options": {"hidden_width": 16, "init_factor": 0.1}})
    assert cfg.predictor_options == {"hidden_width": 16, "init_factor": 0.1}  # within one source the table wins
    assert cfg.replace(hidden_layers=1).predictor_options == {"hidden_width": 16, "init_factor": 0.1, "hidden_layers": 1}
    assert cfg.replace(predictor_options={"max_pairs": 4}).predictor_options == {"max_pairs": 4}
    assert "hidden_width" not in cfg.to_dict() and TrainConfig.from_dict(cfg.to_dict()) == cfg
    # later sources win option by option, whichever spelling each uses
    merged = merge_sources({"hidden_width": 8, "epochs": 3}, {"predictor_options": {"hidden_width": 16, "max_pairs": 4}},
                           {"hidden_width": 32, "epochs": 5})
    assert merged == {"epochs": 5, "predictor_options": {"hidden_width": 32, "max_pairs": 4}}
    with pytest.raises(ConfigError, match="unknown configuration key 'hidden_widht'; did you mean 'hidden_width'"):
        TrainConfig.from_dict({"hidden_widht": 8})


def test_the_observer_switches_are_the_observers_options(host):
    cfg = TrainConfig.from_dict({"progress": True, "metrics_log": "run.jsonl"})
    assert cfg.observer_options == {"progress": True, "metrics_log": "run.jsonl"}
    assert cfg.replace(progress=False).observer_options == {"progress": False, "metrics_log": "run.jsonl"}
    declared = host.observer_options
    assert {key: plugin for key, (_, plugin) in declared.items()} == {"progress": "plugins.observers:progress_bar",
                                                                     "metrics_log": "plugins.observers:metrics_log"}
    assert declared.resolve({"progress": True}, "t") == {"progress": True, "metrics_log": ""}  # defaults filled in
    with pytest.raises(OptionError, match="option 'progress' of observer plugin 'plugins.observers:progress_bar' "
                                          "must be true or false"):
        declared.resolve({"progress": "yes"}, "t")
    with pytest.raises(ConfigError, match="no observer declares option 'metrics_logg' .*; did you mean 'metrics_log'"):
        Trainer(TrainConfig(observer_options={"metrics_logg": "x"}), make_preset("kepler").state)


def test_an_observer_option_is_declared_by_one_plugin(host, register_plugin):
    from nbtoolkit import hookimpl
    from nbtoolkit.options import Option, Setting
    from plugins.observers import METRICS_LOG, MetricsLog

    register_plugin(MetricsLog("extra.jsonl"), name="second-log")  # the same declaration again: no conflict
    assert host.observer_options["metrics_log"] == (METRICS_LOG, "plugins.observers:metrics_log")

    class Rival:
        @hookimpl
        def nbtoolkit_register_observer_options(self, register):
            register(Setting("progress", str, "", Option("a different progress option")))

    with pytest.warns(RuntimeWarning, match="observer option 'progress' is declared twice: by plugin "
                                            "'plugins.observers:progress_bar' and by plugin 'rival'"):
        register_plugin(Rival(), name="rival")
    assert host.observer_options["progress"][1] == "plugins.observers:progress_bar"  # the first declaration is kept
    assert [f.stage for f in host.failures if f.plugin == "rival"] == ["nbtoolkit_register_observer_options"]


def test_a_checkpoint_config_from_before_declared_options_keeps_what_its_predictor_took():
    old = {**TrainConfig().to_dict(), "hidden_width": 16, "history_len": 1, "activation": "silu", "hidden_layers": 2,
           "fourier_features": 0, "fourier_scale": 1.0, "predictor_options": {"init_factor": 0.1}, "metrics_log": "x",
           "progress": True}
    taken = saved_config(old, {"hidden_width", "history_len", "activation", "init_factor", "seed"})
    assert taken["predictor_options"] == {"hidden_width": 16, "history_len": 1, "activation": "silu", "init_factor": 0.1}
    assert "metrics_log" not in taken and "progress" not in taken and "hidden_layers" not in taken
    assert saved_config(old, None)["predictor_options"] == {"init_factor": 0.1}  # **kwargs factories took none


def test_the_settings_reference_lists_every_key_and_option():
    from nbtoolkit.training.settings_doc import SETTINGS_DOC, settings_reference

    assert SETTINGS_DOC.read_text() == settings_reference(), \
        "docs/settings.md is out of date: python -m nbtoolkit.training.settings_doc > docs/settings.md"
    text = SETTINGS_DOC.read_text()
    for s in SETTINGS:
        assert f"| `{s.name}` |" in text
    assert "| `hidden_width` | `64` |" in text and "| `init_factor` | `0.02` |" in text


def test_each_default_observer_declares_its_own_option(monkeypatch, tmp_path, capsys):
    """The progress bar and the metrics log are plugins of their own and each declares its option
    through its own hook implementation: blocking one leaves the other's, and `nbtoolkit train` runs."""
    import plugins.observers
    from nbtoolkit import PluginHost, plugin_manager
    from nbtoolkit.cli import main

    assert not hasattr(plugins.observers, "nbtoolkit_register_observer_options")  # no module-level fan-out
    local = PluginHost(("plugins.observers:metrics_log",), load_entry_points=False)
    assert {key: plugin for key, (_, plugin) in local.observer_options.items()} == {
        "metrics_log": "plugins.observers:metrics_log"}
    monkeypatch.setenv("NBTOOLKIT_BLOCK_PLUGINS", "plugins.observers:progress_bar")
    monkeypatch.setattr(plugin_manager, "_HOST", PluginHost(load_entry_points=False))
    code = main(["train", "--preset", "kepler", "--epochs", "1", "--steps-per-epoch", "2", "--replay-steps", "1",
                 "--calibrate-pass-rate", "0", "--checkpoint", str(tmp_path / "c.pt")])
    assert code == 0, capsys.readouterr().err
    assert list(plugin_manager.get_host().observer_options) == ["metrics_log"]
