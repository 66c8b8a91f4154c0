"""Brittleness of predictions, predicted by the datamodels (Ilyas et al. 2022, §4.2).

For target t with datamodel (b_t, w_t), the predicted margin with every training example is
g_t = b_t + Σ_i w_t,i; removing a set R predicts g_t − Σ_{i∈R} w_t,i. The smallest support
is k_t = the smallest k such that g_t − (sum of the k largest positive weights) < 0:
removing that many of the most helpful training points flips the prediction. k_t = 0 when
the prediction is already wrong (g_t ≤ 0); k_t = inf when removing every helpful point does
not flip it. Predicted only: verification by retraining is a separate (removal) plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodels.applications.tables import split_scores
from datamodels.store import Run


@dataclass(frozen=True)
class BrittlenessResult:
    """support: float[T] smallest k (0 = already wrong, inf = never flips);
    predicted_margin: float[T]; n_train: int."""

    support: np.ndarray
    predicted_margin: np.ndarray
    n_train: int

    def fraction_flipped(self, fraction_of_train: float) -> float:
        """Fraction of the correctly predicted targets that flip after removing at most
        ``fraction_of_train`` · n_train of the training set."""
        correct = self.predicted_margin > 0
        if not correct.any():
            return float("nan")
        budget = np.floor(fraction_of_train * self.n_train)
        return float((self.support[correct] <= budget).mean())


def brittleness(weights: np.ndarray, predicted_margin: np.ndarray) -> BrittlenessResult:
    """weights: float[T, n_train] (positive = helpful); predicted_margin: float[T]."""
    weights = np.asarray(weights, dtype=np.float64)
    margin = np.asarray(predicted_margin, dtype=np.float64)
    helpful = np.sort(np.clip(weights, 0.0, None), axis=1)[:, ::-1]
    removed = np.cumsum(helpful, axis=1)  # [T, n_train]: sum of the top-k, k = 1..n
    flips = (margin[:, None] - removed) < 0
    first = np.where(flips.any(1), flips.argmax(1) + 1.0, np.inf)
    support = np.where(margin <= 0, 0.0, first)
    return BrittlenessResult(support, margin, weights.shape[1])


def brittleness_from_run(run: Run) -> BrittlenessResult:
    """`brittleness` of the run's test targets from ``datamodels/targets.parquet`` (bias)
    and the datamodel weights."""
    split = split_scores(run, "datamodels")
    bias = run.targets().set_index("target")["bias"]
    b = bias.reindex(split.test_targets).to_numpy(np.float64)
    margin = b + split.test_scores.astype(np.float64).sum(1)
    return brittleness(split.test_scores, margin)
