"""Trainer.fit (epochs, observer events, stop, errors), checkpoints (exact resume, clear errors), CLI."""

from __future__ import annotations

import argparse
import json
import threading

import pytest
import torch
from systems import two_body_orbit

from nbtoolkit import NBodyState, System, hookimpl
from nbtoolkit.control import RunControl
from nbtoolkit.errors import ConfigError
from nbtoolkit.presets import make_preset
from nbtoolkit.training import CheckpointError, FitResult, RetrainLimitError, TrainConfig, Trainer, load_predictor
from nbtoolkit.training.cli import add_train_arguments, run_train

MODEL = {"hidden_width": 8, "hidden_layers": 1}
SMALL = dict(predictor_options=MODEL, steps_per_epoch=6, replay_batch_size=16, replay_steps=50,
             calibrate_pass_rate=0)  # calibration has its own tests


def with_options(**options):
    """:data:`SMALL` with more predictor options."""
    return {**SMALL, "predictor_options": {**MODEL, **options}}


def kepler_batch(n: int = 3):
    return make_preset("kepler-batch", num_orbits=n, e_min=0.5, e_max=0.9, seed=0)


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ----------------------------------------------------------------------------- fit
def test_fit_runs_epochs_and_fires_events_in_order(events):
    system = kepler_batch()
    trainer = Trainer(TrainConfig(epochs=3, seed=1, **with_options(init_factor=0.2)), system.state)
    result = trainer.fit()
    assert isinstance(result, FitResult) and result.epochs_completed == 3 and not result.stopped
    assert len(result.epoch_metrics) == 3 and trainer.epoch == 3
    names = events.names()
    assert names[0] == "FitStart" and names[-1] == "FitEnd" and names.count("EpochEnd") == 3
    assert {"StepAccepted", "StepRejected", "ReplayIteration"} <= set(names)
    start, end = events.seen[0], events.seen[-1]
    assert start.n_systems == 3 and start.config["epochs"] == 3 and start.mass.shape == (3, 2)
    assert end.epochs_completed == 3 and not end.stopped and end.error is None
    assert end.total_accepted == 3 * 3 * 6 == trainer.total_accepted
    epoch_ends = events.of("EpochEnd")
    assert [e.epoch for e in epoch_ends] == [0, 1, 2]
    assert [e.buffer_size for e in epoch_ends] == [18, 36, 54] and len(trainer.buffer) == 54
    assert all(e.accepted_steps == 18 for e in epoch_ends)
    # plain data only: no tensors in events
    for e in events.seen:
        assert not any(isinstance(v, torch.Tensor) for v in vars(e).values())
    assert trainer.state.time.shape == (3,) and bool((trainer.state.time > 0).all())


def test_a_dispersing_system_restarts_from_its_initial_state_and_bound_ones_run_on():
    """A pair flying apart at 20 x its escape speed lengthens its dt without bound; it starts again,
    while a Kepler orbit in the same batch keeps its trajectory."""
    from nbtoolkit.physics import closest_free_fall_time
    from nbtoolkit.training.restart import DISPERSED_GROWTH

    kepler, _ = two_body_orbit(e=0.5)
    position = torch.cat([kepler.position, torch.tensor([[[-0.5, 0.0], [0.5, 0.0]]], dtype=torch.float64)])
    velocity = torch.cat([kepler.velocity, torch.tensor([[[-20.0, 0.0], [20.0, 0.0]]], dtype=torch.float64)])
    state = NBodyState.from_arrays(torch.cat([kepler.mass, kepler.mass]), position, velocity)
    trainer = Trainer(TrainConfig(epochs=12, seed=1, **with_options(init_factor=0.5)), state)
    result = trainer.fit()
    restarted = [m["restarted"] for m in result.epoch_metrics]
    assert sum(restarted) >= 2 and restarted[0] == 0 and max(restarted) == 1  # only the pair restarts
    growth = closest_free_fall_time(trainer.state) / closest_free_fall_time(trainer.initial_state)
    assert float(growth[1]) < DISPERSED_GROWTH * 10**1.5  # at most one epoch past the limit, never overflowing
    assert float(growth[0]) < 10 and float(trainer.state.time[0]) > 0.5  # the orbit ran on from its start
    assert bool(torch.isfinite(trainer.state.position).all())


