"""Checkpoint files: write atomically, read with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values (no pickled objects):

* ``format`` / ``format_version``: :data:`FORMAT` and :data:`FORMAT_VERSION`
* ``versions``: nbtoolkit and torch versions that wrote it
* ``config``: :meth:`TrainConfig.to_dict`
* ``plugins``: for ``integrator``, ``predictor``, ``sampler``: name, providing plugin and its source
* ``predictor_options``: the options the predictor factory was called with
* ``predictor_state``, ``optimizer_state``: ``state_dict()`` of each
* ``epoch``, ``totals``, ``rng_state`` (the replay generator)
* ``state``, ``initial_state``, ``history``, ``stop_time``, ``period``, ``buffer``: the run itself

A *model file* (:func:`export_model`, format :data:`MODEL_FORMAT`) keeps only what flying the
model needs (``config``, ``plugins``, ``predictor_options``, ``predictor_state``,
``calibration`` and free-form ``info``): tens of kB instead of the replay buffer's MBs.
:func:`load_predictor` reads both.

Checkpoints written at the end of an epoch resume exactly: the resumed run produces the same
numbers as one that never stopped. A checkpoint written after a stop in mid-epoch resumes from
the last accepted state and runs that epoch again in full.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..errors import UnknownNameError
from ..plugin_manager import PluginHost, get_host
from ..predictor import DtPredictor, History
from ..state import NBodyState
from .errors import CheckpointError

FORMAT = "nbtoolkit-checkpoint"
FORMAT_VERSION = 1
MODEL_FORMAT = "nbtoolkit-model"
MODEL_KEYS = ("config", "plugins", "predictor_options", "predictor_state")
REQUIRED_KEYS = ("config", "plugins", "predictor_options", "predictor_state", "optimizer_state", "epoch", "totals",
                 "rng_state", "state", "initial_state", "history", "stop_time", "period", "buffer")


def write_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save ``payload`` to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"cannot write checkpoint '{target}': directory '{folder}' does not exist")
    try:
        atomic_write(target, lambda fh: torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, fh))
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint '{target}': {exc}") from exc
    return target


def _load(p: Path, what: str) -> dict[str, Any]:
    if not p.is_file():
        raise CheckpointError(f"{what} '{p}' does not exist")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = [ln for ln in lines if "WeightsUnpickler error" in ln]  # the useful line of torch's long message
        reason = (detail or lines or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{what} '{p}' cannot be read: it is corrupt, truncated or not an nbtoolkit {what} "
            f"({type(exc).__name__}: {reason})"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"'{p}' is not an nbtoolkit {what}")
    version = data.get("format_version")
    if data.get("format") in (FORMAT, MODEL_FORMAT) and (not isinstance(version, int) or version > FORMAT_VERSION):
        raise CheckpointError(
            f"{what} '{p}' has format version {version!r}; this nbtoolkit reads versions up to {FORMAT_VERSION}"
        )
    return data


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a checkpoint file; every problem is a :class:`CheckpointError` naming the file."""
    p = Path(path)
    data = _load(p, "checkpoint")
    if data.get("format") != FORMAT:
        raise CheckpointError(f"'{p}' is not an nbtoolkit checkpoint (no '{FORMAT}' marker)")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint '{p}' is incomplete: missing {', '.join(missing)}")
    return data


