"""Which models to train: the plan table, and masks as a pure function of (seed, plan, id).

Model ids are assigned in config order: plan 0 owns ids ``[0, n_0)``, plan 1 the next
``n_1`` ids, and so on, where ``n_p = count * seeds``. Model ``j`` of a plan trains on mask
number ``j // seeds`` with replicate ``j % seeds``; the mask depends only on
``(config seed, plan name, mask number)`` and the training seed additionally on the
replicate — never on scheduling order, batch composition or attempt.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from datamodels.config import Config, PlanConfig


@dataclass(frozen=True)
class PlannedModels:
    """Planned models (one entry per model), arrays of length m sorted by ``model_id``."""

    model_id: np.ndarray  # int64[m]
    plan: np.ndarray  # object[m] plan names
    alpha: np.ndarray  # float32[m]
    seed: np.ndarray  # int64[m] training seed
    mask_index: np.ndarray  # int64[m] index of the mask within its plan

    def __len__(self) -> int:
        return len(self.model_id)

    def take(self, positions: np.ndarray) -> PlannedModels:
        return PlannedModels(*(getattr(self, f)[positions] for f in self.__dataclass_fields__))

    def select_ids(self, model_ids: np.ndarray) -> PlannedModels:
        positions = np.searchsorted(self.model_id, np.asarray(model_ids, dtype=np.int64))
        return self.take(positions)


def _plan_key(name: str) -> int:
    return zlib.crc32(name.encode())


def training_seed(config_seed: int, plan: str, mask_index: int, replicate: int) -> int:
    seq = np.random.SeedSequence([config_seed, _plan_key(plan), mask_index, replicate, 1])
    return int(seq.generate_state(1, dtype=np.uint32)[0])


def plan_mask(config_seed: int, plan: PlanConfig, mask_index: int, n_train: int) -> np.ndarray:
    """bool[n_train]: each point included independently with probability ``plan.alpha``."""
    rng = np.random.default_rng([config_seed, _plan_key(plan.name), mask_index, 0])
    return rng.random(n_train) < plan.alpha


def plan_models(config: Config) -> PlannedModels:
    """Every model the config asks for, in ``model_id`` order."""
    ids, plans, alphas, seeds, mask_idx = [], [], [], [], []
    offset = 0
    for plan in config.plans:
        n = plan.count * plan.seeds
        local = np.arange(n, dtype=np.int64)
        ids.append(offset + local)
        plans.append(np.full(n, plan.name, dtype=object))
        alphas.append(np.full(n, plan.alpha, dtype=np.float32))
        mask_idx.append(local // plan.seeds)
        seeds.append(
            np.array(
                [training_seed(config.seed, plan.name, int(j // plan.seeds), int(j % plan.seeds)) for j in local],
                dtype=np.int64,
            )
        )
        offset += n
    return PlannedModels(
        model_id=np.concatenate(ids),
        plan=np.concatenate(plans),
        alpha=np.concatenate(alphas),
        seed=np.concatenate(seeds),
        mask_index=np.concatenate(mask_idx),
    )


def masks_for(config: Config, planned: PlannedModels, n_train: int) -> np.ndarray:
    """bool[K, n_train]: the masks of the given planned models."""
    by_name = {p.name: p for p in config.plans}
    out = np.empty((len(planned), n_train), dtype=bool)
    for row, (name, mask_index) in enumerate(zip(planned.plan, planned.mask_index, strict=True)):
        out[row] = plan_mask(config.seed, by_name[name], int(mask_index), n_train)
    return out
