"""``loo``: mask 0 is the full set, mask ``k >= 1`` leaves out point ``points[k - 1]``
(``points``: train positions; every point when omitted)."""

from __future__ import annotations

import numpy as np

from datamodels.errors import ConfigError
from datamodels.plans.base import PlanConfig, PlanKind


def loo_points(plan: PlanConfig, n_train: int) -> np.ndarray:
    """int64[k]: the train positions the plan leaves out, one a mask after mask 0."""
    points = np.arange(n_train) if plan.points is None else np.asarray(plan.points, dtype=np.int64)
    if len(points) and points.max() >= n_train:
        raise ConfigError(
            f"plans.{plan.name}.points: position {points.max()} is outside the "
            f"{n_train} training points"
        )
    return points


class Loo(PlanKind):
    name = "loo"
    in_transfer = False
    requires_count = False

    def validate(self, plan: PlanConfig) -> None:
        if plan.points is not None and any(p < 0 for p in plan.points):
            raise ValueError(f"plans.{plan.name}.points must be train positions (>= 0)")

    def n_masks(self, plan: PlanConfig, n_train: int) -> int:
        return 1 + len(loo_points(plan, n_train))

    def alphas(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, n_train: int
    ) -> np.ndarray:
        mask_index = np.asarray(mask_index, dtype=np.int64)
        return np.where(mask_index == 0, 1.0, (n_train - 1) / max(n_train, 1))

    def mask(
        self,
        config_seed: int,
        plan: PlanConfig,
        mask_index: int,
        n_train: int,
        rows: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        mask = np.ones(n_train, dtype=bool)
        if mask_index > 0:
            mask[loo_points(plan, n_train)[mask_index - 1]] = False
        return mask
