"""NBTOOLKIT_COMPILE=1: the learned dt evaluated through torch.compile gives the eager dt, and falls back to eager."""

from __future__ import annotations

import re
import shutil
import warnings

import pytest
import torch

import plugins.safety_classes as safety_classes
from nbtoolkit.compiled import COMPILE_ENV
from nbtoolkit.presets import make_preset


def eager_dt_and_class(predictor, state):
    with torch.no_grad():
        return safety_classes._dt_and_class(predictor, state, None)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler for inductor")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's compiler stack
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's compiler notes on the traced code
def test_the_compiled_learned_dt_is_the_eager_one_and_sees_new_factors(host, fresh_compiled):
    network = host.predictors.create("learned", feedback=False)
    state = make_preset("kepler", eccentricity=0.7).state
    later = state.replace(position=state.position + 0.2 * state.velocity)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning
        with torch.no_grad():
            dt, classes = network.predict_with_class(state)
            dt_later, _ = network.predict_with_class(later)
    assert safety_classes.compiled_dt_and_class.compiled is not None
    assert not safety_classes.compiled_dt_and_class.failed
    eager_dt, eager_classes = eager_dt_and_class(network, state)
    torch.testing.assert_close(dt, eager_dt, rtol=1e-12, atol=0)
    assert torch.equal(classes, eager_classes)
    torch.testing.assert_close(dt_later, eager_dt_and_class(network, later)[0], rtol=1e-12, atol=0)
    with torch.no_grad():  # the calibrated factors are read at each call, not frozen into the graph
        network.log_safety.add_(0.5)
        raised, _ = network.predict_with_class(state)
    torch.testing.assert_close(raised, eager_dt * torch.exp(torch.tensor(0.5, dtype=torch.float64)), rtol=1e-12, atol=0)
    # training records a graph: the eager path runs and the dt carries gradients
    assert network.predict_with_class(state)[0].requires_grad


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(host, fresh_compiled, monkeypatch):
    def unavailable(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", unavailable)
    network = host.predictors.create("learned", feedback=False)
    state = make_preset("figure-eight").state
    with torch.no_grad():
        with pytest.warns(RuntimeWarning) as warned:  # the force kernel's compiled path falls back as well
            first = network(state)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = network(state)
    messages = sorted(str(w.message) for w in warned)
    assert len(messages) == 2 and "compiled force kernel is unavailable" in messages[0]
    assert re.search("compiled learned dt evaluation is unavailable.*no compiler here", messages[1])
    assert not safety_classes.compiled_dt_and_class.available()
    assert torch.equal(first, eager_dt_and_class(network, state)[0]) and torch.equal(first, second)


def test_the_learned_dt_is_not_compiled_unless_asked(host, monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    monkeypatch.setattr(safety_classes.compiled_dt_and_class, "compiled", None)
    with torch.no_grad():
        host.predictors.create("learned")(make_preset("kepler", eccentricity=0.3).state)
    assert safety_classes.compiled_dt_and_class.compiled is None
