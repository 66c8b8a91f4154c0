"""``loo``: leave-one-out retraining from the first ``paired_loo`` or ``loo`` plan (the
full-data models and one model without each point per replicate); utility = the margin.

A ``paired_loo`` plan's replicate trains its full model and every model without a point with
one seed and one batch order (the point weighted 0): the score is the mean paired
difference (`estimators.paired_loo`). A ``loo`` plan's models have independent seeds: the
difference of the group means (`estimators.loo`)."""

from __future__ import annotations

import numpy as np

from datamodels import estimators as est
from datamodels.methods.base import PlanTable, RetrainingMethod


def left_out_points(masks: np.ndarray) -> np.ndarray:
    """int64[m]: −1 for a full-data mask, else the one train position the mask leaves out."""
    masks = np.asarray(masks, dtype=bool)
    return np.where(masks.all(1), -1, np.argmin(masks, axis=1)).astype(np.int64)


def replicate_keys(ids: np.ndarray, mask_index: np.ndarray, seeds: int) -> np.ndarray:
    """int64[m]: one key per replicate of a plan (model id ``first + j·seeds + r`` of mask j,
    replicate r gives ``first + r``), pairing each model with its replicate's full model."""
    return np.asarray(ids, np.int64) - np.asarray(mask_index, np.int64) * int(seeds)


class Loo(RetrainingMethod):
    name = "loo"
    plan_kinds = ("paired_loo", "loo")

    def scores(self, table: PlanTable, targets: np.ndarray) -> est.Scores:
        left_out = left_out_points(table.masks)
        margins = table.margins[:, targets]
        if table.plan.kind == "paired_loo":
            keys = replicate_keys(table.ids, table.rows.mask_index, table.plan.seeds)
            return est.paired_loo(left_out, keys, margins, table.masks.shape[1])
        return est.loo(left_out, margins, table.masks.shape[1])
