"""The stages of a run, one module each, all implementing `stages.base.Stage`.

| module        | stage                       | units                                   |
|---------------|-----------------------------|-----------------------------------------|
| prepare.py    | dataset → beton + examples  | one                                     |
| train.py      | models/ shards              | batches of model ids, tmc walks         |
| fit.py        | LASSO datamodels            | blocks of targets                       |
| estimate.py   | retraining estimators       | scores, self scores                     |
| gradients.py  | gradient estimators         | (model, target/train block); Hessians shared |
| evaluate.py   | evaluation.parquet          | one                                     |
| attack.py     | attacks/target_J.parquet    | one                                     |

See ``base.py`` for the contract and how to add a stage.
"""

from datamodels.stages.base import Stage, TaskResources, Unit, run_stage

__all__ = ["Stage", "TaskResources", "Unit", "run_stage"]
