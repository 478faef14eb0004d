"""One home for the contract of every extension point, each with its check; the old import paths still work."""

from __future__ import annotations

import importlib

import pytest
import torch
from systems import random_cluster

import nbtoolkit.contracts as contracts
from nbtoolkit.training import ReplayBuffer


@pytest.mark.parametrize("old, name", [
    ("nbtoolkit", "Integrator"), ("nbtoolkit.integrator", "Integrator"),
    ("nbtoolkit", "DtPredictor"), ("nbtoolkit.predictor", "DtPredictor"), ("nbtoolkit.predictor", "History"),
    ("nbtoolkit.predictor", "checked_dt"), ("nbtoolkit.predictor", "bind_integrator"),
    ("nbtoolkit", "Gate"), ("nbtoolkit.gate", "Gate"),
    ("nbtoolkit", "ExternalField"), ("nbtoolkit.field", "ExternalField"),
    ("nbtoolkit.training.replay", "Sampler"),
])
def test_the_old_import_paths_give_the_contracts_themselves(old, name):
    assert getattr(importlib.import_module(old), name) is getattr(contracts, name)


def test_the_default_plugins_honour_their_contracts(host):
    """Each default entry builds an object of its extension point's contract, and passes its check."""
    state = random_cluster(2, 3)
    dt = torch.full((2,), 1e-3, dtype=torch.float64)
    for name in host.integrators:
        integrator = host.integrators.create(name)
        assert isinstance(integrator, contracts.Integrator), name
        after = contracts.checked_step(integrator, state, dt)
    for name in host.predictors:
        predictor = host.predictors.create(name)
        assert isinstance(predictor, contracts.DtPredictor), name
        contracts.checked_dt(predictor(state, None), state, predictor)
    for name in host.gates:
        gate = host.gates.create(name)
        assert isinstance(gate, contracts.Gate), name
        contracts.checked_error(gate, state, after)
    for name in host.fields:
        field = host.fields.create(name)
        assert isinstance(field, contracts.ExternalField), name
        contracts.checked_field(field, "potential_energy", state.replace(field=field), (2,))
    buffer = ReplayBuffer.like(state, capacity=8)
    buffer.add(state, dt, torch.tensor([1e-6, 1e-5], dtype=torch.float64))
    for name in host.samplers:
        sampler = host.samplers.create(name)
        assert contracts.checked_sample(sampler, buffer, 2, torch.Generator().manual_seed(0)).numel() == 2, name


def test_a_predictor_that_declares_its_dt_even_under_time_reversal_keeps_its_word(host):
    """``time_even``: dt(x, v) = dt(x, -v) on clusters with random velocities, for every default predictor that
    declares it (the classical rules; ``mlp`` with ``time_symmetric``), and not for the learned network without it."""
    from nbtoolkit.physics import time_reversed

    state = random_cluster(3, 5, seed=4)
    even = []
    for name in host.predictors:
        for options in ({}, {"time_symmetric": True}) if name in ("mlp", "mlp-ensemble") else ({},):
            predictor = host.predictors.create(name, **options)
            if predictor.time_even:
                with torch.no_grad():
                    assert torch.allclose(predictor(state), predictor(time_reversed(state)), rtol=1e-13, atol=0), name
                even.append(name)
    assert {"constant", "aarseth", "freefall", "mlp", "mlp-ensemble"} <= set(even)
    network = host.predictors.create("learned", feedback=False)
    with torch.no_grad():
        assert not network.time_even and not torch.allclose(network(state), network(time_reversed(state)), rtol=1e-6)
