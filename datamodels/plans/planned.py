"""The planned models of a config: ids, plans, masks, seeds, and the stored masks they read.

Model ids are assigned in config order: each plan owns a contiguous block of ids. Within a
plan, model ``j`` trains on mask number ``j // seeds`` with replicate ``j % seeds``; the mask
depends only on ``(config seed, plan name, mask number)`` and the training seed additionally
on the replicate, never on scheduling order, batch composition or attempt. What a mask
number means is the plan kind's (`datamodels.plans.registry`).

``config`` is duck-typed: an object with ``seed`` and ``plans`` (each with ``name``,
``kind``, ``seeds`` and its kind's fields), as `datamodels.config.Config` is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from datamodels.plans.base import PlanKind
from datamodels.plans.registry import plan_kind

if TYPE_CHECKING:
    from datamodels.config import Config, PlanConfig
else:
    Config = PlanConfig = Any

Kinds = Mapping[str, type[PlanKind]] | None


@dataclass(frozen=True)
class PlannedModels:
    """Planned models (one entry per model), arrays of length m sorted by ``model_id``."""

    model_id: np.ndarray  # int64[m]
    plan: np.ndarray  # str[m] plan names (a fixed-width unicode array: no per-model objects)
    alpha: np.ndarray  # float64[m] inclusion probability the mask was drawn with
    seed: np.ndarray  # int64[m] training seed
    mask_index: np.ndarray  # int64[m] index of the mask within its plan

    def __len__(self) -> int:
        return len(self.model_id)

    def take(self, positions: np.ndarray) -> PlannedModels:
        return PlannedModels(*(getattr(self, f)[positions] for f in self.__dataclass_fields__))

    def select_ids(self, model_ids: np.ndarray) -> PlannedModels:
        positions = np.searchsorted(self.model_id, np.asarray(model_ids, dtype=np.int64))
        return self.take(positions)


def n_masks(plan: PlanConfig, n_train: int, kinds: Kinds = None) -> int:
    """How many masks ``plan`` has."""
    return plan_kind(plan.kind, kinds).n_masks(plan, n_train)


def mask_alpha(
    config_seed: int, plan: PlanConfig, mask_index: np.ndarray, n_train: int, kinds: Kinds = None
) -> np.ndarray:
    """float64[k]: the inclusion probability (or included fraction) of each mask."""
    return plan_kind(plan.kind, kinds).alphas(
        config_seed, plan, np.asarray(mask_index, dtype=np.int64), n_train
    )


def plan_mask(
    config_seed: int,
    plan: PlanConfig,
    mask_index: int,
    n_train: int,
    stored: dict[str, list[np.ndarray]] | None = None,
    kinds: Kinds = None,
) -> np.ndarray:
    """bool[n_train]: mask number ``mask_index`` of ``plan`` (a stored-mask plan's from
    ``stored[plan.name]``, its rows of removed positions)."""
    rows = (stored or {}).get(plan.name)
    return plan_kind(plan.kind, kinds).mask(config_seed, plan, mask_index, n_train, rows)


def plan_models(config: Config, n_train: int, kinds: Kinds = None) -> PlannedModels:
    """Every model the config asks for, in ``model_id`` order."""
    ids, plans, alphas, seeds, mask_idx = [], [], [], [], []
    offset = 0
    for plan in config.plans:
        kind = plan_kind(plan.kind, kinds)
        n = kind.n_masks(plan, n_train) * plan.seeds
        local = np.arange(n, dtype=np.int64)
        masks_of = local // plan.seeds
        ids.append(offset + local)
        plans.append(np.full(n, plan.name))
        alphas.append(kind.alphas(config.seed, plan, masks_of, n_train))
        mask_idx.append(masks_of)
        seeds.append(kind.seeds(config.seed, plan, masks_of, local % plan.seeds))
        offset += n
    return PlannedModels(
        model_id=np.concatenate(ids),
        plan=np.concatenate(plans),
        alpha=np.concatenate(alphas),
        seed=np.concatenate(seeds),
        mask_index=np.concatenate(mask_idx),
    )


def masks_for(
    config: Config,
    planned: PlannedModels,
    n_train: int,
    stored: dict[str, list[np.ndarray]] | None = None,
    kinds: Kinds = None,
) -> np.ndarray:
    """bool[K, n_train]: the masks of the given planned models (``stored``: the rows of the
    stored-mask plans, `stored_masks`)."""
    by_name = {p.name: (p, plan_kind(p.kind, kinds)) for p in config.plans}
    stored = stored or {}
    out = np.empty((len(planned), n_train), dtype=bool)
    for row, (name, mask_index) in enumerate(zip(planned.plan, planned.mask_index, strict=True)):
        plan, kind = by_name[name]
        out[row] = kind.mask(config.seed, plan, int(mask_index), n_train, stored.get(name))
    return out


def plans_where(config: Config, flag: str) -> list[str]:
    """Names of the config's plans whose kind has attribute ``flag`` true (``"stored"``,
    ``"walks"``, ``"example_weights"``...), in config order."""
    return [p.name for p in config.plans if getattr(plan_kind(p.kind), flag)]


def stored_plans(config: Config) -> list[str]:
    """The config's stored-mask plans (their masks come from ``plan_masks/``)."""
    return plans_where(config, "stored")


def walk_plans(config: Config) -> list[str]:
    """The config's plans trained as permutation walks (tmc)."""
    return plans_where(config, "walks")


def stored_masks(config: Config, run: Any) -> dict[str, list[np.ndarray]]:
    """plan name -> rows of removed positions, for the config's stored-mask plans whose
    ``plan_masks/<plan>.parquet`` exists (a plan without one is left out). ``run``: anything
    with ``plan_masks(name)`` (a `datamodels.store.Run`)."""
    out = {}
    for name in stored_plans(config):
        rows = run.plan_masks(name)
        if rows is not None:
            out[name] = rows
    return out


def training_weights(
    config: Config, planned: PlannedModels, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """What the trainer gets for these models: (order masks bool[K, n_train], example weights
    float32[K, n_train] or None). A model of a kind with ``example_weights`` (single_model,
    paired_loo) draws its batches from the full set and weights its dropped points 0; every
    other model trains on its mask (None)."""
    weighted = set(plans_where(config, "example_weights"))
    single = np.array([name in weighted for name in planned.plan], dtype=bool)
    if not single.any():
        return masks, None
    order = masks.copy()
    order[single] = True
    return order, masks.astype(np.float32)


def tmc_walk_state(
    config: Config, planned: PlannedModels, n_train: int, done: set[int]
) -> dict[tuple[str, int], tuple[int, bool]]:
    """(plan, perm) -> (representative model id, walk present) for every permutation walk."""
    walking = set(walk_plans(config))
    state = {}
    for plan in config.plans:
        if plan.name not in walking:
            continue
        ids = planned.model_id[planned.plan == plan.name]
        per_walk = (n_train + 1) * plan.seeds
        for perm in range(int(plan.count)):
            walk_ids = ids[perm * per_walk : (perm + 1) * per_walk]
            state[(plan.name, perm)] = (
                int(walk_ids[0]),
                bool(done.intersection(walk_ids.tolist())),
            )
    return state
