"""The ``learned`` dt predictor: the pretrained model that ships with nbtoolkit.

The weights in ``plugins/data/learned-general.pt`` are an ``mlp`` predictor trained on the
built-in ``general`` training set (Kepler pairs of any eccentricity and mass ratio, planetary
systems, hierarchical and democratic triples, Plummer clusters of 4 to 64 bodies) with the
``leapfrog`` integrator and the energy gate |dE/E| <= 2e-4, then calibrated so that each
validation system passes the gate on 99.5 % of its unguarded steps. ``docs/models.md`` is its
model card: how it was trained, the command that reproduces it and what it achieves.

Option ``model``: the path of another model file or checkpoint to load instead.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, cast

from nbtoolkit import hookimpl
from nbtoolkit.options import Option, text
from nbtoolkit.predictor import DtPredictor

#: the shipped model file
MODEL_FILE = Path(str(resources.files(__package__).joinpath("data").joinpath("learned-general.pt")))


def learned_predictor(model: Annotated[str | None, Option("a model file or checkpoint to load instead of the "
                                                         "shipped model", text())] = None) -> DtPredictor:
    """The shipped ``general`` model (or the model file / checkpoint ``model``), ready to fly."""
    from nbtoolkit.training.checkpoint import load_predictor

    return load_predictor(Path(model) if model else MODEL_FILE)


cast(Any, learned_predictor).model_file = MODEL_FILE  # what nbtoolkit calibrate --model learned recalibrates


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    register("learned", learned_predictor)
