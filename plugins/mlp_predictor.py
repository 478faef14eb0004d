"""The learned ``mlp`` dt predictor: a small permutation-invariant network, scale-free by design.

dt = f * tau_min, where tau_min = min over pairs sqrt(r_ij^3 / (G (m_i + m_j))) is the
free-fall time of the closest pair (r softened as sqrt(r^2 + eps^2)) and the dimensionless
factor f = init_factor * exp(S tanh(y / S)) comes from the network output y (S =
:data:`LOG_FACTOR_RANGE`, so f stays within e^±S of ``init_factor`` and dt > 0 always).

Every network input is dimensionless and invariant under rotations, translations and
relabelling of the bodies, so rescaling lengths by L and masses by M (velocities by
sqrt(G M / L)) leaves f unchanged and scales dt by sqrt(L^3 / (G M)) exactly.

Inputs, per pair (i, j) with separation r, relative velocity v, M = m_i + m_j, mu = G M:

* log(tau_ij / tau_min) and log(r_ij / r_min): how far this pair is from being the closest
* log(1 + v^2 r / mu): kinetic over potential (2 - r/a for a two-body orbit)
* asinh((r . v) / sqrt(mu r)): radial velocity in units of the local circular speed
* log(1 + e): the pair's osculating eccentricity
* 4 m_i m_j / M^2 and M / M_total: mass ratios

(optionally followed by random Fourier features of these), embedded by a pair network and
pooled by mean and max over pairs (DeepSets). Only the ``max_pairs`` pairs with the shortest
free-fall times enter the network (all of them when there are fewer, or ``max_pairs`` = 0), so
its cost does not grow as N^2 while the pairs that set the timestep are always seen. Global input: asinh(eps / r_min). With
``history_len`` K > 0, each of the K past accepted states adds (mask, log(tau_min,k / tau_min),
log(r_min,k / r_min)); missing entries are zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nbtoolkit import hookimpl
from nbtoolkit.errors import ConfigError
from nbtoolkit.predictor import DtPredictor, History
from nbtoolkit.state import NBodyState

#: the log of the dt factor is confined to log(init_factor) +- this (smoothly, by tanh)
LOG_FACTOR_RANGE = 8.0
#: per-pair input features before Fourier features
PAIR_FEATURES = 7
#: per-history-entry features
HISTORY_FEATURES = 3
#: global features
GLOBAL_FEATURES = 1

_ACTIVATIONS = {"tanh": nn.Tanh, "silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "softplus": nn.Softplus}


def _pairs(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    iu = torch.triu_indices(n, n, offset=1, device=device)
    return iu[0], iu[1]


def closest_pair_scales(mass: Tensor, position: Tensor, G: float, softening: float) -> tuple[Tensor, Tensor]:
    """(tau_min, r_min), each (B,): the smallest pair free-fall time and the smallest (softened) separation."""
    i, j = _pairs(mass.shape[-1], position.device)
    r = ((position[:, j] - position[:, i]).square().sum(-1) + softening**2).sqrt()
    tau = (r.pow(3) / (G * (mass[:, i] + mass[:, j]))).sqrt()
    return tau.amin(-1), r.amin(-1)


def pair_features(state: NBodyState, max_pairs: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Dimensionless pair features (B, P', 7) (see module docstring), tau_min (B,) and r_min (B,).

    P' = min(P, max_pairs) pairs with the shortest free-fall times (all P pairs if max_pairs is 0).
    """
    m, x, v, G = state.mass, state.position, state.velocity, state.G
    i, j = _pairs(state.n_bodies, x.device)
    r_vec = x[:, j] - x[:, i]
    v_vec = v[:, j] - v[:, i]
    msum = m[:, i] + m[:, j]
    mu = G * msum
    r = (r_vec.square().sum(-1) + state.softening**2).sqrt()
    v2 = v_vec.square().sum(-1)
    rv = (r_vec * v_vec).sum(-1)
    tau = (r.pow(3) / mu).sqrt()
    tau_min, r_min = tau.amin(-1), r.amin(-1)
    ecc_vec = ((v2 - mu / r).unsqueeze(-1) * r_vec - rv.unsqueeze(-1) * v_vec) / mu.unsqueeze(-1)
    ecc = ecc_vec.square().sum(-1).sqrt()
    feats = torch.stack([
        (tau / tau_min.unsqueeze(-1)).log(),
        (r / r_min.unsqueeze(-1)).log(),
        torch.log1p(v2 * r / mu),
        torch.asinh(rv / (mu * r).sqrt()),
        torch.log1p(ecc),
        4 * m[:, i] * m[:, j] / msum.square(),
        msum / m.sum(-1, keepdim=True),
    ], dim=-1)
    if 0 < max_pairs < feats.shape[1]:
        closest = torch.topk(tau, max_pairs, dim=-1, largest=False).indices
        feats = torch.gather(feats, 1, closest.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
    return feats, tau_min, r_min


def history_features(state: NBodyState, history: History, tau_min: Tensor, r_min: Tensor) -> Tensor:
    """(B, K * 3): per past state (mask, log(tau_min,k / tau_min), log(r_min,k / r_min)), zero where missing."""
    B, K, N, D = history.position.shape
    mask = history.mask
    keep = mask[..., None, None]
    pos = torch.where(keep, history.position, state.position.unsqueeze(1)).reshape(B * K, N, D)
    mass = state.mass.unsqueeze(1).expand(B, K, N).reshape(B * K, N)
    tau_k, r_k = closest_pair_scales(mass, pos, state.G, state.softening)
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


class MLPDtPredictor(DtPredictor):
    """dt = factor(dimensionless features) x free-fall time of the closest pair (see module docstring).

    Options: ``hidden_width`` and ``hidden_layers`` (of both the pair network and the head),
    ``activation`` (tanh, silu, relu, gelu, softplus), ``fourier_features`` (number of random
    frequencies, 0 = off) and ``fourier_scale`` (their standard deviation), ``history_len`` K,
    ``init_factor`` (dt / tau_min of the untrained network), ``max_pairs`` (closest pairs fed
    to the network, 0 = all), ``seed`` (initial weights and Fourier frequencies; None uses the
    global RNG).
    """

    def __init__(self, hidden_width: int = 64, hidden_layers: int = 2, activation: str = "tanh",
                 fourier_features: int = 0, fourier_scale: float = 1.0, history_len: int = 0,
                 init_factor: float = 0.02, max_pairs: int = 16, seed: int | None = None) -> None:
        super().__init__()
        for name, value, low in (("hidden_width", hidden_width, 1), ("hidden_layers", hidden_layers, 1),
                                 ("fourier_features", fourier_features, 0), ("history_len", history_len, 0),
                                 ("max_pairs", max_pairs, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"mlp predictor: {name} must be an integer >= {low}; got {value!r}")
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"mlp predictor: activation must be one of {', '.join(_ACTIVATIONS)}; got {activation!r}")
        for name, value in (("fourier_scale", fourier_scale), ("init_factor", init_factor)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"mlp predictor: {name} must be finite and > 0; got {value!r}")
        self.history_len = history_len
        self.options = dict(hidden_width=hidden_width, hidden_layers=hidden_layers, activation=activation,
                            fourier_features=fourier_features, fourier_scale=float(fourier_scale),
                            history_len=history_len, init_factor=float(init_factor), max_pairs=max_pairs)
        dtype = torch.float64
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.register_buffer(
            "fourier", torch.randn(PAIR_FEATURES, fourier_features, generator=generator, dtype=dtype) * fourier_scale
        )
        self.register_buffer("log_init_factor", torch.tensor(math.log(init_factor), dtype=dtype))
        act = _ACTIVATIONS[activation]
        pair_in = PAIR_FEATURES + 2 * fourier_features
        head_in = 2 * hidden_width + GLOBAL_FEATURES + HISTORY_FEATURES * history_len
        self.pair_net = _mlp([pair_in] + [hidden_width] * hidden_layers, act, dtype, final_activation=True)
        self.head = _mlp([head_in] + [hidden_width] * hidden_layers + [1], act, dtype, final_activation=False)
        self._init_weights(generator)

    def _init_weights(self, generator: torch.Generator | None) -> None:
        """Xavier-uniform weights, zero biases; the last layer scaled by 0.01 so the untrained factor is ~init_factor."""
        linears = [m for m in self.modules() if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for layer in linears:
                bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator, dtype=layer.weight.dtype) * 2 - 1) * bound)
                layer.bias.zero_()
            linears[-1].weight.mul_(0.01)

    def features(self, state: NBodyState, history: History | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(pair inputs (B, P, F), head extras (B, G + 3K), tau_min (B,))."""
        feats, tau_min, r_min = pair_features(state, self.options["max_pairs"])
        if self.fourier.shape[1]:
            proj = 2 * math.pi * feats @ self.fourier
            feats = torch.cat([feats, proj.sin(), proj.cos()], dim=-1)
        extras = [torch.asinh(state.softening / r_min).unsqueeze(-1)]
        if self.history_len:
            if history is None:
                history = History.empty(state, self.history_len)
            if history.position.shape[1] != self.history_len:
                raise ConfigError(
                    f"mlp predictor reads history_len = {self.history_len} past states; got {history.position.shape[1]}"
                )
            extras.append(history_features(state, history, tau_min, r_min))
        return feats, torch.cat(extras, dim=-1), tau_min

    def log_factor(self, state: NBodyState, history: History | None = None) -> tuple[Tensor, Tensor]:
        """(log(dt / tau_min) (B,), tau_min (B,))."""
        feats, extras, tau_min = self.features(state, history)
        emb = self.pair_net(feats)  # (B, P, W)
        pooled = torch.cat([emb.mean(dim=1), emb.amax(dim=1), extras], dim=-1)
        y = self.head(pooled).squeeze(-1)
        return self.log_init_factor + LOG_FACTOR_RANGE * torch.tanh(y / LOG_FACTOR_RANGE), tau_min

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        if state.n_bodies < 2:
            raise ConfigError("mlp predictor needs at least two bodies (its timescale is the closest pair's free-fall time)")
        log_f, tau_min = self.log_factor(state, history)
        return tau_min * log_f.exp()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.options.items())


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    register("mlp", MLPDtPredictor)
