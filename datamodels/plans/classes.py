"""``classes`` (transfer runs, n = number of source classes): ``count`` masks, each exactly
round(alpha · n) source classes drawn uniformly without replacement (at least one)."""

from __future__ import annotations

import numpy as np

from datamodels.plans.base import PlanConfig, PlanKind


def class_count(plan: PlanConfig, n_train: int) -> int:
    """How many of the n_train source classes a ``classes`` mask includes (at least one)."""
    return min(n_train, max(1, int(round(plan.alpha * n_train))))


class Classes(PlanKind):
    name = "classes"
    needs_transfer = True

    def alphas(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, n_train: int
    ) -> np.ndarray:
        return np.full(len(np.asarray(mask_index)), class_count(plan, n_train) / max(n_train, 1))

    def mask(
        self,
        config_seed: int,
        plan: PlanConfig,
        mask_index: int,
        n_train: int,
        rows: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        mask = np.zeros(n_train, dtype=bool)
        chosen = self.rng(config_seed, plan, mask_index).permutation(n_train)
        mask[chosen[: class_count(plan, n_train)]] = True
        return mask
