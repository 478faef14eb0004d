"""The ``mlp-ensemble`` dt predictor: several ``mlp`` networks of the same options, averaged.

Networks trained with the same recipe and different seeds (other training draws, other initial
weights) agree on the systems of their training set and disagree, each in its own way, on systems
unlike it: one seed's model is bold on an outer solar system, another's on the Sun, Earth and
Moon. The ensemble takes the geometric mean of its members' timesteps,

    dt = safety * exp( mean_k log dt_k - spread * std_k log dt_k ),

with dt_k each member's timestep *before* its own safety factors (std over the K members, without
Bessel's correction), ``spread`` an option (0: the geometric mean) and ``safety`` its own factors,
one per safety class of :func:`plugins.safety_classes.safety_class`, calibrated for the ensemble
as a whole (``nbtoolkit calibrate --model a.pt --model b.pt ... --out ensemble.pt``). Averaging
removes the part of each member's error that is its own, so the calibrated factors have less
noise to cover. Where the members disagree, the state is unlike those they were trained on, and a
``spread`` above 0 takes a shorter step there, in proportion to the disagreement.

The members share their options, so the network inputs (the pair features, the costly part) are
computed once per state and only the K small networks run per member. Options: ``size`` (K),
``spread`` and any option of ``mlp``, which every member takes. Each member keeps a ``log_safety`` buffer of its
own (an ``mlp`` predictor has one); the ensemble ignores it.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor, nn

from nbtoolkit import hookimpl
from nbtoolkit.errors import ConfigError
from nbtoolkit.options import Option, check_arguments, declared_options, integer, number
from nbtoolkit.predictor import History
from nbtoolkit.state import NBodyState
from plugins.mlp_predictor import MLPDtPredictor, PairFeatures
from plugins.safety_classes import ClassCalibratedDt


class MLPEnsembleDt(ClassCalibratedDt):
    """dt = safety x geometric mean of K ``mlp`` members' timesteps (see the module docstring)."""

    name = "mlp-ensemble"

    def __init__(self, size: Annotated[int, Option("number of member networks; every other option is an option of "
                                                   "mlp, which each member takes", integer(1, 64))] = 4,
                 spread: Annotated[float, Option("how much shorter a step the members' disagreement makes: dt is the "
                                                 "geometric mean over exp(spread x the std of their log dt)",
                                                 number(0.0, strict=False))] = 0.0,
                 **options: Any) -> None:
        super().__init__()
        checked = check_arguments(MLPEnsembleDt, size=size, spread=spread)
        size, self.spread = checked["size"], float(checked["spread"])
        known = [setting.name for setting in declared_options(MLPDtPredictor)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"mlp-ensemble: unknown option(s) {', '.join(unknown)}; it takes 'size', 'spread' and "
                              f"the options of mlp ({', '.join(known)})")
        options = check_arguments(MLPDtPredictor, **options)
        seed = options.pop("seed", None)
        self.members = nn.ModuleList(
            MLPDtPredictor(**options, seed=None if seed is None else int(seed) + k) for k in range(size))
        self.history_len = self.lead.history_len
        self.time_even = self.lead.time_even
        self.options = {"size": size, "spread": self.spread, **self.lead.options}

    def set_time_symmetric(self, on: bool) -> None:
        """Switch every member's ``time_symmetric`` option (:meth:`MLPDtPredictor.set_time_symmetric`)."""
        for member in self.members:
            member.set_time_symmetric(on)  # type: ignore[operator]
        self.options["time_symmetric"] = bool(on)
        self.time_even = bool(on)

    @property
    def lead(self) -> MLPDtPredictor:
        """The first member, whose inputs all members share."""
        return self.members[0]  # type: ignore[return-value]

    def inputs(self, state: NBodyState, history: History | None = None) -> tuple[PairFeatures, Tensor]:
        """The members' shared inputs (those of the first member)."""
        return self.lead.inputs(state, history)

    def network_log_dt(self, pf: PairFeatures, extras: Tensor) -> Tensor:
        """log dt (B,): the mean of the members' log dt less ``spread`` times their std, before the safety factor."""
        logs = torch.stack([member.network_log_dt(pf, extras) for member in self.members])  # type: ignore[operator]
        combined = logs.mean(0)
        return combined - self.spread * logs.std(0, correction=0) if self.spread else combined


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    register("mlp-ensemble", MLPEnsembleDt)
