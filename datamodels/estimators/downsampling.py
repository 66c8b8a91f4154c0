"""Empirical influence and memorization by downsampling (Feldman & Zhang 2020).

Models are trained on random α-fraction subsets. For target t and training point i

    infl(i, t) = mean(Y_t | M_i = 1) − mean(Y_t | M_i = 0)
    mem(i)     = infl(i, i)   on the train split's own margins / 0-1 correctness

with Welch standard errors. Both are one chunked pass of matrix products over the table
(`datamodels.estimators.diffmeans`). Columns that are in every model or in none score 0 with
stderr inf; the output never contains NaN.
"""

from __future__ import annotations

import numpy as np

from datamodels.estimators.base import Scores
from datamodels.estimators.diffmeans import (
    DEFAULT_CHUNK_ROWS,
    difference_of_means,
    self_difference_of_means,
)


def downsampling(
    masks: np.ndarray, margins: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Scores:
    """Feldman-Zhang empirical influence of every training point on every target.

    masks: bool[m, n_train], model r's training subset; margins: float[m, T], model r's
    margin (or 0/1 correctness) on each target.
    Returns `Scores` with values, stderr float32[T, n_train].
    """
    return difference_of_means(masks, margins, chunk_rows=chunk_rows)


def memorization(
    masks: np.ndarray, train_margins: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Scores:
    """Feldman-Zhang memorization (self-influence) of every training point.

    masks: bool[m, n_train]; train_margins: float[m, n_train], column i = model r's margin or
    0/1 correctness on training example i (the train split's eval columns, in
    ``train_position`` order). Returns `Scores` with values, stderr float32[n_train]:
    mem(i) = mean(Y_i | i trained on) − mean(Y_i | i held out).
    """
    return self_difference_of_means(masks, train_margins, chunk_rows=chunk_rows)