def test_the_dispersal_test_reads_the_initial_state_or_its_limit_alike():
    """A loop that tests the same systems at every step passes their dispersal limit once computed; the answer,
    and a restart, are those of the initial state itself (a pair flying apart, a NaN, a bound orbit)."""
    from nbtoolkit.physics import closest_free_fall_time
    from nbtoolkit.training.restart import DISPERSED_GROWTH, dispersal_limit, has_dispersed, restart_dispersed

    kepler, _ = two_body_orbit(e=0.5)
    initial = NBodyState.from_arrays(torch.cat([kepler.mass] * 3), torch.cat([kepler.position] * 3),
                                     torch.cat([kepler.velocity] * 3))
    apart = initial.position.clone()
    apart[1] *= 1e3  # free-fall time up 10^4.5 times
    apart[2, 0, 0] = float("nan")
    later = initial.replace(position=apart)
    limit = dispersal_limit(initial)
    assert torch.equal(has_dispersed(later, limit), has_dispersed(later, initial))
    assert has_dispersed(later, limit).tolist() == [False, True, True]
    torch.testing.assert_close(limit, DISPERSED_GROWTH * closest_free_fall_time(initial), rtol=0, atol=0)
    restarted, _, count = restart_dispersed(later, initial, None, limit)
    assert count == 2 and torch.equal(restarted.position, torch.cat([apart[:1], initial.position[1:]]))


def test_fit_accepted_states_all_pass_the_gate(events):
    trainer = Trainer(TrainConfig(epochs=2, seed=2, **with_options(init_factor=0.3)), kepler_batch().state)
    trainer.fit()
    accepted = events.of("StepAccepted")
    assert all(bool((e.rel_dE <= 2e-4).all()) for e in accepted)
    assert bool((trainer.buffer.dt > 0).all())


def test_fit_follows_the_learning_rate_schedule(host):
    seen = []

    class LearningRates:
        @hookimpl
        def nbtoolkit_epoch_end(self, event):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    cfg = TrainConfig(epochs=3, seed=1, learning_rate=4e-3, lr_decay=0.25, **SMALL)
    trainer = Trainer(cfg, kepler_batch(2).state, host=host)
    host.register_plugin(LearningRates(), name="test-learning-rates")
    try:
        trainer.fit()
    finally:
        host.unregister_plugin("test-learning-rates")
    assert seen == pytest.approx([4e-3, 2e-3, 1e-3], rel=1e-12)


def test_epoch_scope_clears_the_buffer_every_epoch(events):
    cfg = TrainConfig(epochs=2, replay_scope="epoch", **SMALL)
    trainer = Trainer(cfg, kepler_batch(2).state)
    trainer.fit()
    assert [e.buffer_size for e in events.of("EpochEnd")] == [12, 12]


def test_stop_request_ends_fit_cleanly(host, events):
    control = RunControl()
    events.control, events.stop_at = control, 4
    trainer = Trainer(TrainConfig(epochs=5, **SMALL), kepler_batch(1).state, control=control)
    result = trainer.fit()
    assert result.stopped and result.epochs_completed == 0 and trainer.epoch == 0
    end = events.seen[-1]
    assert type(end).__name__ == "FitEnd" and end.stopped and end.error is None
    assert len(events.of("StepAccepted")) == 4 and len(trainer.buffer) == 4


def test_pause_blocks_until_resumed(host):
    control = RunControl()
    control.pause()
    trainer = Trainer(TrainConfig(epochs=1, **SMALL), kepler_batch(1).state, control=control)
    box: dict = {}
    worker = threading.Thread(target=lambda: box.setdefault("result", trainer.fit()))
    worker.start()
    worker.join(0.3)
    assert worker.is_alive() and trainer.total_accepted == 0
    control.resume()
    worker.join(30)
    assert not worker.is_alive() and box["result"].epochs_completed == 1


