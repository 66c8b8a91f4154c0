"""``loo``: leave-one-out retraining from the first ``paired_loo`` or ``loo`` plan (the
full-data models and one model without each point per replicate); utility = the margin.

A ``paired_loo`` plan's replicate trains its full model and every model without a point with
one seed and one batch order (the point weighted 0): the score is the mean paired
difference (`estimators.paired_loo`). A ``loo`` plan's models have independent seeds: the
difference of the group means (`estimators.loo`)."""

from __future__ import annotations

import numpy as np

from datamodels import estimators as est
from datamodels.estimators.loo import left_out_points, replicate_keys
from datamodels.methods.base import PlanTable, RetrainingMethod


class Loo(RetrainingMethod):
    name = "loo"
    plan_kinds = ("paired_loo", "loo")
    version = 2  # 2: reads a paired_loo plan first, with the paired estimator

    def scores(self, table: PlanTable, targets: np.ndarray) -> est.Scores:
        left_out = left_out_points(table.masks)
        margins = table.margins[:, targets]
        if table.plan.kind == "paired_loo":
            keys = replicate_keys(table.ids, table.rows.mask_index, table.plan.seeds)
            return est.paired_loo(left_out, keys, margins, table.masks.shape[1])
        return est.loo(left_out, margins, table.masks.shape[1])
