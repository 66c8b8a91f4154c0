"""``alpha_grid`` (Shapley through Owen's identity): α spread over (0, 1).

``levels * count`` masks, mask ``j`` at the Gauss-Legendre node α_(j // count); or, with
``levels: 0``, ``count`` masks with α ~ U(0, 1) drawn per mask. Each point of a mask is then
in with probability α, as in ``alpha``.
"""

from __future__ import annotations

import numpy as np

from datamodels.estimators import owen_grid
from datamodels.plans.alpha import Alpha
from datamodels.plans.base import PlanConfig
from datamodels.plans.seeds import plan_key


def grid_nodes(levels: int) -> np.ndarray:
    """float64[levels]: Gauss-Legendre nodes on (0, 1) (the Owen quadrature levels)."""
    return owen_grid(levels)[0]


class AlphaGrid(Alpha):
    name = "alpha_grid"

    def n_masks(self, plan: PlanConfig, n_train: int) -> int:
        return int(plan.count) * max(plan.levels, 1)

    def alphas(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, n_train: int
    ) -> np.ndarray:
        mask_index = np.asarray(mask_index, dtype=np.int64)
        if plan.levels == 0:
            key = plan_key(plan.name)
            return np.array(
                [np.random.default_rng([config_seed, key, int(j), 1]).random() for j in mask_index]
            )
        return grid_nodes(plan.levels)[mask_index // plan.count]
