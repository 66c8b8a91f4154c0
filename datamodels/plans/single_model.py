"""``single_model``: every model of a replicate shares one seed, initialisation and batch
order over the *full* training set; dropped points keep their place with loss weight 0.

Mask 0 is the full set; mask ``1 + level * count + k`` drops round(drops[level] · n) points
drawn at random. Every model of a replicate trains with mask 0's seed, and trains over the
full set's batch order with its dropped points weighted 0 (`training_weights`).
"""

from __future__ import annotations

import numpy as np

from datamodels.plans.base import PlanConfig, PlanKind


def drop_fractions(plan: PlanConfig, mask_index: np.ndarray) -> np.ndarray:
    """float64[k]: the fraction of points a ``single_model`` mask drops (0 for mask 0)."""
    mask_index = np.asarray(mask_index, dtype=np.int64)
    level = np.maximum(mask_index - 1, 0) // int(plan.count)
    return np.where(mask_index == 0, 0.0, np.asarray(plan.drops, np.float64)[level])


class SingleModel(PlanKind):
    name = "single_model"
    example_weights = True
    in_transfer = False

    def validate(self, plan: PlanConfig) -> None:
        if not plan.drops or any(not 0.0 < d < 1.0 for d in plan.drops):
            raise ValueError(
                f"plans.{plan.name}.drops must be fractions in (0, 1), e.g. [0.01, 0.1]"
            )
        super().validate(plan)

    def n_masks(self, plan: PlanConfig, n_train: int) -> int:
        return 1 + int(plan.count) * len(plan.drops)

    def alphas(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, n_train: int
    ) -> np.ndarray:
        dropped = np.round(drop_fractions(plan, mask_index) * n_train)
        return 1.0 - dropped / max(n_train, 1)

    def mask(
        self,
        config_seed: int,
        plan: PlanConfig,
        mask_index: int,
        n_train: int,
        rows: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        mask = np.ones(n_train, dtype=bool)
        dropped = int(round(float(drop_fractions(plan, np.array([mask_index]))[0]) * n_train))
        mask[self.rng(config_seed, plan, mask_index).permutation(n_train)[:dropped]] = False
        return mask

    def seeds(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, replicate: np.ndarray
    ) -> np.ndarray:
        """Mask 0's seed for every mask of a replicate (one model, many weightings)."""
        return super().seeds(config_seed, plan, np.zeros_like(mask_index), replicate)
