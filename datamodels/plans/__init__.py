"""Which models to train: the plan kinds, the planned models, and masks as a pure function of
(config seed, plan, mask number).

Layout: `base` (`PlanKind`, the base class: how many masks, how each mask and seed is drawn,
where a stored kind's masks come from), one module per kind (`alpha`, `alpha_grid`, `loo`
with `paired_loo`, `tmc`, `single_model`, `classes`, `stored`, `removal`), `registry`
(`PLAN_KINDS`, the map name -> kind, and `plan_kind`), `planned` (the models of a config),
`seeds` (training seeds) and `checkpoints` (which models save checkpoints). Adding a kind:
a module with a `PlanKind` subclass and one line in `PLAN_KINDS`.

This package sits below `datamodels.config` (config validates its plans against the kinds):
it reads the plan and config objects by their fields and imports neither config nor store.
"""

from datamodels.plans.alpha_grid import grid_nodes
from datamodels.plans.base import PLAN_MASKS_DIR, PlanKind, plan_masks_path
from datamodels.plans.checkpoints import checkpoint_epochs, checkpoint_ids
from datamodels.plans.classes import class_count
from datamodels.plans.loo import loo_points
from datamodels.plans.planned import (
    PlannedModels,
    mask_alpha,
    masks_for,
    n_masks,
    plan_mask,
    plan_models,
    plans_where,
    stored_masks,
    stored_plans,
    tmc_walk_state,
    training_weights,
    walk_plans,
)
from datamodels.plans.registry import PLAN_KINDS, STORED_KINDS, kinds_where, plan_kind
from datamodels.plans.removal import removal_layout
from datamodels.plans.seeds import plan_key, seed_sequence_words, training_seed, training_seeds
from datamodels.plans.single_model import drop_fractions
from datamodels.plans.tmc import tmc_layout, tmc_walk

__all__ = [
    "PLAN_KINDS",
    "PLAN_MASKS_DIR",
    "STORED_KINDS",
    "PlanKind",
    "PlannedModels",
    "checkpoint_epochs",
    "checkpoint_ids",
    "class_count",
    "drop_fractions",
    "grid_nodes",
    "kinds_where",
    "loo_points",
    "mask_alpha",
    "masks_for",
    "n_masks",
    "plan_key",
    "plan_kind",
    "plan_mask",
    "plan_masks_path",
    "plan_models",
    "plans_where",
    "removal_layout",
    "seed_sequence_words",
    "stored_masks",
    "stored_plans",
    "tmc_layout",
    "tmc_walk",
    "tmc_walk_state",
    "training_seed",
    "training_seeds",
    "training_weights",
    "walk_plans",
]
