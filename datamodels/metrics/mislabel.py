"""Mislabel detection: how fast ranking training points by self-influence finds flipped labels.

Inspect training points from the highest self score down (a flipped label is fit only by
memorising it, so including it raises its own margin most). For every fraction f of the
training set inspected, report the fraction of flipped labels found; the area under that
curve is 0.5 for a random order and 1 for a perfect one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The code version of the mislabel rows of ``evaluate`` (``metric.mislabel``); bump with any change
# that can move a number it computes for the same inputs.
VERSION = 1


@dataclass(frozen=True)
class MislabelResult:
    inspected: np.ndarray  # float64[n + 1] fraction of training points inspected (0..1)
    found: np.ndarray  # float64[n + 1] fraction of flipped labels found
    auc: float

    def found_at(self, fraction: float) -> float:
        return float(np.interp(fraction, self.inspected, self.found))


def mislabel_detection(self_scores: np.ndarray, flipped: np.ndarray) -> MislabelResult:
    """self_scores: float[n_train]; flipped: bool[n_train] (at least one True)."""
    flipped = np.asarray(flipped, dtype=bool)
    if not flipped.any():
        raise ValueError("mislabel_detection needs at least one flipped label")
    order = np.argsort(-np.asarray(self_scores, dtype=np.float64), kind="stable")
    found = np.concatenate([[0.0], np.cumsum(flipped[order]) / flipped.sum()])
    inspected = np.arange(len(flipped) + 1) / len(flipped)
    return MislabelResult(inspected, found, float(np.trapezoid(found, inspected)))
