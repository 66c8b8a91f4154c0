"""The estimators, one module per method over the `Method` contract (``base.py``), and the
one map ``METHODS`` (name -> class) the ``estimate`` stage runs them from.

| method               | module            | reads (``source``)                      |
|----------------------|-------------------|-----------------------------------------|
| downsampling         | downsampling.py   | ``estimate.plan``: margins              |
| downsampling_correct | downsampling.py   | ``estimate.plan``: 0/1 correctness      |
| memorization         | memorization.py   | ``estimate.plan``; self scores only     |
| banzhaf              | banzhaf.py        | ``estimate.plan`` (alpha ½)             |
| shapley              | shapley.py        | the first ``alpha_grid`` plan           |
| beta_shapley         | shapley.py        | the same; Beta(a, b) = ``estimate.beta`` |
| tmc_shapley          | tmc.py            | the first ``tmc`` plan                  |
| loo                  | loo.py            | the first ``paired_loo`` or ``loo`` plan |
| knn_shapley          | knn_shapley.py    | input features (no models)              |
| influence            | influence.py      | last checkpoint; shared Hessian         |
| influence_pert       | influence_pert.py | last checkpoint; shared Hessian         |
| ekfac                | ekfac.py          | last checkpoint; EK-FAC fit per model   |
| tracin               | tracin.py         | every checkpoint                        |
| representer          | representer.py    | last checkpoint                         |
| trak                 | trak.py           | last checkpoint; reweighting            |
| metagradient         | metagradient.py   | the replayed run (on request)           |
| hydra                | hydra.py          | the replayed run (on request)           |

The maths lives in ``datamodels.estimators`` (retraining) and ``datamodels.gradients``;
a method module only declares what it reads and calls them. Adding a method: a module with
a `RetrainingMethod` or `GradientMethod` subclass and one line below. The LASSO datamodels
are not here: the ``fit`` stage makes them.
"""

from __future__ import annotations

from datamodels.errors import EstimateError
from datamodels.methods.banzhaf import Banzhaf
from datamodels.methods.base import (
    PER_MODEL,
    Block,
    Features,
    GradientMethod,
    Method,
    PlanTable,
    RetrainingMethod,
)
from datamodels.methods.downsampling import Downsampling, DownsamplingCorrect
from datamodels.methods.ekfac import Ekfac
from datamodels.methods.hydra import Hydra
from datamodels.methods.influence import Influence
from datamodels.methods.influence_pert import InfluencePert
from datamodels.methods.knn_shapley import KnnShapley
from datamodels.methods.loo import Loo
from datamodels.methods.memorization import Memorization
from datamodels.methods.metagradient import Metagradient
from datamodels.methods.representer import Representer
from datamodels.methods.shapley import BetaShapley, Shapley
from datamodels.methods.tmc import TmcShapley
from datamodels.methods.tracin import TracIn
from datamodels.methods.trak import Trak

METHODS: dict[str, type[Method]] = {
    "downsampling": Downsampling,
    "downsampling_correct": DownsamplingCorrect,
    "memorization": Memorization,
    "banzhaf": Banzhaf,
    "shapley": Shapley,
    "beta_shapley": BetaShapley,
    "tmc_shapley": TmcShapley,
    "loo": Loo,
    "knn_shapley": KnnShapley,
    "influence": Influence,
    "influence_pert": InfluencePert,
    "ekfac": Ekfac,
    "tracin": TracIn,
    "representer": Representer,
    "trak": Trak,
    "metagradient": Metagradient,
    "hydra": Hydra,
}


def method(name: str, methods: dict[str, type[Method]] | None = None) -> type[Method]:
    """The method class named ``name`` in ``methods`` (default ``METHODS``); an unknown name
    is one line naming it and the known ones."""
    known = METHODS if methods is None else methods
    if name not in known:
        raise EstimateError(f"unknown method {name!r}; choose from: {', '.join(known)}")
    return known[name]


def names(per_model: bool | None = None) -> tuple[str, ...]:
    """The known method names in ``METHODS`` order; ``per_model`` True / False: only the
    gradient (checkpoints or replay) / the retraining and feature methods."""
    return tuple(
        n for n, cls in METHODS.items()
        if per_model is None or (cls.source in PER_MODEL) == per_model
    )


__all__ = [
    "METHODS", "Block", "Features", "GradientMethod", "Method", "PlanTable",
    "RetrainingMethod", "method", "names",
]
