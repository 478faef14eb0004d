"""Safety classes of learned dt predictors and the prediction that applies one calibrated factor per class.

A learned dt is multiplied by a factor calibrated after training (:mod:`nbtoolkit.training.calibrate`),
one per class of states: by number of bodies (:data:`SAFETY_BUCKETS`), by the osculating eccentricity of
the closest pair (:data:`ECCENTRICITY_BUCKETS`), by whether the closest pair's binding energy
G m_i m_j / r reaches the system's |E| (:data:`DOMINANT_SHARE`) and by whether the rest of the system
perturbs the closest pair (:data:`QUIET_TIDE`); see :mod:`plugins.mlp_predictor` for why each split.
:class:`ClassCalibratedDt` is what ``mlp`` and ``mlp-ensemble`` share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nbtoolkit.compiled import CompiledFunction
from nbtoolkit.errors import ConfigError
from nbtoolkit.physics import state_accelerations
from nbtoolkit.predictor import DtPredictor, History
from nbtoolkit.state import NBodyState

if TYPE_CHECKING:
    from plugins.mlp_predictor import PairFeatures

#: upper ends of the body-count classes with their own safety factors: N = 2, 3, 4-7, 8-15, 16-31, >= 32
SAFETY_BUCKETS = (2, 3, 7, 15, 31)
#: lower ends of the closest-pair eccentricity classes after the first: e < 0.5, 0.5-0.9, 0.9-0.97,
#: 0.97-0.995, 0.995-1 and unbound (e >= 1, a flyby)
ECCENTRICITY_BUCKETS = (0.5, 0.9, 0.97, 0.995, 1.0)
#: the eccentricity class of each of today's classes in the layouts of older model files, by their
#: number of eccentricity classes: 4 before the unbound class (their e >= 0.97 factor serves 0.97-0.995,
#: 0.995-1 and e >= 1), 5 before the near-radial class (their 0.97-1 factor serves 0.97-0.995 and 0.995-1)
LEGACY_ECCENTRICITY_CLASSES = {4: (0, 1, 2, 3, 3, 3), 5: (0, 1, 2, 3, 3, 4)}
#: the closest pair dominates the energy when G m_i m_j / (r |E|) is at least this
DOMINANT_SHARE = 1.0
#: the closest pair is perturbed when the tidal acceleration of the other bodies on it is at least
#: this share of the pair's own attraction, |a_ij - a_ij,2body| r^2 / mu (the last pair input)
QUIET_TIDE = 0.01
#: safety classes of one body count (eccentricity classes x dominant or not x perturbed or not)
SAFETY_GROUP_SIZE = 4 * (len(ECCENTRICITY_BUCKETS) + 1)
#: number of safety classes (body-count classes x eccentricity classes x dominant x perturbed)
SAFETY_CLASSES = (len(SAFETY_BUCKETS) + 1) * SAFETY_GROUP_SIZE


def safety_bucket(n_real: Tensor) -> Tensor:
    """Index (B,) of each system's body-count class in :data:`SAFETY_BUCKETS` (0 for N = 2, ...)."""
    bounds = torch.tensor(SAFETY_BUCKETS, dtype=n_real.dtype, device=n_real.device)
    return torch.bucketize(n_real, bounds)


def safety_class(n_real: Tensor, closest_eccentricity: Tensor, closest_energy_share: Tensor,
                 closest_tide: Tensor) -> Tensor:
    """Index (B,) of each state's safety class: body-count class x closest-pair eccentricity class x
    whether the closest pair's G m_i m_j / (r |E|) reaches :data:`DOMINANT_SHARE` x whether its tidal
    perturbation |a_ij - a_ij,2body| r^2 / mu reaches :data:`QUIET_TIDE`."""
    bounds = torch.tensor(ECCENTRICITY_BUCKETS, dtype=closest_eccentricity.dtype, device=closest_eccentricity.device)
    ecc_class = torch.bucketize(closest_eccentricity, bounds, right=True)
    dominant = (closest_energy_share >= DOMINANT_SHARE).long()
    perturbed = (closest_tide >= QUIET_TIDE).long()
    return safety_bucket(n_real) * SAFETY_GROUP_SIZE + 4 * ecc_class + 2 * dominant + perturbed


