"""The Python API: the same verbs as the command line, on a config and a run directory.

    import datamodels as dm
    config = dm.load_config("configs/digits.yaml", ["plans.train.count=500"])
    dm.run(config, "runs/digits")            # prepare, train, fit, estimate, evaluate
    dm.Run("runs/digits").scores("datamodels")

Each verb runs one stage through `stages.base.run_stage`: it does nothing when its outputs
are current, and finishes what an interrupted call left. Training and the gradient
estimators run as Ray tasks (``address``: a cluster, default RAY_ADDRESS or a local one);
pass ``executor=SerialExecutor()`` to run them in this process instead.

| module        | verbs                                                                  |
|---------------|------------------------------------------------------------------------|
| training.py   | prepare, train, train_shard, parse_shard, compact                       |
| analysis.py   | fit, estimate, estimate_many, methods, evaluate, removal, attack, sparse_layer |
| derived.py    | alpha_effect, lds_curve, transfer_counterfactual, stage_states          |
| walk.py       | run (the pipeline's default stages, in order)                           |
| attribute.py  | attribute (gradient estimators on a model trained elsewhere)            |
"""

from datamodels.api.analysis import (
    FitResult,
    attack,
    estimate,
    estimate_many,
    evaluate,
    fit,
    methods,
    on_request,
    removal,
    sparse_layer,
)
from datamodels.api.attribute import attribute
from datamodels.api.derived import alpha_effect, lds_curve, stage_states, transfer_counterfactual
from datamodels.api.serve import serve
from datamodels.api.training import (
    PREPARE_WAIT_S,
    compact,
    parse_shard,
    prepare,
    train,
    train_shard,
)
from datamodels.api.walk import run

__all__ = [
    "on_request",
    "PREPARE_WAIT_S",
    "FitResult",
    "alpha_effect",
    "attack",
    "attribute",
    "compact",
    "estimate",
    "estimate_many",
    "evaluate",
    "fit",
    "lds_curve",
    "methods",
    "parse_shard",
    "prepare",
    "removal",
    "run",
    "serve",
    "sparse_layer",
    "stage_states",
    "train",
    "train_shard",
    "transfer_counterfactual",
]
