"""datamodels: training-data attribution by mass retraining.

Stages (each idempotent and resumable, declared in `datamodels.stages.pipeline`): prepare ->
train -> fit -> estimate -> removal -> evaluate; on request sparse_layer (a sparse decision
layer on a checkpoint), alpha_effect and lds_curve (``applications/`` tables).
The run directory (Parquet tables) is the public contract; `Run` reads it. The verbs::

    import datamodels as dm
    config = dm.load_config("configs/digits.yaml", ["plans.train.count=500"])
    dm.run(config, "runs/digits")                 # prepare, train, fit, estimate, evaluate
    dm.estimate("runs/digits", "trak")            # one more estimator on the same run
    dm.attribute(config, module, "runs/mine")     # TRAK etc. on a model trained elsewhere
    run = dm.Run("runs/digits")
    run.scores("datamodels"), run.inputs("test"), run.evaluation()
"""

from datamodels.api import (
    alpha_effect,
    attack,
    attribute,
    estimate,
    evaluate,
    fit,
    lds_curve,
    removal,
    run,
    serve,
    sparse_layer,
    train,
)
from datamodels.config import load_config
from datamodels.store import Run

__version__ = "0.1.0"
# The public verbs (``datamodels.api`` also has prepare, estimate_many, methods, compact and
# train_shard for the command line).
__all__ = [
    "Run",
    "alpha_effect",
    "attack",
    "attribute",
    "estimate",
    "evaluate",
    "fit",
    "lds_curve",
    "load_config",
    "removal",
    "run",
    "serve",
    "sparse_layer",
    "train",
]
