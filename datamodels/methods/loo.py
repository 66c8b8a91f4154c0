"""``loo``: leave-one-out retraining from the first ``loo`` plan (the full-data model and
one model without each point); utility = the margin."""

from __future__ import annotations

import numpy as np

from datamodels import estimators as est
from datamodels.methods.base import PlanTable, RetrainingMethod


class Loo(RetrainingMethod):
    name = "loo"
    plan_kinds = ("loo",)

    def scores(self, table: PlanTable, targets: np.ndarray) -> est.Scores:
        masks = table.masks
        left_out = np.where(masks.all(1), -1, np.argmin(masks, axis=1))
        return est.loo(left_out, table.margins[:, targets], masks.shape[1])
