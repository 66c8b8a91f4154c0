"""Per-model minibatch orders and learning-rate schedules, shared by every training path.

Model k shuffles its own subset each epoch with its own generator (seeded by its training
seed) and walks it in batches of B; the last batch of an epoch may be short. All K orders of
an epoch come out as one padded index matrix, so the batched trainer gathers every model's
batch with one indexing op, and the one-at-a-time trainer (K = 1) sees identical batches.
"""

from __future__ import annotations

import numpy as np


class EpochOrders:
    """``next_epoch()`` -> (index int64[K, S*B], valid bool[K, S*B]) where S = max steps/epoch."""

    def __init__(self, masks: np.ndarray, seeds: np.ndarray, batch_size: int) -> None:
        self.masks = np.asarray(masks, dtype=bool)
        self.batch_size = batch_size
        self.rngs = [np.random.default_rng([int(s), 11]) for s in seeds]
        self.subset_sizes = self.masks.sum(1)
        self.steps_per_epoch = -(-self.subset_sizes // batch_size)  # ceil; 0 for an empty subset
        self.max_steps = int(self.steps_per_epoch.max(initial=0))

    def next_epoch(self) -> tuple[np.ndarray, np.ndarray]:
        K, n = self.masks.shape
        keys = np.stack([rng.random(n) for rng in self.rngs]) if K else np.zeros((0, n))
        # excluded points sort after every included one, in index order; with every key
        # distinct (a tie of two 53-bit uniforms among n ≤ 10⁵ has probability < 10⁻⁶) the
        # default sort gives the stable sort's order, 3x faster (SIMD quicksort)
        keys = np.where(self.masks, keys, 2.0 + np.arange(n) / max(n, 1))
        order = np.argsort(keys, axis=1)
        width = self.max_steps * self.batch_size
        if width > n:
            order = np.pad(order, ((0, 0), (0, width - n)))
        order = order[:, :width]
        valid = np.arange(width)[None, :] < self.subset_sizes[:, None]
        return order, valid


def lr_factors(schedule: str, step: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Multiplier of the base lr for model-local step ``step`` of ``total`` (float[K])."""
    frac = step / np.maximum(total, 1)
    if schedule == "constant":
        return np.ones_like(frac, dtype=np.float64)
    if schedule == "linear":
        return 1.0 - frac
    if schedule == "triangle":  # warm up over the first fifth, then decay linearly to zero
        peak = 0.2
        warm_up = (frac + 1.0 / np.maximum(total, 1)) / peak
        return np.where(frac < peak, warm_up, (1.0 - frac) / (1.0 - peak))
    if schedule == "airbench":  # 0.2 -> 1 over the first 23%, then down to 0.07 (airbench94)
        peak = 0.23
        return np.where(
            frac < peak, 0.2 + 0.8 * frac / peak, 1.0 - 0.93 * (frac - peak) / (1.0 - peak)
        )
    raise ValueError(f"unknown schedule {schedule!r}")


def interval_lr(
    schedule: str, base_lr: float, steps_per_epoch: int, epochs: int, first_epoch: int,
    last_epoch: int,
) -> float:
    """Mean learning rate over the steps of epochs ``first_epoch .. last_epoch`` (0-based,
    inclusive) of one model: the step size in force between two checkpoints (TracIn's η)."""
    total = steps_per_epoch * epochs
    steps = np.arange(first_epoch * steps_per_epoch, (last_epoch + 1) * steps_per_epoch)
    if steps.size == 0:
        return 0.0
    return float(base_lr * lr_factors(schedule, steps, np.full(steps.shape, total)).mean())
