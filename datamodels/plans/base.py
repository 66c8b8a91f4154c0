"""`PlanKind`: what one kind of plan owns, the base class of every module in this folder.

A plan (one entry of ``plans:`` in a config) is a named block of model ids. Its kind decides
how many masks the plan has, how mask number ``j`` is drawn (a pure function of the config
seed, the plan name and ``j``: never of scheduling order or attempt), the inclusion
probability each mask records, which training seed each model gets and, for stored kinds,
where the masks come from: the ``plan_masks/<plan>.parquet`` table (written once, after the
config, by whatever chooses the sets), so a stored kind's models wait for that table.

The plan configs are duck-typed: a kind reads the fields it needs (``name``, ``count``,
``alpha``...) from any object that has them, so this layer sits below `datamodels.config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from datamodels.plans.seeds import plan_key, training_seeds

if TYPE_CHECKING:
    from datamodels.config import PlanConfig
else:
    PlanConfig = Any

PLAN_MASKS_DIR = "plan_masks"  # plan_masks/<plan>.parquet: the masks of the stored kinds


def plan_masks_path(plan: str) -> str:
    """Where the masks of stored-mask plan ``plan`` live, relative to the run directory."""
    return f"{PLAN_MASKS_DIR}/{plan}.parquet"


class PlanKind:
    """One kind of plan. Subclasses set ``name`` and override `n_masks`, `alphas` and `mask`
    (and, where they differ from the defaults, `seeds`, `validate` and the flags below)."""

    name: ClassVar[str] = ""
    # masks read from plan_masks/<plan>.parquet (`plan_masks_path`); models wait for it
    stored: ClassVar[bool] = False
    # trained as permutation walks: one unit trains a prefix of one permutation and stops
    walks: ClassVar[bool] = False
    # trains over the full set's batch order with the dropped points weighted 0 (per-example
    # loss weights: the batched mlp trainer only)
    example_weights: ClassVar[bool] = False
    # masks over the source classes of a transfer run (needs a transfer section)
    needs_transfer: ClassVar[bool] = False
    # may be a plan of a transfer run (whose mask columns are source classes)
    in_transfer: ClassVar[bool] = True
    # at most one plan of this kind per config (its tables are per run, not per plan)
    one_per_config: ClassVar[bool] = False
    # plan fields this kind requires (checked by the default `validate`)
    requires_count: ClassVar[bool] = True

    @property
    def supports_checkpoints(self) -> bool:
        """Whether ``checkpoints.plan`` may name a plan of this kind (a walk's models are
        prefixes of it; a stored kind's masks exist only after fit)."""
        return not (self.walks or self.stored)

    def validate(self, plan: PlanConfig) -> None:
        """Check the plan's own fields for this kind; raise ValueError naming the field."""
        if self.requires_count and plan.count is None:
            raise ValueError(f"plans.{plan.name}.count is required for kind {plan.kind!r}")

    def n_masks(self, plan: PlanConfig, n_train: int) -> int:
        """How many masks the plan has (model ids: ``n_masks * plan.seeds``)."""
        return int(plan.count)

    def alphas(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, n_train: int
    ) -> np.ndarray:
        """float64[k]: the inclusion probability (or included fraction) of each mask."""
        raise NotImplementedError(f"plan kind {self.name!r} does not define alphas")

    def mask(
        self,
        config_seed: int,
        plan: PlanConfig,
        mask_index: int,
        n_train: int,
        rows: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """bool[n_train]: mask number ``mask_index`` (``rows``: a stored kind's table rows,
        the int64 train positions each mask removes)."""
        raise NotImplementedError(f"plan kind {self.name!r} does not define mask")

    def seeds(
        self, config_seed: int, plan: PlanConfig, mask_index: np.ndarray, replicate: np.ndarray
    ) -> np.ndarray:
        """int64[m]: the training seed of each model (mask number, replicate)."""
        return training_seeds(config_seed, plan.name, mask_index, replicate)

    @staticmethod
    def rng(config_seed: int, plan: PlanConfig, mask_index: int) -> np.random.Generator:
        """The generator mask ``mask_index`` of ``plan`` is drawn from."""
        return np.random.default_rng([config_seed, plan_key(plan.name), mask_index, 0])
