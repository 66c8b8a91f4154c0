"""``tmc`` (truncated Monte Carlo Shapley): ``count`` permutations walked prefix by prefix.

Mask ``p * (n + 1) + k`` is the first k points of permutation p (k = 0..n, n = n_train). A
walk trains a prefix of these and stops (truncation), so not every model id is trained; one
unit of the train stage walks one permutation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from datamodels.estimators import tmc_permutation
from datamodels.plans.base import PlanConfig, PlanKind

if TYPE_CHECKING:
    from datamodels.plans.planned import PlannedModels


class Tmc(PlanKind):
    name = "tmc"
    walks = True
    in_transfer = False

    def n_masks(self, plan: PlanConfig, n_train: int) -> int:
        return int(plan.count) * (n_train + 1)

    def alphas(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, n_train: int
    ) -> np.ndarray:
        mask_index = np.asarray(mask_index, dtype=np.int64)
        return (mask_index % (n_train + 1)) / max(n_train, 1)  # the prefix's fraction

    def mask(
        self,
        config_seed: int,
        plan: PlanConfig,
        mask_index: int,
        n_train: int,
        rows: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        perm, step = divmod(int(mask_index), n_train + 1)
        mask = np.zeros(n_train, dtype=bool)
        mask[tmc_permutation(config_seed, perm, n_train)[:step]] = True
        return mask


def tmc_walk(
    config: object, plan: PlanConfig, perm: int, n_train: int, planned: PlannedModels
) -> PlannedModels:
    """The planned models of permutation ``perm`` of a tmc plan, in step order (0..n)."""
    rows = np.flatnonzero(planned.plan == plan.name)
    lo = perm * (n_train + 1) * plan.seeds
    return planned.take(rows[lo : lo + (n_train + 1) * plan.seeds])


def tmc_layout(planned: PlannedModels, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """(perm_id int64[m], step int64[m]) of tmc models from their mask indices."""
    perm, step = np.divmod(planned.mask_index, n_train + 1)
    return perm.astype(np.int64), step.astype(np.int64)
