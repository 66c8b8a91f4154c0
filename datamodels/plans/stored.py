"""``stored``: ``count`` masks read from ``plan_masks/<plan>.parquet``.

Masks that depend on results (scores, classes) exist only after the config. The plan fixes
how many masks there are (model ids stay a pure function of the config); the masks are the
rows of a table written once (`Run.write_plan_masks`): mask j is the full training set minus
row j's ``removed`` train positions. ``train`` skips such a plan until its table exists, and
``verify`` checks its models against it.
"""

from __future__ import annotations

import numpy as np

from datamodels.errors import StoreError
from datamodels.plans.base import PlanConfig, PlanKind, plan_masks_path


class Stored(PlanKind):
    name = "stored"
    stored = True
    # what writes the table, for the error that says it is missing
    writes_masks = "write them with Run.write_plan_masks"

    def alphas(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, n_train: int
    ) -> np.ndarray:
        """Nominal 1: the stored row records its mask's own fraction."""
        return np.ones(len(np.asarray(mask_index)))

    def mask(
        self,
        config_seed: int,
        plan: PlanConfig,
        mask_index: int,
        n_train: int,
        rows: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        path = plan_masks_path(plan.name)
        if rows is None:
            raise StoreError(
                f"plan {plan.name!r} ({plan.kind}): its masks ({path}) are not written yet; "
                + self.writes_masks
            )
        if mask_index >= len(rows):
            raise StoreError(
                f"{path} has {len(rows)} masks; plan {plan.name!r} needs {mask_index + 1} or "
                f"more (plans.{plan.name}.count)"
            )
        mask = np.ones(n_train, dtype=bool)
        mask[rows[mask_index]] = False
        return mask
