"""Truncated Monte-Carlo walks (Ghorbani & Zou 2019): train the prefixes of one permutation
until adding points stops changing test accuracy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from datamodels.trainers.api import TrainOutcome


def walk_permutation(
    walk,
    plan,
    n_train: int,
    models_per_task: int,
    train: Callable[[object], tuple[np.ndarray, TrainOutcome]],
):
    """Walk one permutation: ``walk`` is its planned models in step order (``plans.tmc_walk``:
    step k = the first k points, ``plan.seeds`` replicates each). The full-data model first,
    then prefixes of growing length in chunks, until test accuracy has stayed within
    ``plan.tolerance`` of the full-data model's for ``plan.patience`` consecutive prefixes.
    ``train(chosen) -> (masks, outcome)`` trains planned models. Returns the (planned, masks,
    outcome) of every model trained, in model-id order."""
    seeds = plan.seeds
    parts: list = []

    def run_steps(steps: np.ndarray) -> np.ndarray:
        chosen = walk.take((steps[:, None] * seeds + np.arange(seeds)[None, :]).reshape(-1))
        masks, outcome = train(chosen)
        parts.append((chosen, masks, outcome))
        accuracy = np.where(outcome.failed, np.nan, outcome.eval_accuracy)
        accuracy = accuracy.reshape(len(steps), seeds)
        return np.nanmean(accuracy, axis=1) if seeds > 1 else accuracy[:, 0]

    full_accuracy = float(run_steps(np.array([n_train]))[0])
    chunk = max(1, models_per_task // seeds)
    within, step = 0, 0
    while step < n_train and within < plan.patience:
        steps = np.arange(step, min(n_train, step + chunk))
        for value in run_steps(steps):
            within = within + 1 if abs(value - full_accuracy) <= plan.tolerance else 0
            if within >= plan.patience:
                break
        step = int(steps[-1]) + 1
    fields = walk.__dataclass_fields__
    planned = type(walk)(*(np.concatenate([getattr(p[0], f) for p in parts]) for f in fields))
    masks = np.concatenate([p[1] for p in parts])
    outcome = TrainOutcome(
        *(np.concatenate([getattr(p[2], f) for p in parts]) for f in TrainOutcome.ARRAYS)
    )
    order = np.argsort(planned.model_id)
    return planned.take(order), masks[order], outcome.take(order)
