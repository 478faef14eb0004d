"""The learned ``mlp`` dt predictor: a small permutation-invariant network, scale-free by design.

Every pair of bodies proposes a timestep and the system takes the smallest:

    dt = safety * min over pairs (i, j) of  tau_ij * init_factor * exp(S tanh(g_ij / S))

where tau_ij is the pair's timescale (r softened as sqrt(r^2 + eps^2)): with the ``timescale``
option ``freefall`` its free-fall time sqrt(r^3 / mu), mu = G (m_i + m_j); with ``crossing`` the
time r / sqrt(mu / r + v^2), which is the free-fall time for a pair at rest and the crossing
time r / v for a pair that passes faster than its escape speed (a hyperbolic flyby), g_ij the
network's output for that pair (S = :data:`LOG_FACTOR_RANGE`, so each proposal stays within e^±S
of ``init_factor`` tau_ij and dt > 0 always) and ``safety`` a factor calibrated after training
(:mod:`nbtoolkit.training.calibrate`; 1 until then), one per class of states (:mod:`plugins.safety_classes`): by number of
bodies (:data:`SAFETY_BUCKETS`: 2, 3, 4-7, 8-15, 16-31, 32 or more), by the osculating
eccentricity of the closest pair (:data:`ECCENTRICITY_BUCKETS`: below 0.5, 0.5-0.9, 0.9-0.97,
0.97-0.995, near-radial 0.995-1 and unbound, so a flyby has its own factor, and so does a plunge
more radial than any training orbit) and by whether the closest pair's binding
energy G m_i m_j / r is at least the system's total |E| (:data:`DOMINANT_SHARE`: the pair's
error is then most of the system's) and by whether the rest of the system pulls the closest pair
apart by at least :data:`QUIET_TIDE` of its own attraction (a perturbed pair: an intruder passing,
a democratic triple; below it a quiet pair: an inner binary of a hierarchical triple, a star and
its planet), so that the margin a cluster, a near-radial orbit, a triple whose outer orbit carries
half the energy or a binary in the middle of an encounter needs is not imposed on a near-circular
or a quiet binary.
A pair's output g_ij sees the pair's own features and the pooled features of every pair, so a
pair that is irrelevant to the system's energy (a distant planet, a wide pair in a cluster) can
learn to propose a long step, and the proposals of N bodies work for any N.

Every network input is dimensionless and invariant under rotations, translations and
relabelling of the bodies, so rescaling lengths by L and masses by M (velocities by
sqrt(G M / L)) leaves the factors unchanged and scales dt by sqrt(L^3 / (G M)) exactly.

Inputs, per pair (i, j) with separation r, relative velocity v, M = m_i + m_j, mu = G M:

* log(tau_ij / tau_min) and log(r_ij / r_min): how far this pair is from being the closest
* log(1 + v^2 r / mu): kinetic over potential (2 - r/a for a two-body orbit)
* asinh((r . v) / sqrt(mu r)): radial velocity in units of the local circular speed
* log(1 + e): the pair's osculating eccentricity
* M / M_total: the pair's share of the mass
* log(1 + G m_i m_j / (r |E|)): the pair's binding energy against the system's total |E| (capped
  at :data:`MAX_ENERGY_SHARE`),
  which sets how much an error in this pair weighs in the relative energy error
* log(1 + |a_ij - a_ij,2body| r^2 / mu): the tidal perturbation of the pair by all other
  bodies, relative to the pair's own attraction (0 for an isolated pair)

(optionally followed by random Fourier features of these), embedded by a pair network and
pooled by mean and max over pairs (DeepSets). Only the ``max_pairs`` pairs with the shortest
timescales enter the network (all of them when there are fewer, or ``max_pairs`` = 0), so
its cost does not grow as N^2 while the pairs that set the timestep are always seen. Global
inputs: asinh(eps / r_min) and log N. With ``history_len`` K > 0, each of the K past accepted
states adds (mask, log(tau_min,k / tau_min), log(r_min,k / r_min)); missing entries are zero.

Padding bodies (mass 0, see :mod:`nbtoolkit.state`) are masked out of every pair, minimum and
pooling, so a system predicts the same dt alone and padded inside a mixed-N batch.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, NamedTuple

import torch
from torch import Tensor, nn

from nbtoolkit import hookimpl
from nbtoolkit.errors import ConfigError
from nbtoolkit.options import Option, boolean, integer, number, one_of
from nbtoolkit.physics import state_accelerations, state_energy
from nbtoolkit.predictor import History
from nbtoolkit.state import NBodyState
from plugins.safety_classes import LEGACY_ECCENTRICITY_CLASSES, SAFETY_BUCKETS, ClassCalibratedDt, safety_class

#: the log of each pair's dt factor is confined to log(init_factor) +- this (smoothly, by tanh)
LOG_FACTOR_RANGE = 8.0
#: per-pair input features before Fourier features
PAIR_FEATURES = 8
#: the index of the pair input that is odd under time reversal (the radial velocity; every other input is even)
RADIAL_VELOCITY = 3
#: per-history-entry features
HISTORY_FEATURES = 3
#: global features
GLOBAL_FEATURES = 2
#: G m_i m_j / (r |E|) is capped here, so a system whose total energy is ~0 still has finite inputs
MAX_ENERGY_SHARE = 1e8
#: the pair timescales the ``timescale`` option offers (see :func:`pair_scales`)
TIMESCALES = ("freefall", "crossing")
_ACTIVATIONS = {"tanh": nn.Tanh, "silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "softplus": nn.Softplus}


#: (i, j) of :func:`_pairs` by (n, device)
_PAIRS: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}


def _pairs(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(i, j), each (P,): the pairs i < j of n bodies (kept between eager calls: they are the same at every
    call; a compiled graph makes its own, so that it does not depend on what was kept)."""
    if torch.compiler.is_compiling():
        iu = torch.triu_indices(n, n, offset=1, device=device)
        return iu[0], iu[1]
    key = (n, str(device))
    if key not in _PAIRS:
        iu = torch.triu_indices(n, n, offset=1, device=device)
        _PAIRS[key] = iu[0], iu[1]
    return _PAIRS[key]


