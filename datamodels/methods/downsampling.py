"""``downsampling`` and ``downsampling_correct`` (Feldman & Zhang 2020): the difference of
mean utility between the models of ``estimate.plan`` that hold a training point and those
that do not; utility = the target's margin, or its 0/1 correctness. Self scores: the same
difference on each training point's own utility (``estimators.memorization``)."""

from __future__ import annotations

import numpy as np

from datamodels import estimators as est
from datamodels.methods.base import PlanTable, RetrainingMethod


class Downsampling(RetrainingMethod):
    name = "downsampling"
    correctness = False  # utility: the margin (True: 0/1 correctness, margin > 0)

    def utility(self, table: PlanTable, targets: np.ndarray) -> np.ndarray:
        """float32[m, len(targets)]: each model's utility on the targets."""
        utility = table.margins[:, targets]
        return (utility > 0).astype(np.float32) if self.correctness else utility

    def scores(self, table: PlanTable, targets: np.ndarray) -> est.Scores:
        return est.downsampling(table.masks, self.utility(table, targets))

    def self_scores(self, table: PlanTable, train_targets: np.ndarray, block: int = 512):
        scores = est.memorization(table.masks, self.utility(table, train_targets))
        return scores.values, scores.stderr


class DownsamplingCorrect(Downsampling):
    name = "downsampling_correct"
    correctness = True
