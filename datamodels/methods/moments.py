"""Averaging a gradient method's per-model tables: running mean and standard error."""

from __future__ import annotations

import numpy as np


class Moments:
    """Running mean and standard error of the mean over models; with ``where`` (bool, the
    shape of the values) each entry is averaged over the models that hold it only (an entry
    no model holds: 0)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.count, self.total, self.squares = 0, np.zeros(shape), np.zeros(shape)

    def add(self, values: np.ndarray, where: np.ndarray | None = None) -> None:
        if where is None:
            self.count = self.count + 1
        else:
            self.count = self.count + where.astype(np.int64)
            values = np.where(where, values, 0.0)
        self.total += values
        self.squares += values * values

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(mean, stderr = std/√M; None with fewer than 2 models anywhere)."""
        count = np.maximum(self.count, 1)
        mean = self.total / count
        if np.max(self.count) < 2:
            return mean, None
        spread = np.maximum(self.squares / count - mean * mean, 0.0)
        var = np.where(self.count >= 2, spread * count / np.maximum(count - 1, 1), 0.0)
        return mean, np.sqrt(var / count)