class _PairTerms(NamedTuple):
    """What :func:`pair_scales` computes for every pair i < j, each (B, P) or (B, P, D)."""

    real: Tensor  #: both bodies real
    mi: Tensor  #: m_i
    mj: Tensor  #: m_j
    dx: Tensor  #: x_j - x_i (B, P, D)
    r: Tensor  #: softened separation
    msum: Tensor  #: m_i + m_j (1 for pairs with a padding body)
    dv: Tensor | None  #: v_j - v_i (B, P, D), given velocities
    v2: Tensor | None  #: |v_j - v_i|^2, given velocities
    tau: Tensor  #: the pair's timescale (inf for pairs with a padding body)


def _pair_terms(mass: Tensor, position: Tensor, G: float, softening: float, velocity: Tensor | None,
                crossing: bool) -> _PairTerms:
    """:class:`_PairTerms` of every pair; tau is the crossing timescale if ``crossing`` (which needs
    ``velocity``), else the free-fall time. Bodies are picked with ``index_select`` (the same values as
    indexing, at a third to a half of its cost)."""
    i, j = _pairs(mass.shape[-1], position.device)
    mi, mj = mass.index_select(1, i), mass.index_select(1, j)
    real = (mi > 0) & (mj > 0)
    dx = position.index_select(1, j) - position.index_select(1, i)
    r = (dx.square().sum(-1) + softening**2).sqrt()
    msum = torch.where(real, mi + mj, torch.ones_like(r))
    dv = v2 = None
    if velocity is not None:
        dv = velocity.index_select(1, j) - velocity.index_select(1, i)
        v2 = dv.square().sum(-1)
    if crossing and v2 is not None:
        scale = r / (G * msum / r + v2).sqrt()
    else:
        scale = (r.pow(3) / (G * msum)).sqrt()
    tau = torch.where(real, scale, torch.full_like(r, math.inf))
    return _PairTerms(real, mi, mj, dx, r, msum, dv, v2, tau)


