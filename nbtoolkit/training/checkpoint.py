"""Checkpoint files: write atomically, read with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values (no pickled objects):

* ``format`` / ``format_version``: :data:`FORMAT` and :data:`FORMAT_VERSION`
* ``versions``: nbtoolkit and torch versions that wrote it
* ``config``: :meth:`TrainConfig.to_dict`
* ``plugins``: for ``integrator``, ``predictor``, ``sampler`` and ``gate`` (files written before
  gates were plugins have none; they trained with the energy gate): name, providing plugin and
  its source
* ``predictor_options``: the options the predictor factory was called with
* ``predictor_state``, ``optimizer_state``: ``state_dict()`` of each
* ``epoch``, ``totals``, ``rng_state`` (the replay generator)
* ``state``, ``initial_state``, ``history``, ``stop_time``, ``period``, ``buffer``: the run itself
* ``checksum``: ``{"algorithm": "sha256", "digest": ...}`` of all the other keys (tensor bytes,
  dtypes and shapes, plain values), verified on load so that a flipped bit in a weight is
  reported instead of resumed from; files written before checksums were added load unverified

Loading validates the layout (types and ranges of every key above) and names the first bad key.

A *model file* (:func:`export_model`, format :data:`MODEL_FORMAT`) keeps only what flying the
model needs (``config``, ``plugins``, ``predictor_options``, ``predictor_state``,
``calibration`` and free-form ``info``): tens of kB instead of the replay buffer's MBs.
:func:`load_predictor` reads both.

Checkpoints written at the end of an epoch resume exactly: the resumed run produces the same
numbers as one that never stopped. A checkpoint written after a stop in mid-epoch resumes from
the last accepted state and runs that epoch again in full.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..errors import CheckpointError, UnknownNameError
from ..plugin_manager import PluginHost, get_host
from ..predictor import DtPredictor, History

FORMAT = "nbtoolkit-checkpoint"
FORMAT_VERSION = 1
MODEL_FORMAT = "nbtoolkit-model"
MODEL_KEYS = ("config", "plugins", "predictor_options", "predictor_state")
REQUIRED_KEYS = ("config", "plugins", "predictor_options", "predictor_state", "optimizer_state", "epoch", "totals",
                 "rng_state", "state", "initial_state", "history", "stop_time", "period", "buffer")


#: keys that are not covered by the checksum
_UNHASHED = ("format", "format_version", "checksum")


def payload_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's payload (every key but format, format_version and checksum):
    keys, plain values, and each tensor's dtype, shape and bytes, in a canonical order."""
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            h.update(b"D%d:" % len(value))
            for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
                feed(key)
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            h.update(b"L%d:" % len(value))
            for item in value:
                feed(item)
        elif isinstance(value, float):
            h.update(b"F" + struct.pack("<d", value))
        else:
            h.update(f"{type(value).__name__}:{value!r};".encode())

    feed({k: v for k, v in data.items() if k not in _UNHASHED})
    return h.hexdigest()


def write_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save ``payload`` to ``path`` atomically (temporary file in the same directory, fsync, rename),
    with the checksum of the payload."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"cannot write checkpoint '{target}': directory '{folder}' does not exist")
    checksum = {"algorithm": "sha256", "digest": payload_digest(payload)}
    try:
        atomic_write(target, lambda fh: torch.save(
            {"format": FORMAT, "format_version": FORMAT_VERSION, **payload, "checksum": checksum}, fh))
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
    where = f"checkpoint '{p}'"
    check_schema(data, where)
    _verify_checksum(data, where)
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
    where = f"{'model' if data.get('format') == MODEL_FORMAT else 'checkpoint'} '{p}'"
    check_schema(data, where, model=data.get("format") == MODEL_FORMAT)
    _verify_checksum(data, where)
    return data


def export_model(checkpoint_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                 info: dict[str, Any] | None = None) -> Path:
    """Write the model file of a checkpoint (atomically): weights, options, configuration, calibration."""
    data = read_checkpoint(checkpoint_path)
    return write_model(data, out_path, info=info)


def write_model(data: dict[str, Any], out_path: str | os.PathLike[str], *, info: dict[str, Any] | None = None,
                **replace: Any) -> Path:
    """Write the model file (atomically, with its checksum) of the contents ``data`` of a checkpoint or
    model file, with the keys in ``replace`` (``predictor_state``, ``calibration``) replaced."""
    data = {**data, **replace}
    payload = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, "versions": data.get("versions", {}),
               **{k: data[k] for k in MODEL_KEYS}, "calibration": data.get("calibration"),
               "epoch": data.get("epoch", 0), "info": dict(data.get("info") or {}, **(info or {}))}
    payload["checksum"] = {"algorithm": "sha256", "digest": payload_digest(payload)}
    target = Path(out_path)
    try:
        atomic_write(target, lambda fh: torch.save(payload, fh))
    except OSError as exc:
        raise CheckpointError(f"cannot write model file '{target}': {exc}") from exc
    return target


def _verify_checksum(data: dict[str, Any], where: str) -> None:
    checksum = data.get("checksum")
    if checksum is None:
        return  # written before checksums were stored
    if not isinstance(checksum, dict) or checksum.get("algorithm") != "sha256" or not isinstance(checksum.get("digest"), str):
        raise CheckpointError(f"{where}: key 'checksum' is malformed (expected {{algorithm = 'sha256', digest = ...}})")
    if payload_digest(data) != checksum["digest"]:
        raise CheckpointError(
            f"{where} is corrupt: its contents do not match the SHA-256 checksum stored when it was written "
            "(a flipped bit or an edit); restore it from a copy or retrain"
        )


