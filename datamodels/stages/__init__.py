"""The stages of a run, one module each, all implementing `stages.base.Stage`.

| module                     | stage                               | units                   |
|----------------------------|-------------------------------------|-------------------------|
| prepare.py                 | beton + examples, then config.yaml  | one                     |
| train.py                   | models/ shards                      | model batches, tmc walks|
| fit.py                     | LASSO datamodels                    | blocks of targets       |
| estimate.py                | every method of ``methods.METHODS`` | tables; (model, block)  |
| removal.py                 | removal sets; removals/results      | one each                |
| evaluate.py                | evaluation.parquet                  | one                     |
| alpha_effect.py            | applications/alpha_effect.parquet   | one                     |
| lds_curve.py               | applications/lds_curve.parquet      | one                     |
| transfer_counterfactual.py | counterfactual masks; its tables    | one each                |
| attack.py                  | attacks/target_J.parquet            | one                     |
| sparse_layer.py            | sparse_layer/                       | one                     |

``pipeline.py`` declares them as data (what each reads and writes, which ``run`` walks),
``states.py`` says per stage done / stale / missing, ``status.py`` counts models per plan.
See ``base.py`` for the contract and how to add a stage.
"""

from datamodels.stages.base import Stage, TaskResources, Unit, run_stage

__all__ = ["Stage", "TaskResources", "Unit", "run_stage"]
