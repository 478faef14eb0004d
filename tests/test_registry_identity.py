"""Objects built by a registry carry their identity (kind, name, plugin, source), and errors read it."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import torch
from systems import two_body_orbit

from nbtoolkit import DtPredictor, PluginHost, get_host, hookimpl
from nbtoolkit.errors import InvalidTimestepError
from nbtoolkit.evaluate import ScaledPredictor
from nbtoolkit.registry import RegistryIdentity, describe, identity_of
from nbtoolkit.simulate import simulate


@pytest.mark.parametrize("registry, name, kind, plugin", [
    ("integrators", "leapfrog", "integrator", "plugins.integrators"),
    ("predictors", "freefall", "dt predictor", "plugins.classical_predictors"),
    ("samplers", "uniform", "replay sampler", "plugins.samplers"),
    ("gates", "pair-energy", "gate", "plugins.gates"),
    ("fields", "plummer-host", "external field", "plugins.fields"),
])
def test_every_registry_stamps_what_it_builds(host, registry, name, kind, plugin):
    built = getattr(host, registry).create(name)
    identity = RegistryIdentity(kind, name, plugin, f"module {plugin}")
    assert built.registry_identity == identity and identity_of(built) == identity
    assert describe(built, kind) == f"{kind} '{name}' (plugin '{plugin}' from module {plugin})"


def test_a_stamped_module_keeps_its_parameters_state_dict_and_copies(host):
    predictor = host.predictors.create("mlp")
    plain = type(predictor)()  # the same class built directly: no identity
    assert identity_of(plain) is None
    assert list(predictor.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in predictor.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert repr(predictor) == repr(plain)
    assert isinstance(predictor, DtPredictor) and predictor.trainable
    assert predictor.to(dtype=torch.float64).registry_identity.name == "mlp"  # .to() returns the module itself
    assert copy.deepcopy(predictor).registry_identity == predictor.registry_identity
    assert pickle.loads(pickle.dumps(predictor)).registry_identity == predictor.registry_identity


class Slotted:
    """A sampler that takes no attributes."""

    __slots__ = ()

    def __call__(self, buffer, batch_size, generator=None):
        return torch.arange(min(batch_size, len(buffer)))


@dataclasses.dataclass(frozen=True)
class FrozenSampler:
    offset: int = 0

    def __call__(self, buffer, batch_size, generator=None):
        return torch.arange(min(batch_size, len(buffer)))


class OddObjectsPlugin:
    @hookimpl
    def nbtoolkit_register_replay_samplers(self, register):
        register("slotted", Slotted)
        register("frozen", FrozenSampler)

    @hookimpl
    def nbtoolkit_register_dt_predictors(self, register):
        register("freefall-alias", lambda **options: get_host().predictors.create("freefall", **options))


@pytest.fixture(scope="module")
def local() -> PluginHost:
    """A host of the default plugins and :class:`OddObjectsPlugin` (as 'odd-objects')."""
    host = PluginHost(load_entry_points=False)
    host.register_plugin(OddObjectsPlugin(), name="odd-objects")
    return host


def test_objects_that_take_no_attributes_are_built_unstamped_and_described_by_class(local):
    slotted = local.samplers.create("slotted")
    assert identity_of(slotted) is None
    assert describe(slotted, "replay sampler") == (
        f"replay sampler Slotted (class {__name__}.Slotted, not built by a plugin registry)")


def test_a_frozen_dataclass_is_stamped_without_changing_its_value(local):
    frozen = local.samplers.create("frozen", offset=2)
    assert frozen.registry_identity.name == "frozen" and frozen.registry_identity.plugin == "odd-objects"
    assert frozen == FrozenSampler(2) and hash(frozen) == hash(FrozenSampler(2))


def test_an_alias_factory_leaves_the_name_it_was_asked_for(local):
    assert local.predictors.create("freefall-alias", eta=0.1).registry_identity.name == "freefall-alias"


class Negative(torch.nn.Module):
    history_len = 0

    def forward(self, state, history=None):
        return -torch.ones(state.batch_size, dtype=state.dtype)


class NegativePlugin:
    @hookimpl
    def nbtoolkit_register_dt_predictors(self, register):
        register("negative", Negative)


def test_a_wrapper_built_by_nbtoolkit_is_named_after_the_rule_it_wraps(host):
    name = host.register_plugin(NegativePlugin(), name="negative-plugin", source="nbt-negative 1.0")
    try:
        scaled = ScaledPredictor(host.predictors.create("negative"), torch.ones(1, dtype=torch.float64))
        state, _ = two_body_orbit()
        with pytest.raises(InvalidTimestepError, match=r"^dt predictor 'negative' \(plugin 'negative-plugin' from "
                                                       r"nbt-negative 1.0\) returned dt = -1.0"):
            simulate(state, host.integrators.create("leapfrog"), scaled, steps=1)
    finally:
        host.unregister_plugin(name)
