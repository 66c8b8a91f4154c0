"""``tmc_shapley`` (Ghorbani & Zou 2019): truncated Monte-Carlo Shapley from the walks of the
first ``tmc`` plan; utility = the margin. A walk counts from its empty prefix up to its
first missing step."""

from __future__ import annotations

import numpy as np

from datamodels import estimators as est
from datamodels.errors import EstimateError
from datamodels.estimators.tmc import STDERR_CONSTRUCTION
from datamodels.methods.base import PlanTable, RetrainingMethod
from datamodels.plans import tmc_layout


class TmcShapley(RetrainingMethod):
    name = "tmc_shapley"
    plan_kinds = ("tmc",)

    def settings(self) -> dict:
        """The standard-error construction: a run's tmc scores are recomputed when it changes."""
        return {"stderr": STDERR_CONSTRUCTION}

    def scores(self, table: PlanTable, targets: np.ndarray) -> est.Scores:
        plan, masks, utility = table.plan, table.masks, table.margins[:, targets]
        if plan.seeds > 1:
            raise EstimateError(
                "tmc_shapley with seeds > 1: average replicates first (not supported yet)"
            )
        n = masks.shape[1]
        perm, step = tmc_layout(table.rows, n)
        keep = np.zeros(len(step), dtype=bool)
        for p in np.unique(perm):  # a walk's contiguous prefix 0..k (k = n when never truncated)
            rows = np.flatnonzero(perm == p)
            present = set(step[rows].tolist())
            k = 0
            while k + 1 in present:
                k += 1
            keep[rows[step[rows] <= k]] = 0 in present
        if not keep.any():
            raise EstimateError(
                f"tmc plan '{plan.name}' has no walk starting at the empty prefix; retrain it"
            )
        added = np.full(len(step), -1, dtype=np.int64)
        for p in np.unique(perm[keep]):
            order = est.tmc_permutation(self.config.seed, int(p), n)
            rows = np.flatnonzero(keep & (perm == p))
            added[rows] = np.where(step[rows] > 0, order[np.maximum(step[rows] - 1, 0)], -1)
        return est.tmc_shapley(perm[keep], step[keep], added[keep], utility[keep], n)
