"""The ``learned`` dt predictor: the pretrained model that ships with nbtoolkit.

The weights in ``plugins/data/learned-general.pt`` are an ``mlp`` predictor trained on the
built-in ``general`` training set (Kepler pairs of any eccentricity and mass ratio, planetary
systems, hierarchical and democratic triples, Plummer clusters of 4 to 64 bodies) with the
``leapfrog`` integrator and the energy gate |dE/E| <= 2e-4, then calibrated so that each
validation system passes the gate on 99.5 % of its unguarded steps. ``docs/models.md`` is its
model card: how it was trained, the command that reproduces it and what it achieves.

The network's dt is raised by :data:`ERROR_CAP_BOOST` and capped at :data:`ERROR_CAP` times the dt at which the
run's integrator estimates a step's energy error to reach the gate (:mod:`plugins.error_cap`: for ``leapfrog``,
from its modified Hamiltonian), and flies inside the ``feedback`` controller (:mod:`plugins.feedback`), steered
to the gate it was trained (or recalibrated) for: the errors of the run's own steps raise its dt where the
calibrated margin is not needed (a periodic orbit) and lower it where an unseen system sits near the gate. The
controller's aim starts at half that gate and its ceiling is 0.85 of it.

Options: ``model``, the path of another model file or checkpoint to load instead; ``feedback``,
false for the calibrated network alone (what calibration, fitting and time-symmetric runs use);
``error_cap``, true or false to fly with or without the error cap (unset: with it inside the controller, without
it for the network alone or a time-symmetric network, whose dt the cap would make depend on the direction of time);
``further_raise``, false to keep the cap's raise at 1.27 (see ``docs/models.md``, "The further raise");
``time_symmetric``, true to fly the network even under time reversal (see ``docs/models.md``, "Long runs
of clusters with a hard binary").
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, cast

from nbtoolkit import hookimpl
from nbtoolkit.errors import ConfigError
from nbtoolkit.options import Option, boolean, text
from nbtoolkit.predictor import DtPredictor
from plugins.error_cap import ErrorCappedDt
from plugins.feedback import FeedbackDt

#: the shipped model file
MODEL_FILE = Path(str(resources.files(__package__).joinpath("data").joinpath("learned-general.pt")))
#: the feedback controller's target and ceiling, as fractions of the gate threshold the model was trained (or
#: recalibrated) for
FEEDBACK_TARGET, FEEDBACK_CEILING = 0.5, 0.85
#: the gate threshold of a model file that records none
DEFAULT_GATE = 2e-4
#: the error cap's raise of the calibrated network's dt, and its cap as a fraction of the dt at which the
#: integrator's estimate of a step's error reaches the gate (plugins.error_cap): of the pairs measured on the short
#: runs of 744 unseen draws, the one that left none short of 99 % at any length with the most time reached
#: (docs/models.md, "The error cap, measured")
ERROR_CAP_BOOST, ERROR_CAP = 1.27, 0.85
#: the further raise: where the estimate's coefficient over 2 and 4 times the raised step stays within a factor of
#: 0.7 of its value over the raised step (no turning point near), dt may rise up to 4 times the network's, to 0.7
#: times the dt at which the estimate reaches the gate; where the raised step's estimated error is at most 0.02 of
#: the gate, a coefficient that grows holds too, forward and backward in time (docs/models.md, "The further raise")
ERROR_CAP_DOUBLINGS, ERROR_CAP_TOLERANCE, ERROR_CAP_MAX_BOOST, ERROR_CAP_RAISE = 2, 0.7, 4.0, 0.7
ERROR_CAP_QUIET = 0.02


def learned_predictor(
    model: Annotated[str | None, Option("a model file or checkpoint to load instead of the shipped model",
                                        text())] = None,
    feedback: Annotated[bool, Option("fly the network inside the feedback controller, steered to the gate it was "
                                     "trained for (false: the calibrated network alone)", boolean())] = True,
    time_symmetric: Annotated[bool | None, Option("fly the network time-symmetric (the smaller of its dt forward and "
                                                  "with every velocity reversed) or not, whatever the model file "
                                                  "says (unset: as the model file says)", boolean())] = None,
    error_cap: Annotated[bool | None, Option("raise the network's dt and cap it by the integrator's estimate of each "
                                             "step's error (unset: inside the controller, unless the network is "
                                             "time-symmetric)", boolean())] = None,
    further_raise: Annotated[bool, Option("with the error cap, raise the dt further where the estimate holds over "
                                          "steps two and four times as long (false: the cap alone, whose runs "
                                          "drift less where hard binaries form)", boolean())] = True,
) -> DtPredictor:
    """The shipped ``general`` model (or the model file / checkpoint ``model``), ready to fly."""
    from nbtoolkit.training.checkpoint import load_trained

    network, data = load_trained(Path(model) if model else MODEL_FILE)
    if time_symmetric is not None:
        switch = getattr(network, "set_time_symmetric", None)
        if not callable(switch):
            raise ConfigError(f"learned: option 'time_symmetric' needs an mlp network or ensemble; the model holds "
                              f"{type(network).__name__}")
        switch(time_symmetric)
    calibration = data.get("calibration") or {}  # a recalibrated model records the gate it was calibrated for
    gate = float(calibration.get("threshold", data.get("config", {}).get("energy_threshold", DEFAULT_GATE)))
    if error_cap is None:
        error_cap = feedback and not getattr(network, "options", {}).get("time_symmetric", False)
    predictor: DtPredictor = network
    if error_cap:
        predictor = ErrorCappedDt(network, boost=ERROR_CAP_BOOST, cap=ERROR_CAP, gate=gate,
                                  doublings=ERROR_CAP_DOUBLINGS if further_raise else 0, tolerance=ERROR_CAP_TOLERANCE,
                                  max_boost=ERROR_CAP_MAX_BOOST, raise_cap=ERROR_CAP_RAISE, quiet=ERROR_CAP_QUIET,
                                  vouch=FEEDBACK_CEILING if feedback else None)
    if not feedback:
        return predictor
    return FeedbackDt(predictor, target=FEEDBACK_TARGET * gate, ceiling=FEEDBACK_CEILING * gate,
                      base_name="learned network" + (" (error cap)" if error_cap else ""))


def model_options(model: str) -> dict[str, str]:
    """The options of ``learned`` for a ``--model`` argument: ``"learned"`` (the shipped model, no option) or the
    path of a model file or checkpoint."""
    return {} if model == "learned" else {"model": model}


cast(Any, learned_predictor).model_file = MODEL_FILE  # what nbtoolkit calibrate --model learned recalibrates


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    register("learned", learned_predictor)