def _dt_and_class(predictor: ClassCalibratedDt, state: NBodyState, history: History | None) -> tuple[Tensor, Tensor]:
    """What :meth:`ClassCalibratedDt.predict_with_class` computes once the state is checked."""
    pf, extras = predictor.inputs(state, history)
    log_dt = predictor.network_log_dt(pf, extras)
    classes = safety_class(state.body_mask.sum(-1), pf.closest_eccentricity, pf.closest_energy_share, pf.closest_tide)
    return (log_dt + predictor.log_safety[classes]).exp(), classes


#: :func:`_dt_and_class` compiled, one graph per batch shape: a few hundred small operations fused into a few
#: loops (a call 2.2-2.9x faster in bench_predict.py; eager again after one warning if compiling fails)
compiled_dt_and_class = CompiledFunction(_dt_and_class, "learned dt evaluation", dynamic=False)


class ClassCalibratedDt(DtPredictor):
    """What ``mlp`` and ``mlp-ensemble`` share: dt = exp(log dt from the network inputs of a state) times a
    calibrated factor per safety class (:func:`safety_class`, a ``log_safety`` buffer, 1 until calibrated).

    Subclasses define :meth:`inputs` (the state's pair features and global extras) and
    :meth:`network_log_dt` (log dt from them, before the factor), and set ``options``."""

    log_safety: Tensor  #: (SAFETY_CLASSES,) log of the calibrated factor per safety class (a buffer)
    options: dict[str, Any]
    #: the registered name, for messages
    name = "mlp"

    def __init__(self) -> None:
        super().__init__()
        self.safety_group_size = SAFETY_GROUP_SIZE
        #: the kind of each class for the calibration's fallback (1: unbound closest pair, 0: bound), so that
        #: a class no validation system visits takes its factor from orbits like its own, not from flybys
        self.safety_kinds = (torch.arange(SAFETY_CLASSES) % SAFETY_GROUP_SIZE) // 4 == len(ECCENTRICITY_BUCKETS)
        self.register_buffer("log_safety", torch.zeros(SAFETY_CLASSES, dtype=torch.float64))

    def inputs(self, state: NBodyState, history: History | None = None) -> tuple[PairFeatures, Tensor]:
        raise NotImplementedError

    def network_log_dt(self, pf: PairFeatures, extras: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def safety(self) -> list[float]:
        """The calibrated factor on dt per safety class (see :func:`safety_class`; 1 before calibration)."""
        return [float(v) for v in self.log_safety.exp()]

    def log_dt(self, state: NBodyState, history: History | None = None) -> Tensor:
        """log dt (B,), before the calibrated safety factor."""
        return self.network_log_dt(*self.inputs(state, history))

    def predict_with_class(self, state: NBodyState, history: History | None = None) -> tuple[Tensor, Tensor]:
        """(dt (B,), the safety class of each state (B,)) from one evaluation of the inputs; compiled with
        ``NBTOOLKIT_COMPILE=1`` where no autograd graph is recorded (see :mod:`nbtoolkit.compiled`)."""
        own = self.log_safety.dtype
        if state.dtype != own:  # a state of another precision: its inputs in the network's, its dt in the state's
            if history is not None:
                history = History(history.position.to(own), history.velocity.to(own), history.mask)
            dt, classes = self.predict_with_class(state.to(dtype=own), history)
            return dt.to(state.dtype), classes
        if int(state.body_mask.sum(-1).min()) < 2:
            raise ConfigError(f"{self.name} predictor needs at least two bodies (its timescale is the closest pair's "
                              "timescale)")
        if not torch.is_grad_enabled() and compiled_dt_and_class.available():
            if state.acceleration is None:  # one graph per shape, whether the state holds its accelerations or not
                state = state.replace(acceleration=state_accelerations(state))
            out = compiled_dt_and_class(self, state, history)
            if out is not None:
                return out
        return _dt_and_class(self, state, history)

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        return self.predict_with_class(state, history)[0]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.options.items())
