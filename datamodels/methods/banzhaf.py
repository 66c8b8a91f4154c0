"""``banzhaf`` (Wang & Jia 2023, maximum sample reuse): the Banzhaf value of each training
point from the models of ``estimate.plan`` (its alpha must be ½); utility = the margin."""

from __future__ import annotations

import numpy as np

from datamodels import estimators as est
from datamodels.methods.base import PlanTable, RetrainingMethod


class Banzhaf(RetrainingMethod):
    name = "banzhaf"

    def scores(self, table: PlanTable, targets: np.ndarray) -> est.Scores:
        return est.banzhaf(table.masks, table.margins[:, targets], alpha=table.alpha)
