"""``alpha``: ``count`` masks, each point included independently with probability ``alpha``."""

from __future__ import annotations

import numpy as np

from datamodels.plans.base import PlanConfig, PlanKind


class Alpha(PlanKind):
    name = "alpha"

    def alphas(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, n_train: int
    ) -> np.ndarray:
        return np.full(len(np.asarray(mask_index)), plan.alpha)

    def mask(
        self,
        config_seed: int,
        plan: PlanConfig,
        mask_index: int,
        n_train: int,
        rows: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Each point in with probability `alphas` of the mask (a Bernoulli draw)."""
        alpha = float(self.alphas(config_seed, plan, np.array([mask_index]), n_train)[0])
        return self.rng(config_seed, plan, mask_index).random(n_train) < alpha
