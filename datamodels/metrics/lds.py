"""Linear datamodeling score (Park et al. 2023).

For held-out subsets S_j (masks bool[J, n_train]) with true margins f_t(S_j) (float[J, T],
averaged over the models trained on the same subset), a score matrix tau (float[T, n_train])
predicts g_t(S_j) = sum_{i in S_j} tau[t, i]. Then

    LDS_t = Spearman_j( f_t(S_j), g_t(S_j) ),     LDS = mean_t LDS_t,

over the targets whose true margins vary across the subsets: the same targets for every
method, since they depend on the retrained models only (a target whose true margins are
constant has no ranking to predict: reported, not averaged). A method whose prediction is
constant on such a target (e.g. a LASSO datamodel with every weight zero) ranks nothing, and
counts as 0 correlation there rather than being dropped, so no method is averaged over a
friendlier set of targets than another. The subsets must never have been used to fit tau.

The *single-model* LDS (Ilyas & Engstrom 2025) is the same score on a ``single_model`` plan:
every model shares one seed and one batch order and differs only in the points it drops, so
the ranking measures attribution without the noise of retraining; it is reported per drop
fraction (``single_model_lds``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

# The code version of the LDS numbers (`lds`, `single_model_lds`, `average_replicates`): the
# ``evaluate``, ``alpha_effect`` and ``lds_curve`` stages record it as ``metric.lds``; bump with
# any change that can move a number it computes for the same inputs.
VERSION = 1


@dataclass(frozen=True)
class LDSResult:
    value: float  # mean over the targets whose true margins vary (nan if none)
    per_target: np.ndarray  # float64[T], nan where the true margins are constant
    n_targets: int  # targets whose true margins vary (the same for every method)
    n_subsets: int
    n_constant: int = 0  # of those, targets the scores predict a constant on (counted as 0)


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64[T]: Spearman correlation of a[:, t] with b[:, t] (average ranks; nan if constant)."""
    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra -= ra.mean(0)
    rb -= rb.mean(0)
    den = np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def average_replicates(masks: np.ndarray, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge rows with identical masks (several seeds of one subset) into their mean margins.

    masks: bool[m, n], margins: float[m, T] -> (bool[J, n], float64[J, T]) with J distinct masks."""
    packed = np.packbits(masks, axis=1)
    _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(first), margins.shape[1]))
    np.add.at(sums, inverse, margins)
    counts = np.bincount(inverse, minlength=len(first))
    return masks[first], sums / counts[:, None]


def lds(scores: np.ndarray, masks: np.ndarray, true_margins: np.ndarray) -> LDSResult:
    """scores: float[T, n_train]; masks: bool[J, n_train]; true_margins: float[J, T]."""
    scores = np.asarray(scores, dtype=np.float64)
    if masks.shape[1] != scores.shape[1] or true_margins.shape != (masks.shape[0], scores.shape[0]):
        raise ValueError(
            f"lds: scores {scores.shape}, masks {masks.shape} and margins {true_margins.shape} "
            "do not line up"
        )
    predicted = masks.astype(np.float64) @ scores.T
    true_margins = np.asarray(true_margins, dtype=np.float64)
    per_target = spearman_columns(true_margins, predicted)
    if len(true_margins):
        defined = np.ptp(true_margins, axis=0) > 0
    else:
        defined = np.zeros(true_margins.shape[1], dtype=bool)
    constant = defined & ~np.isfinite(per_target)  # the truth varies, the prediction does not
    per_target = np.where(constant, 0.0, np.where(defined, per_target, np.nan))
    value = float(per_target[defined].mean()) if defined.any() else float("nan")
    return LDSResult(
        value, per_target, int(defined.sum()), int(masks.shape[0]), int(constant.sum())
    )


def single_model_lds(
    scores: np.ndarray, masks: np.ndarray, margins: np.ndarray, drops: tuple[float, ...]
) -> dict[float, LDSResult]:
    """LDS per drop fraction of a ``single_model`` plan: masks bool[m, n_train] (the kept
    sets), margins float[m, T] (scores' targets) -> {fraction: LDSResult} for the fractions
    with at least 3 distinct subsets (a model belongs to the fraction whose dropped count,
    round(fraction·n), it has; the full-set model belongs to none)."""
    n = masks.shape[1]
    dropped = n - masks.sum(1)
    results = {}
    for fraction in drops:
        rows = dropped == int(round(fraction * n))
        if not dropped[rows].any():
            continue
        subsets, true_margins = average_replicates(masks[rows], margins[rows])
        if len(subsets) >= 3:
            results[float(fraction)] = lds(scores, subsets, true_margins)
    return results
