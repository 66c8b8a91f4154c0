"""``loo`` and ``paired_loo``: mask 0 is the full set, mask ``k >= 1`` leaves out point
``points[k - 1]`` (``points``: train positions; every point when omitted).

``loo`` trains every (mask, replicate) with its own seed; ``paired_loo`` trains the masks of
one replicate with one seed and one batch order, the left-out point weighted 0, so that the
difference full − without i of a replicate is free of seed noise."""

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


class PairedLoo(Loo):
    """``paired_loo``: the ``loo`` masks, each replicate trained as one paired experiment.

    Every mask of replicate ``r`` gets mask 0's seed of replicate ``r`` (one initialisation,
    one batch order), and the left-out point keeps its place in the full set's batches with
    loss weight 0 (`example_weights`). Seed noise then cancels in the per-replicate
    difference (full − without i); the replicates are independent draws of that difference.
    Needs the batched mlp trainer (per-example loss weights); `Loo` trains anywhere."""

    name = "paired_loo"
    example_weights = True

    def seeds(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, replicate: np.ndarray
    ) -> np.ndarray:
        """Mask 0's seed of the replicate for every mask: the full-data model's pair."""
        return super().seeds(config_seed, plan, np.zeros_like(mask_index), replicate)