def check_schema(data: dict[str, Any], where: str, *, model: bool = False) -> None:
    """Check the types and ranges of a checkpoint's keys (``model``: only those of a model file);
    a :class:`CheckpointError` names the first bad key."""
    def bad(key: str, rule: str, value: Any) -> CheckpointError:
        shown = f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}" if isinstance(value, torch.Tensor) \
            else f"{type(value).__name__} {value!r}"[:120]
        return CheckpointError(f"{where} is malformed: key '{key}' must be {rule}; it is {shown}")

    def table(key: str, value: Any, keys: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise bad(key, "a table", value)
        for k in keys:
            if k not in value:
                raise CheckpointError(f"{where} is malformed: key '{key}' has no '{k}'")
        return value

    def count(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(key, "an integer >= 0", value)

    def tensor(key: str, value: Any, *, optional: bool = False, floating: bool = False) -> None:
        if value is None and optional:
            return
        if not isinstance(value, torch.Tensor) or (floating and not value.is_floating_point()):
            raise bad(key, ("a floating-point tensor" if floating else "a tensor") + (" or none" if optional else ""), value)

    config = table("config", data["config"])
    for key in ("integrator", "predictor", "sampler", "gate"):
        if key in config and not isinstance(config[key], str):
            raise bad(f"config.{key}", "a name", config[key])
    plugins = table("plugins", data["plugins"], ("integrator", "predictor", "sampler"))
    for key in ("integrator", "predictor", "sampler", "gate"):
        if key == "gate" and key not in plugins:
            continue
        entry = table(f"plugins.{key}", plugins[key], ("name",))
        if not isinstance(entry["name"], str) or not entry["name"]:
            raise bad(f"plugins.{key}.name", "a name", entry["name"])
    table("predictor_options", data["predictor_options"])
    weights = table("predictor_state", data["predictor_state"])
    for key, value in weights.items():
        tensor(f"predictor_state.{key}", value)
    if model:
        return
    table("optimizer_state", data["optimizer_state"], ("state", "param_groups"))
    count("epoch", data["epoch"])
    totals = table("totals", data["totals"], ("accepted", "retrains"))
    for key in ("accepted", "retrains"):
        count(f"totals.{key}", totals[key])
    rng = data["rng_state"]
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.dim() != 1:
        raise bad("rng_state", "the state of a torch.Generator (a 1-D uint8 tensor)", rng)
    for name in ("state", "initial_state"):
        st = table(name, data[name], ("mass", "position", "velocity", "time", "G", "softening"))
        for key in ("mass", "position", "velocity", "time"):
            tensor(f"{name}.{key}", st[key], floating=True)
        tensor(f"{name}.acceleration", st.get("acceleration"), optional=True, floating=True)
        for key in ("G", "softening"):
            if isinstance(st[key], bool) or not isinstance(st[key], (int, float)) or not math.isfinite(st[key]):
                raise bad(f"{name}.{key}", "a finite number", st[key])
    if data["history"] is not None:
        hist = table("history", data["history"], ("position", "velocity", "mask"))
        for key in ("position", "velocity", "mask"):
            tensor(f"history.{key}", hist[key])
        if hist["mask"].dtype != torch.bool:
            raise bad("history.mask", "a boolean tensor", hist["mask"])
        if hist["position"].shape != hist["velocity"].shape or hist["position"].dim() != 4 \
                or tuple(hist["mask"].shape) != tuple(hist["position"].shape[:2]):
            raise CheckpointError(
                f"{where} is malformed: key 'history' has inconsistent shapes (position {tuple(hist['position'].shape)}, "
                f"velocity {tuple(hist['velocity'].shape)}, mask {tuple(hist['mask'].shape)})"
            )
    tensor("stop_time", data["stop_time"], optional=True, floating=True)
    tensor("period", data["period"], optional=True, floating=True)
    buffer = table("buffer", data["buffer"], ("capacity", "n_bodies", "dim", "history_len", "size", "next", "count", "data"))
    for key in ("capacity", "n_bodies", "dim", "history_len", "size", "next", "count"):
        count(f"buffer.{key}", buffer[key])
    for key, value in table("buffer.data", buffer["data"]).items():
        tensor(f"buffer.data.{key}", value)


def plugin_info(host: PluginHost, registry_name: str, name: str) -> dict[str, str]:
    """The name, providing plugin and source of a registry entry, for the checkpoint record."""
    entry = getattr(host, registry_name).get(name)
    return {"name": name, "plugin": entry.plugin, "source": entry.source}


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
    """Load weights (after :meth:`DtPredictor.upgrade_state_dict`), turning any mismatch into a
    :class:`CheckpointError` naming the predictor and keys."""
    state_dict = predictor.upgrade_state_dict(dict(state_dict))
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
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{where}: cannot load the weights of dt predictor '{name}': {detail}") from None


def load_predictor(checkpoint_path: str | os.PathLike[str], host: PluginHost | None = None) -> DtPredictor:
    """The trained dt predictor stored in a checkpoint or model file, in eval mode (float64, CPU).

    The predictor is rebuilt from its registry name and the options recorded in the
    file, then its weights (and calibrated safety factor) are loaded.
    """
    return load_trained(checkpoint_path, host)[0]


def load_trained(checkpoint_path: str | os.PathLike[str], host: PluginHost | None = None) -> tuple[DtPredictor, dict[str, Any]]:
    """Like :func:`load_predictor`, and also the checkpoint's contents (e.g. ``data["plugins"]["integrator"]``)."""
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
    return predictor, data
