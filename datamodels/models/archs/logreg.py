"""``logreg``: multinomial logistic regression, the convex reference.

Solved full-batch by L-BFGS in float64 to ``train.tolerance`` (``trainers.paths``' ``lbfgs``
path: K at once for ``resources.trainer: batched``, else one at a time), so a subset always
gives the same model; its one checkpoint is that solution. Its head is itself: one linear
layer on the flattened inputs.
"""

from __future__ import annotations

from datamodels.models.base import Architecture


class LogReg(Architecture):
    name = "logreg"
    trainer = "lbfgs"
    functional = "logreg"
    dense = True
    head = "inputs"
    accepts_recipe = False
    stacked = True
    transfers = False
    replayed_by = ("metagradient",)
    solved = True

    def trainer_path(self, config, loader: str) -> str:
        return "lbfgs"  # batched or one at a time, the same optimum (trainers.logreg)