def test_errors_fire_fit_end_with_the_message_and_are_reraised(events):
    cfg = TrainConfig(epochs=2, max_retrain_steps=2, learning_rate=1e-12, efficiency_weight=0.0,
                      **with_options(init_factor=2.0))
    trainer = Trainer(cfg, kepler_batch(2).state)
    with pytest.raises(RetrainLimitError):
        trainer.fit()
    end = events.seen[-1]
    assert type(end).__name__ == "FitEnd" and end.stopped and "RetrainLimitError" in end.error


def test_stop_at_period_needs_a_period_and_stops_there():
    system = make_preset("kepler", eccentricity=0.1)
    with pytest.raises(ConfigError, match="stop_at_period"):
        Trainer(TrainConfig(stop_at_period=True, **SMALL), system.state)
    cfg = TrainConfig(epochs=50, stop_at_period=True, **{**SMALL, "steps_per_epoch": 64})
    trainer = Trainer(cfg, System(system.state, system.period / 40))
    trainer.fit()
    assert float(trainer.state.time[0]) >= float(system.period[0]) / 40
    assert trainer.total_accepted < 50 * 64


def test_a_classical_predictor_cannot_be_trained():
    with pytest.raises(ConfigError, match="no trainable parameters"):
        Trainer(TrainConfig(predictor="freefall"), kepler_batch(1).state)


def test_history_len_must_match_the_predictor(host):
    pred = host.predictors.create("mlp", hidden_width=4, history_len=2)
    with pytest.raises(ConfigError, match="history_len"):
        Trainer(TrainConfig(predictor_options={"history_len": 0}), kepler_batch(1).state, predictor=pred)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("history_len, sampler", [(0, "uniform"), (2, "prioritized")])
def test_resume_from_checkpoint_continues_exactly(tmp_path, history_len, sampler):
    state = kepler_batch(3).state
    cfg = TrainConfig(epochs=4, seed=3, sampler=sampler, **with_options(init_factor=0.15, history_len=history_len))
    straight = Trainer(cfg, state)
    straight_result = straight.fit()
    first = Trainer(cfg.replace(epochs=2, checkpoint_path=str(tmp_path / "half.pt")), state)
    first.fit()
    resumed = Trainer.from_checkpoint(tmp_path / "half.pt", epochs=4)
    assert resumed.epoch == 2 and len(resumed.buffer) == len(first.buffer)
    result = resumed.fit()
    assert result.epochs_completed == 4 and len(result.epoch_metrics) == 2
    assert same_weights(straight.predictor, resumed.predictor)
    assert torch.equal(straight.state.position, resumed.state.position)
    assert torch.equal(straight.buffer.rel_dE, resumed.buffer.rel_dE)
    assert [m["loss"] for m in straight_result.epoch_metrics[2:]] == [m["loss"] for m in result.epoch_metrics]
    assert straight.total_retrains == resumed.total_retrains


def test_checkpoint_every_k_epochs_and_at_the_end(tmp_path, events):
    path = tmp_path / "model.pt"
    saved_epochs = []

    class Watch:
        @hookimpl
        def nbtoolkit_epoch_end(self, event):
            if path.exists():
                saved_epochs.append(int(torch.load(path, weights_only=True)["epoch"]))

    from nbtoolkit import get_host
    name = get_host().register_plugin(Watch(), name="test-watch")
    try:
        Trainer(TrainConfig(epochs=5, checkpoint_path=str(path), checkpoint_every=2, **SMALL), kepler_batch(1).state).fit()
    finally:
        get_host().unregister_plugin(name)
    assert saved_epochs == [2, 2, 4]  # seen at the ends of epochs 3, 4 (after epoch 2's save) and 5
    assert int(torch.load(path, weights_only=True)["epoch"]) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary files left


def test_load_predictor_gives_the_trained_model_in_eval_mode(tmp_path):
    trainer = Trainer(TrainConfig(epochs=1, **with_options(history_len=1)), kepler_batch(2).state)
    trainer.fit()
    trainer.save_checkpoint(tmp_path / "m.pt")
    pred = load_predictor(tmp_path / "m.pt")
    assert not pred.training and pred.history_len == 1
    state, _ = two_body_orbit(e=0.7)
    with torch.no_grad():
        assert torch.equal(pred(state), trainer.predictor(state))