def read_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a model file or a checkpoint (both carry :data:`MODEL_KEYS`)."""
    p = Path(path)
    data = _load(p, "model")
    if data.get("format") not in (FORMAT, MODEL_FORMAT):
        raise CheckpointError(f"'{p}' is not an nbtoolkit model file or checkpoint (no '{MODEL_FORMAT}' "
                              f"or '{FORMAT}' marker)")
    missing = [k for k in MODEL_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"model '{p}' is incomplete: missing {', '.join(missing)}")
    return data


def export_model(checkpoint_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                 info: dict[str, Any] | None = None) -> Path:
    """Write the model file of a checkpoint (atomically): weights, options, configuration, calibration."""
    data = read_checkpoint(checkpoint_path)
    payload = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, "versions": data.get("versions", {}),
               **{k: data[k] for k in MODEL_KEYS}, "calibration": data.get("calibration"),
               "epoch": data["epoch"], "info": dict(info or {})}
    target = Path(out_path)
    try:
        atomic_write(target, lambda fh: torch.save(payload, fh))
    except OSError as exc:
        raise CheckpointError(f"cannot write model file '{target}': {exc}") from exc
    return target


def plugin_info(host: PluginHost, registry_name: str, name: str) -> dict[str, str]:
    """The name, providing plugin and source of a registry entry, for the checkpoint record."""
    entry = getattr(host, registry_name).get(name)
    return {"name": name, "plugin": entry.plugin, "source": entry.source}


def state_to_dict(state: NBodyState) -> dict[str, Any]:
    """A state as plain tensors and numbers (acceleration cache included when present)."""
    return {"mass": state.mass.detach().cpu(), "position": state.position.detach().cpu(),
            "velocity": state.velocity.detach().cpu(), "time": state.time.detach().cpu(), "G": state.G,
            "softening": state.softening,
            "acceleration": None if state.acceleration is None else state.acceleration.detach().cpu()}


def state_from_dict(d: dict[str, Any], where: str) -> NBodyState:
    try:
        state = NBodyState(d["mass"], d["position"], d["velocity"], d["time"], float(d["G"]), float(d["softening"]),
                           d.get("acceleration"))
        return state.validate(where, allow_padding=True)
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None


def history_to_dict(history: History | None) -> dict[str, Any] | None:
    if history is None:
        return None
    return {"position": history.position.cpu(), "velocity": history.velocity.cpu(), "mask": history.mask.cpu()}


def history_from_dict(d: dict[str, Any] | None) -> History | None:
    return None if d is None else History(d["position"], d["velocity"], d["mask"])


def build_predictor(host: PluginHost, name: str, options: dict[str, Any], where: str) -> DtPredictor:
    """Build a predictor by name for a checkpoint, with a clear error if it is not registered."""
    try:
        return host.predictors.create(name, **options)
    except UnknownNameError:
        raise CheckpointError(
            f"{where} was trained with dt predictor '{name}', which is not registered now "
            f"(known: {', '.join(host.predictors.names())}); install or enable the plugin that provides it"
        ) from None


def load_predictor_state(predictor: DtPredictor, state_dict: dict[str, Any], name: str, where: str) -> None:
    """Load weights, turning any mismatch into a :class:`CheckpointError` naming the predictor and keys."""
    own = predictor.state_dict()
    problems = [f"missing {k}" for k in own if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in own]
    problems += [f"{k} has shape {tuple(state_dict[k].shape)} in the file but {tuple(v.shape)} in the model"
                 for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{where}: the weights do not fit dt predictor '{name}' as configured now; were the architecture "
            f"options (hidden_width, hidden_layers, history_len, fourier_features, ...) changed? "
            f"{'; '.join(problems[:3])}{more}"
        )
    try:
        predictor.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: cannot load the weights of dt predictor '{name}': {' '.join(str(exc).split())}") from None


def load_predictor(checkpoint_path: str | os.PathLike[str], host: PluginHost | None = None) -> DtPredictor:
    """The trained dt predictor stored in a checkpoint or model file, in eval mode (float64, CPU).

    The predictor is rebuilt from its registry name and the options recorded in the
    file, then its weights (and calibrated safety factor) are loaded.
    """
    host = host or get_host()
    data = read_model(checkpoint_path)
    where = f"{'model' if data.get('format') == MODEL_FORMAT else 'checkpoint'} '{checkpoint_path}'"
    try:
        name = str(data["plugins"]["predictor"]["name"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{where} does not record which dt predictor it holds") from None
    predictor = build_predictor(host, name, dict(data["predictor_options"]), where)
    predictor = predictor.to(dtype=torch.float64)
    load_predictor_state(predictor, data["predictor_state"], name, where)
    predictor.eval()
    return predictor
