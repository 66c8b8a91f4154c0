"""``shapley`` (Owen's multilinear sampling) and ``beta_shapley`` (Kwon & Zou 2022, Beta(a, b)
= ``estimate.beta``) from the first ``alpha_grid`` plan; utility = the margin."""

from __future__ import annotations

import numpy as np

from datamodels import estimators as est
from datamodels.methods.base import PlanTable, RetrainingMethod


class Shapley(RetrainingMethod):
    name = "shapley"
    plan_kinds = ("alpha_grid",)

    def grid(self, table: PlanTable):
        """The plan's Gauss-Legendre nodes and weights (None: a plan without levels)."""
        return est.owen_grid(table.plan.levels) if table.plan.levels else None

    def scores(self, table: PlanTable, targets: np.ndarray) -> est.Scores:
        utility = table.margins[:, targets]
        return est.shapley(table.masks, utility, table.alpha, grid=self.grid(table))


class BetaShapley(Shapley):
    name = "beta_shapley"

    def settings(self) -> dict:
        return {"beta": list(self.config.estimate.beta)}

    def scores(self, table: PlanTable, targets: np.ndarray) -> est.Scores:
        return est.beta_shapley(
            table.masks, table.margins[:, targets], table.alpha,
            beta_params=tuple(self.config.estimate.beta), grid=self.grid(table),
        )
