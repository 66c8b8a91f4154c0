"""datamodels: training-data attribution by mass retraining.

Stages (each idempotent and resumable): prepare -> train -> fit -> estimate -> evaluate.
The run directory (Parquet tables) is the public contract; `Run` reads it. The verbs::

    import datamodels as dm
    config = dm.load_config("configs/digits.yaml")
    dm.train(config, "runs/digits"); dm.fit(config, "runs/digits")
    dm.estimate(config, "runs/digits", "banzhaf"); dm.evaluate(config, "runs/digits")
"""

from datamodels.api import (
    attack,
    estimate,
    estimate_many,
    evaluate,
    fit,
    methods,
    prepare,
    run,
    train,
)
from datamodels.config import load_config
from datamodels.store import Run

__version__ = "0.1.0"
__all__ = [
    "Run",
    "attack",
    "estimate",
    "estimate_many",
    "evaluate",
    "fit",
    "load_config",
    "methods",
    "prepare",
    "run",
    "train",
]