def test_checkpoint_records_plugins_and_versions(tmp_path):
    trainer = Trainer(TrainConfig(epochs=1, **SMALL), kepler_batch(1).state)
    trainer.save_checkpoint(tmp_path / "m.pt")
    data = torch.load(tmp_path / "m.pt", weights_only=True)
    assert data["plugins"]["predictor"] == {"name": "mlp", "plugin": "plugins.mlp_predictor",
                                            "source": "module plugins.mlp_predictor"}
    assert data["plugins"]["integrator"]["name"] == "leapfrog" and data["plugins"]["sampler"]["name"] == "uniform"
    assert set(data["versions"]) == {"nbtoolkit", "torch"} and "optimizer_state" in data and "rng_state" in data


def test_corrupt_truncated_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_predictor(tmp_path / "nothing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt.*corrupt"):
        load_predictor(garbage)
    trainer = Trainer(TrainConfig(epochs=1, **SMALL), kepler_batch(1).state)
    good = trainer.save_checkpoint(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*corrupt"):
        Trainer.from_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not an nbtoolkit model file or checkpoint"):
        load_predictor(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "nbtoolkit-checkpoint", "evil": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(CheckpointError, match="pickled.pt"):
        load_predictor(pickled)  # weights_only=True refuses arbitrary objects


def test_mismatched_architecture_or_predictor_is_a_clear_error(tmp_path):
    trainer = Trainer(TrainConfig(epochs=1, **SMALL), kepler_batch(1).state)
    path = trainer.save_checkpoint(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="hidden_width.*shape"):
        Trainer.from_checkpoint(path, hidden_width=16)
    with pytest.raises(CheckpointError, match="holds dt predictor 'mlp'"):
        Trainer.from_checkpoint(path, predictor="freefall")
    with pytest.raises(ConfigError, match="unknown configuration key 'bogus'"):
        Trainer.from_checkpoint(path, bogus=1)


def test_from_checkpoint_with_new_systems_keeps_model_and_compatible_buffer(tmp_path):
    trainer = Trainer(TrainConfig(epochs=1, **SMALL), kepler_batch(2).state)
    trainer.fit()
    path = trainer.save_checkpoint(tmp_path / "m.pt")
    fresh = make_preset("kepler", eccentricity=0.3)
    moved = Trainer.from_checkpoint(path, fresh, epochs=2)
    assert same_weights(moved.predictor, trainer.predictor) and len(moved.buffer) == 12
    assert torch.equal(moved.state.position, fresh.state.position)
    three_body = make_preset("figure-eight")
    other = Trainer.from_checkpoint(path, three_body.state, epochs=2)
    assert len(other.buffer) == 0 and other.state.n_bodies == 3


# ----------------------------------------------------------------------------- CLI
def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_train_preset_then_resume_from_config(tmp_path, capsys):
    model = tmp_path / "model.pt"
    log = tmp_path / "metrics.jsonl"
    rc = run_train(parse("--preset", "kepler", "--eccentricity", "0.6", "--epochs", "2", "--steps-per-epoch", "4",
                         "--seed", "1", "--checkpoint", str(model), "--hidden-width", "8", "--metrics-log", str(log),
                         "--no-progress"))
    assert rc == 0 and model.exists()
    assert "epochs             2/2" in capsys.readouterr().out
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0]["event"] == "FitStart" and lines[-1]["event"] == "FitEnd"
    assert sum(1 for r in lines if r["event"] == "StepAccepted") == 8 and "position" not in lines[1]
    config = tmp_path / "run.toml"
    config.write_text('epochs = 3\nsampler = "recent"\n[sampler_options]\nhalf_life = 4.0\n')
    rc = run_train(parse("--config", str(config), "--resume", str(model), "--no-progress"))
    data = torch.load(model, weights_only=True)
    assert rc == 0 and data["epoch"] == 3 and data["config"]["sampler"] == "recent"
    assert data["config"]["seed"] == 1 and data["config"]["predictor_options"] == {"hidden_width": 8}
    assert data["config"]["sampler_options"] == {"half_life": 4.0}


def test_cli_kepler_batch_with_eccentricity_range(tmp_path, capsys):
    model = tmp_path / "batch.pt"
    rc = run_train(parse("--preset", "kepler-batch", "--e-min", "0.5", "--e-max", "0.95", "--num-orbits", "3",
                         "--epochs", "1", "--steps-per-epoch", "3", "--checkpoint", str(model), "--hidden-width", "4",
                         "--predictor-option", "init_factor=0.01", "--no-progress"))
    data = torch.load(model, weights_only=True)
    assert rc == 0 and data["state"]["mass"].shape == (3, 2)
    assert data["predictor_options"]["init_factor"] == 0.01
    # apocentre separations a (1 + e) of the sampled eccentricities lie in [1.5, 1.95]
    x = data["initial_state"]["position"]
    separation = (x[:, 1] - x[:, 0]).norm(dim=-1)
    assert bool(((separation >= 1.5) & (separation <= 1.95)).all())


def test_every_config_key_has_a_flag():
    import dataclasses

    flags = {"energy_threshold": "--energy-threshold=1e-3", "E_lower": "--E-lower=1e-7", "E_upper": "--e-upper=1e-5",
             "stop_at_period": "--stop-at-period", "observer_options": "--observer-option=progress=true",
             "predictor_options": "--predictor-option=a=1",
             "sampler_options": "--sampler-option=b=x", "fallback_options": "--fallback-option=eta=0.1",
             "integrator_options": "--integrator-option=c=2", "field_options": "--field-option=mass=2",
             "checkpoint_path": "--checkpoint=x.pt", "on_retrain_limit": "--on-retrain-limit=fallback",
             "replay_scope": "--replay-scope=epoch", "seed": "--seed=4"}
    argv = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in flags:
            argv.append(flags[f.name])
        elif isinstance(f.default, str):
            argv.append(f"--{f.name.replace('_', '-')}=abc")
        else:
            argv.append(f"--{f.name.replace('_', '-')}=3")
    args = parse(*argv)
    from nbtoolkit.training.cli import _flag_overrides

    given = _flag_overrides(args)
    assert set(given) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert given["predictor_options"] == {"a": 1} and given["sampler_options"] == {"b": "x"}
    assert given["observer_options"] == {"progress": True}
    assert given["E_lower"] == 1e-7 and given["stop_at_period"] is True and given["seed"] == 4


def test_the_mlp_flags_set_predictor_options_and_win_over_the_file_option_by_option(tmp_path):
    from nbtoolkit.training.cli import _flag_overrides
    from nbtoolkit.training.config import TOP_LEVEL_OPTIONS, merge_sources

    args = parse("--hidden-width", "8", "--activation", "silu", "--fourier-scale", "2", "--predictor-option", "max_pairs=4")
    given = _flag_overrides(args)
    assert given == {"hidden_width": 8, "activation": "silu", "fourier_scale": 2.0, "predictor_options": {"max_pairs": 4}}
    file = {"hidden_layers": 3, "predictor_options": {"hidden_width": 16, "init_factor": 0.1}}
    assert TrainConfig.from_dict(merge_sources(file, given)).predictor_options == {
        "hidden_layers": 3, "hidden_width": 8, "init_factor": 0.1, "activation": "silu", "fourier_scale": 2.0, "max_pairs": 4}
    for key in TOP_LEVEL_OPTIONS["predictor_options"]:  # each has its flag, typed by the plugin's declaration
        assert getattr(parse(f"--{key.replace('_', '-')}", "2" if key != "activation" else "gelu"), f"train_{key}") \
            in (2, 2.0, "gelu")
    with pytest.raises(SystemExit):
        parse("--activation", "swish")  # the choices come from the plugin
    observers = _flag_overrides(parse("--no-progress", "--metrics-log", "m.jsonl", "--observer-option", "progress=true"))
    assert TrainConfig.from_dict(merge_sources(observers)).observer_options == {"progress": True, "metrics_log": "m.jsonl"}


def test_a_bad_predictor_option_names_the_plugin_and_the_option(tmp_path):
    with pytest.raises(ConfigError, match="option 'init_factor' of dt predictor 'mlp' \\(plugin 'plugins.mlp_predictor'\\) "
                                          "must be finite and > 0; got -1.0"):
        run_train(parse("--preset", "kepler", "--epochs", "1", "--predictor-option", "init_factor=-1", "--no-progress"))
    config = tmp_path / "run.toml"
    config.write_text("epochs = 1\n[predictor_options]\nhidden_width = 0\n[system]\npreset = \"kepler\"\n")
    with pytest.raises(ConfigError, match="option 'hidden_width' of dt predictor 'mlp'.* must be >= 1; got 0"):
        run_train(parse("--config", str(config), "--no-progress"))


def test_a_checkpoint_with_the_mlp_keys_at_top_level_resumes_as_it_did(tmp_path):
    from nbtoolkit.training.checkpoint import payload_digest

    options = {"hidden_width": 8, "hidden_layers": 1, "history_len": 1}
    trainer = Trainer(TrainConfig(epochs=1, **with_options(history_len=1)), kepler_batch(2).state)
    trainer.fit()
    new = trainer.save_checkpoint(tmp_path / "new.pt")
    data = torch.load(new, weights_only=True)  # as written before the mlp predictor declared its options
    data["config"] = {**data["config"], **options, "activation": "tanh", "fourier_features": 0, "fourier_scale": 1.0,
                      "predictor_options": {}}
    data["predictor_options"] = {**options, "activation": "tanh", "fourier_features": 0, "fourier_scale": 1.0, "seed": 0}
    data["checksum"] = {"algorithm": "sha256", "digest": payload_digest(data)}
    old = tmp_path / "old.pt"
    torch.save(data, old)
    assert same_weights(load_predictor(old), load_predictor(new))
    resumed = [Trainer.from_checkpoint(path, epochs=2) for path in (old, new)]
    assert resumed[0].config.predictor_options == {**options, "activation": "tanh", "fourier_features": 0,
                                                   "fourier_scale": 1.0}
    for t in resumed:
        t.fit()
    assert same_weights(resumed[0].predictor, resumed[1].predictor) and resumed[0].history is not None


def test_cli_without_a_system_trains_on_the_general_set_and_names_bad_preset_flags(tmp_path, capsys):
    ckpt = tmp_path / "g.pt"
    assert run_train(parse("--epochs", "1", "--steps-per-epoch", "1", "--replay-steps", "1", "--calibrate-pass-rate",
                           "0", "--checkpoint", str(ckpt))) == 0
    assert "training set 'general'" in capsys.readouterr().err
    saved = torch.load(ckpt, weights_only=True)
    assert saved["config"]["E_lower"] != TrainConfig().E_lower  # the set's [train] settings were applied
    assert saved["state"]["mass"].shape[0] > 40 and bool((saved["state"]["mass"] == 0).any())  # padded mixed N
    with pytest.raises(ConfigError, match="does not take --e-min"):
        run_train(parse("--preset", "kepler", "--e-min", "0.3"))


def test_cli_system_table_in_config(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('epochs = 1\nsteps_per_epoch = 2\nhidden_width = 4\ncheckpoint_path = "%s"\n'
                      '[system]\npreset = "kepler-batch"\nnum_orbits = 2\n'.replace("%s", (tmp_path / "t.pt").as_posix()))
    assert run_train(parse("--config", str(config), "--no-progress")) == 0
    assert torch.load(tmp_path / "t.pt", weights_only=True)["state"]["mass"].shape == (2, 2)


def test_state_from_arrays_trains_too():
    state = NBodyState.cat([two_body_orbit(e=0.2)[0], two_body_orbit(e=0.4)[0]])
    result = Trainer(TrainConfig(epochs=1, **SMALL), state).fit()
    assert result.epochs_completed == 1