def pair_scales(mass: Tensor, position: Tensor, G: float, softening: float,
                velocity: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(real, r, tau), each (B, P) over the pairs i < j: whether both bodies are real (padding bodies
    have mass 0), the (softened) separation and the pair's timescale (inf for pairs with a padding
    body): the free-fall time sqrt(r^3 / mu) without ``velocity`` (B, N, D), with it
    r / sqrt(mu / r + v^2) (see the ``timescale`` option)."""
    terms = _pair_terms(mass, position, G, softening, velocity, crossing=velocity is not None)
    return terms.real, terms.r, terms.tau


def closest_pair_scales(mass: Tensor, position: Tensor, G: float, softening: float,
                        velocity: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(tau_min, r_min), each (B,): the smallest pair timescale (see :func:`pair_scales`) and the
    smallest (softened) separation among pairs of real bodies (padding bodies, mass 0, are ignored)."""
    real, r, tau = pair_scales(mass, position, G, softening, velocity)
    return tau.amin(-1), torch.where(real, r, torch.full_like(r, math.inf)).amin(-1)


class PairFeatures(NamedTuple):
    """Pair inputs of the network for the P' selected pairs of each system.

    features (B, P', 8), log_tau (B, P') each pair's log timescale tau, mask (B, P') True for
    pairs of real bodies, tau_min and r_min (B,) over all real pairs, closest_eccentricity,
    closest_energy_share and closest_tide (B,) the osculating eccentricity, G m_i m_j / (r |E|) and
    tidal perturbation |a_ij - a_ij,2body| r^2 / mu of the pair with the shortest timescale.
    """

    features: Tensor
    log_tau: Tensor
    mask: Tensor
    tau_min: Tensor
    r_min: Tensor
    closest_eccentricity: Tensor
    closest_energy_share: Tensor
    closest_tide: Tensor


def pair_features(state: NBodyState, max_pairs: int = 0, timescale: str = "freefall") -> PairFeatures:
    """Dimensionless pair features (see module docstring) of the ``max_pairs`` pairs with the
    shortest timescales (all P pairs if max_pairs is 0; ``timescale`` is ``freefall`` or
    ``crossing``, see :func:`pair_scales`). The pairs are chosen from their separations first and
    only the chosen ones get the other features, so a cluster of N bodies costs O(N^2) only in its
    separations; what the timescales needed (separations, mass sums, relative positions) is taken for
    the chosen pairs, not computed again, and relative velocities are computed for the chosen pairs
    alone (for every pair only where the ``crossing`` timescale needs them)."""
    m, x, v, G = state.mass, state.position, state.velocity, state.G
    i, j = _pairs(state.n_bodies, x.device)
    crossing = timescale == "crossing"  # only the crossing timescale needs every pair's relative velocity
    terms = _pair_terms(m, x, G, state.softening, v if crossing else None, crossing=crossing)
    real, r, msum, tau, r_vec = terms.real, terms.r, terms.msum, terms.tau, terms.dx
    tau_min, r_min = tau.amin(-1), torch.where(real, r, torch.full_like(r, math.inf)).amin(-1)
    acc = state_accelerations(state)
    D = x.shape[-1]
    if 0 < max_pairs < tau.shape[1]:
        chosen = torch.topk(tau, max_pairs, dim=-1, largest=False).indices  # (B, P')
        i, j = i[chosen], j[chosen]
        tau, real, r, msum = (torch.gather(t, 1, chosen) for t in (tau, real, r, msum))
        r_vec = torch.gather(r_vec, 1, chosen.unsqueeze(-1).expand(-1, -1, D))
        mi, mj = torch.gather(m, 1, i), torch.gather(m, 1, j)
        rows_i, rows_j = i.unsqueeze(-1).expand(-1, -1, D), j.unsqueeze(-1).expand(-1, -1, D)
        v_vec = torch.gather(v, 1, rows_j) - torch.gather(v, 1, rows_i)  # the chosen pairs' alone
        v2 = v_vec.square().sum(-1)
        acc_ij = torch.gather(acc, 1, rows_j) - torch.gather(acc, 1, rows_i)
    else:
        mi, mj = terms.mi, terms.mj
        if terms.dv is not None and terms.v2 is not None:  # the crossing timescale computed them already
            v_vec, v2 = terms.dv, terms.v2
        else:
            v_vec = v.index_select(1, j) - v.index_select(1, i)
            v2 = v_vec.square().sum(-1)
        acc_ij = acc.index_select(1, j) - acc.index_select(1, i)
    one = torch.ones_like(tau)
    mu = G * msum
    rv = (r_vec * v_vec).sum(-1)
    ecc_vec = ((v2 - mu / r).unsqueeze(-1) * r_vec - rv.unsqueeze(-1) * v_vec) / mu.unsqueeze(-1)
    ecc = ecc_vec.square().sum(-1).sqrt()
    energy = state_energy(state).abs().unsqueeze(-1)
    share = (G * mi * mj / (r * energy)).clamp(max=MAX_ENERGY_SHARE)  # bounded where E is ~0
    tidal = acc_ij + (mu / r.pow(3)).unsqueeze(-1) * r_vec
    tide = tidal.square().sum(-1).sqrt() * r.square() / mu
    safe_tau = torch.where(real, tau, one)
    feats = torch.stack([
        (safe_tau / tau_min.unsqueeze(-1)).log(),
        (r / r_min.unsqueeze(-1)).log(),
        torch.log1p(v2 * r / mu),
        torch.asinh(rv / (mu * r).sqrt()),
        torch.log1p(ecc),
        msum / m.sum(-1, keepdim=True),
        torch.log1p(share),
        torch.log1p(tide),
    ], dim=-1)
    feats = torch.where(real.unsqueeze(-1), feats, torch.zeros_like(feats))
    closest = torch.gather(torch.stack([ecc, share, tide]), 2, tau.argmin(-1).view(1, -1, 1).expand(3, -1, 1))
    closest_ecc, closest_share, closest_tide = closest.squeeze(-1).unbind(0)
    return PairFeatures(feats, safe_tau.log(), real, tau_min, r_min, closest_ecc, closest_share, closest_tide)


