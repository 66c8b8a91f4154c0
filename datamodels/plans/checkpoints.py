"""Which planned models save checkpoints, and at which epochs (``config.checkpoints``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from datamodels.models import architecture

if TYPE_CHECKING:
    from datamodels.config import Config
    from datamodels.plans.planned import PlannedModels
else:
    Config = Any


def checkpoint_ids(config: Config, planned: PlannedModels) -> np.ndarray:
    """int64 ids of the models that save checkpoints (``config.checkpoints``): the first
    ``models`` ids of ``checkpoints.plan`` (all of them when ``models`` is null)."""
    spec = config.checkpoints
    if spec.plan is None:
        return np.zeros(0, dtype=np.int64)
    ids = np.sort(planned.model_id[planned.plan == spec.plan])
    return ids if spec.models is None else ids[: spec.models]


def checkpoint_epochs(config: Config) -> tuple[int, ...]:
    """The epochs each checkpointed model saves, always including the last (the trained
    model itself); ``(1,)`` for ``logreg`` (its solution)."""
    if architecture(config.model.arch).solved:
        return (1,)
    return tuple(
        sorted(
            {e for e in config.checkpoints.epochs if e <= config.train.epochs}
            | {config.train.epochs}
        )
    )
