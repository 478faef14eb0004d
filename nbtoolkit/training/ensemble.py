"""Combine trained ``mlp`` models into one ``mlp-ensemble`` (:mod:`plugins.ensemble_predictor`).

The members must be models of the same recipe: the ``mlp`` predictor with the same options (its
``seed`` aside), trained for the same integrator, gate and energy threshold. Their own safety
factors are dropped; the ensemble is calibrated as a whole afterwards
(:func:`nbtoolkit.training.recalibrate.recalibrate_model`, which ``nbtoolkit calibrate --model a.pt
--model b.pt ...`` calls), on validation systems that none of the members trained on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

import torch

from ..errors import ConfigError
from ..plugin_manager import PluginHost, get_host
from ..predictor import DtPredictor
from .checkpoint import load_trained, plugin_info

#: the registered name of the ensemble predictor and of the predictor its members must be
ENSEMBLE, MEMBER = "mlp-ensemble", "mlp"
#: what the members' training must agree on: a checkpoint's config keys
SHARED_CONFIG = ("integrator", "gate", "energy_threshold")


def _recipe(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    options = {k: v for k, v in dict(data["predictor_options"]).items() if k != "seed"}
    config = {k: data["config"].get(k) for k in SHARED_CONFIG}
    return options, config


def member_seed(data: dict[str, Any]) -> int:
    """The training seed a model file or checkpoint records (0 where it records none)."""
    seed = data.get("config", {}).get("seed")
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else 0


def combine_models(sources: Sequence[str | os.PathLike[str]], host: PluginHost | None = None, *,
                   spread: float = 0.0) -> tuple[DtPredictor, dict[str, Any]]:
    """An uncalibrated ``mlp-ensemble`` of the model files or checkpoints ``sources`` (at least two), with
    the ensemble's option ``spread``, and
    the contents of its model file (the first member's, with the ensemble's predictor, options and
    weights, and ``info.members``: each member's path and training seed)."""
    host = host or get_host()
    if len(sources) < 2:
        raise ConfigError(f"an ensemble needs at least two member models; got {len(sources)}")
    loaded = [load_trained(source, host) for source in sources]
    first_options, first_config = _recipe(loaded[0][1])
    for source, (_, data) in zip(sources, loaded):
        name = data["plugins"]["predictor"]["name"]
        if name != MEMBER:
            raise ConfigError(f"ensemble member '{source}' holds dt predictor '{name}'; members must be '{MEMBER}' models")
        options, config = _recipe(data)
        for what, mine, theirs in (("predictor option", options, first_options), ("training setting", config, first_config)):
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if differ:
                shown = "; ".join(f"{k} = {theirs.get(k)!r} in '{sources[0]}', {mine.get(k)!r} in '{source}'"
                                  for k in differ)
                raise ConfigError(f"ensemble members must share their recipe; {what}s differ: {shown}")
    ensemble = host.predictors.create(ENSEMBLE, size=len(loaded), spread=spread, **first_options).to(dtype=torch.float64)
    members = cast(Any, ensemble).members
    with torch.no_grad():
        for member, (predictor, _) in zip(members, loaded):
            member.load_state_dict(predictor.state_dict())
            member.log_safety.zero_()
    ensemble.eval()
    data = dict(loaded[0][1])
    data["plugins"] = {**data["plugins"], "predictor": plugin_info(host, "predictors", ENSEMBLE)}
    data["predictor_options"] = dict(cast(Any, ensemble).options)
    data["predictor_state"] = {k: v.detach().cpu() for k, v in ensemble.state_dict().items()}
    data["info"] = {"members": [{"path": str(source), "seed": member_seed(member_data)}
                                for source, (_, member_data) in zip(sources, loaded)]}
    return ensemble, data


__all__ = ["combine_models", "member_seed"]