def history_features(state: NBodyState, history: History, tau_min: Tensor, r_min: Tensor,
                     timescale: str = "freefall") -> Tensor:
    """(B, K * 3): per past state (mask, log(tau_min,k / tau_min), log(r_min,k / r_min)), zero where
    missing; tau is the ``timescale`` of :func:`pair_features`."""
    B, K, N, D = history.position.shape
    mask = history.mask
    keep = mask[..., None, None]
    pos = torch.where(keep, history.position, state.position.unsqueeze(1)).reshape(B * K, N, D)
    vel = torch.where(keep, history.velocity, state.velocity.unsqueeze(1)).reshape(B * K, N, D)
    mass = state.mass.unsqueeze(1).expand(B, K, N).reshape(B * K, N)
    tau_k, r_k = closest_pair_scales(mass, pos, state.G, state.softening, vel if timescale == "crossing" else None)
    m = mask.to(state.dtype)
    feats = torch.stack([
        m,
        m * (tau_k.reshape(B, K) / tau_min.unsqueeze(-1)).log(),
        m * (r_k.reshape(B, K) / r_min.unsqueeze(-1)).log(),
    ], dim=-1)
    return feats.reshape(B, K * HISTORY_FEATURES)


def _mlp(sizes: list[int], activation: type[nn.Module], dtype: torch.dtype, final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, dtype=dtype))
        if final_activation or k < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MLPDtPredictor(ClassCalibratedDt):
    """dt = safety x min over pairs of a learned factor x the pair's timescale (see module docstring).

    The options are declared on the parameters below (type, default, help and check), which is
    what the registry checks and what ``nbtoolkit train --help`` and ``docs/settings.md`` list;
    ``timescale`` is described at :func:`pair_scales`. ``seed`` (initial weights and Fourier
    frequencies; None uses the global RNG) is set by the training loop from its own seed. The
    calibrated ``safety`` factor is a buffer, saved with the weights.
    """

    fourier: Tensor  #: (PAIR_FEATURES, F) random frequencies of the Fourier features (a buffer)
    log_init_factor: Tensor  #: () log of dt / tau of the untrained network (a buffer)

    def __init__(
        self,
        hidden_width: Annotated[int, Option("width of the hidden layers of the pair network and the head",
                                            integer(1))] = 64,
        hidden_layers: Annotated[int, Option("number of hidden layers of each", integer(1))] = 2,
        activation: Annotated[str, Option("activation of the hidden layers", one_of(*_ACTIVATIONS))] = "tanh",
        fourier_features: Annotated[int, Option("random Fourier features of the pair inputs (0 = off)",
                                                integer(0))] = 0,
        fourier_scale: Annotated[float, Option("standard deviation of the Fourier frequencies", number(0.0))] = 1.0,
        history_len: Annotated[int, Option("K, the number of past accepted states the network reads",
                                           integer(0, 1024))] = 0,
        init_factor: Annotated[float, Option("dt / tau of the untrained network", number(0.0))] = 0.02,
        max_pairs: Annotated[int, Option("closest pairs fed to the network (0 = all)", integer(0))] = 16,
        timescale: Annotated[str, Option("the pair timescale tau that the learned factors multiply",
                                         one_of(*TIMESCALES))] = "freefall",
        time_symmetric: Annotated[bool, Option("take the smaller of the dt of the state and the dt of the state with "
                                               "its velocities reversed: a dt even under time reversal, as the "
                                               "symmetric wrapper needs for a reversible step (alone, a step's dt "
                                               "still comes from its start, and the energy still drifts)",
                                               boolean())] = False,
        seed: Annotated[int | None, Option("seed of the initial weights and Fourier frequencies (unset: torch's "
                                           "global generator; training sets it from its own seed)", integer())] = None,
    ) -> None:
        super().__init__()
        self.history_len = history_len
        self.options = dict(hidden_width=hidden_width, hidden_layers=hidden_layers, activation=activation,
                            fourier_features=fourier_features, fourier_scale=float(fourier_scale),
                            history_len=history_len, init_factor=float(init_factor), max_pairs=max_pairs,
                            timescale=timescale)
        self.set_time_symmetric(time_symmetric)
        dtype = torch.float64
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.register_buffer(
            "fourier", torch.randn(PAIR_FEATURES, fourier_features, generator=generator, dtype=dtype) * fourier_scale
        )
        self.register_buffer("log_init_factor", torch.tensor(math.log(init_factor), dtype=dtype))
        act = _ACTIVATIONS[activation]
        pair_in = PAIR_FEATURES + 2 * fourier_features
        context = 2 * hidden_width + GLOBAL_FEATURES + HISTORY_FEATURES * history_len
        self.pair_net = _mlp([pair_in] + [hidden_width] * hidden_layers, act, dtype, final_activation=True)
        self.head = _mlp([hidden_width + context] + [hidden_width] * hidden_layers + [1], act, dtype,
                         final_activation=False)
        self._init_weights(generator)

    def set_time_symmetric(self, on: bool) -> None:
        """Switch the ``time_symmetric`` option of this network on or off (it changes no weight: a trained network
        can fly either way)."""
        if on and self.history_len:
            raise ConfigError("mlp predictor: option 'time_symmetric' cannot be combined with history_len > 0 (a "
                              "history has no time-reversed counterpart)")
        self.options["time_symmetric"] = bool(on)
        self.time_even = bool(on)

    def _init_weights(self, generator: torch.Generator | None) -> None:
        """Xavier-uniform weights, zero biases; the last layer scaled by 0.01 so the untrained factor is ~init_factor."""
        linears = [m for m in self.modules() if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for layer in linears:
                bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
                noise = torch.rand(layer.weight.shape, generator=generator, dtype=layer.weight.dtype)
                layer.weight.copy_((noise * 2 - 1) * bound)
                layer.bias.zero_()
            linears[-1].weight.mul_(0.01)

    def safety_index(self, state: NBodyState) -> Tensor:
        """(B,) which safety factor applies to each state (see :func:`safety_class`)."""
        pf = pair_features(state, self.options["max_pairs"], self.options["timescale"])
        return safety_class(state.body_mask.sum(-1), pf.closest_eccentricity, pf.closest_energy_share, pf.closest_tide)

    def inputs(self, state: NBodyState, history: History | None = None) -> tuple[PairFeatures, Tensor]:
        """The network's inputs: (pair features (before Fourier features), global extras (B, 2 + 3K)).

        They depend on the options alone, not on the weights, so predictors with the same options
        (the members of an ``mlp-ensemble``) can share one evaluation."""
        pf = pair_features(state, self.options["max_pairs"], self.options["timescale"])
        n_real = state.body_mask.sum(-1).to(state.dtype)
        extras = [torch.asinh(state.softening / pf.r_min).unsqueeze(-1), n_real.log().unsqueeze(-1)]
        if self.history_len:
            if history is None:
                history = History.empty(state, self.history_len)
            if history.position.shape[1] != self.history_len:
                raise ConfigError(
                    f"mlp predictor reads history_len = {self.history_len} past states; got {history.position.shape[1]}"
                )
            extras.append(history_features(state, history, pf.tau_min, pf.r_min, self.options["timescale"]))
        return pf, torch.cat(extras, dim=-1)

    def network_log_dt(self, pf: PairFeatures, extras: Tensor) -> Tensor:
        """log dt (B,) before the calibrated safety factor, from the :meth:`inputs` of a state.

        With ``time_symmetric``, the smaller of the log dt of the state and of the state with its velocities
        reversed, evaluated as one batch of 2B: reversing every velocity flips the sign of each pair's radial
        velocity (input :data:`RADIAL_VELOCITY`) and leaves every other input as it is."""
        if not self.options["time_symmetric"]:
            return self._network_log_dt(pf.features, pf.mask, pf.log_tau, extras)
        reversed_ = pf.features.clone()
        reversed_[..., RADIAL_VELOCITY] = -reversed_[..., RADIAL_VELOCITY]
        both = self._network_log_dt(torch.cat([pf.features, reversed_]), torch.cat([pf.mask, pf.mask]),
                                    torch.cat([pf.log_tau, pf.log_tau]), torch.cat([extras, extras]))
        forward, backward = both.chunk(2)
        return torch.minimum(forward, backward)

    def _network_log_dt(self, feats: Tensor, pair_mask: Tensor, log_tau: Tensor, extras: Tensor) -> Tensor:
        if self.fourier.shape[1]:
            proj = 2 * math.pi * feats @ self.fourier
            feats = torch.cat([feats, proj.sin(), proj.cos()], dim=-1)
            feats = torch.where(pair_mask.unsqueeze(-1), feats, torch.zeros_like(feats))
        mask = pair_mask.unsqueeze(-1)
        emb = self.pair_net(feats)  # (B, P, W)
        count = pair_mask.sum(-1, keepdim=True).clamp_min(1).to(emb.dtype)
        mean = torch.where(mask, emb, torch.zeros_like(emb)).sum(1) / count
        peak = torch.where(mask, emb, torch.full_like(emb, -math.inf)).amax(1)
        context = torch.cat([mean, peak, extras], dim=-1)
        y = self.head(torch.cat([emb, context.unsqueeze(1).expand(-1, emb.shape[1], -1)], dim=-1)).squeeze(-1)
        proposals = log_tau + self.log_init_factor + LOG_FACTOR_RANGE * torch.tanh(y / LOG_FACTOR_RANGE)
        return torch.where(pair_mask, proposals, torch.full_like(proposals, math.inf)).amin(-1)

    def upgrade_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Older files hold fewer factors, and such a model predicts exactly as it did: files from before
        the unbound eccentricity class hold 48 (4 eccentricity classes x dominant or not per body count),
        files from before the near-radial and the perturbed classes 60 (5 x 2); each old factor serves
        the classes it covered (:data:`LEGACY_ECCENTRICITY_CLASSES`), quiet and perturbed alike."""
        stored = state_dict.get("log_safety")
        buckets = len(SAFETY_BUCKETS) + 1
        for eccentricity_classes, source in LEGACY_ECCENTRICITY_CLASSES.items():
            if isinstance(stored, Tensor) and stored.shape == (buckets * eccentricity_classes * 2,):
                old = stored.reshape(buckets, eccentricity_classes, 2, 1)[:, list(source)]  # (buckets, ecc, dom, 1)
                state_dict["log_safety"] = old.expand(-1, -1, -1, 2).reshape(-1)
        return state_dict


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    register("mlp", MLPDtPredictor)
