"""Agreement with leave-one-out retraining, and how far the LOO effects themselves can be
trusted.

* `loo_correlation`: Pearson and Spearman correlation of a method's scores with the LOO
  effects, pooled over every (left-out point, target) pair (``loo_pearson``,
  ``loo_spearman`` in ``evaluation.parquet``). Scale does not matter, only agreement.
* `split_half`: the LOO effects' split-half reliability. The replicates (seeds) are split
  into two disjoint halves, the even and the odd ones in order; each half gives its own
  effect per pair (the mean of its per-replicate differences), and the Pearson correlation r
  of the two over the pairs is the split-half reliability. Each half has half the seeds, so
  the Spearman–Brown value 2r / (1 + r) estimates the reliability of the effects from all
  the seeds (NaN where r < 0). A method's correlation with LOO cannot be expected above
  √reliability: below about 0.5 the LOO effects are mostly seed noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

# The code version of the LOO rows of ``evaluate`` (``metric.loo``): `loo_correlation`,
# `split_half` and the LOO effects ``evaluate`` computes with `estimators.loo` for them; bump with
# any change that can move a number it computes for the same inputs.
VERSION = 1


def _correlation(x: np.ndarray, y: np.ndarray, rank: bool) -> float:
    """Pearson (Spearman when ``rank``) of two float vectors; NaN below 2 values or for a
    constant one."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y)[0] if rank else stats.pearsonr(x, y)[0])


def loo_correlation(scores: np.ndarray, effects: np.ndarray) -> tuple[float, float, int]:
    """(Pearson, Spearman, pairs) of ``scores`` float[T, P] with ``effects`` float[T, P] over
    the pairs where both are finite."""
    x = np.asarray(scores, np.float64).ravel()
    y = np.asarray(effects, np.float64).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    return _correlation(x, y, rank=False), _correlation(x, y, rank=True), int(keep.sum())


@dataclass(frozen=True)
class SplitHalf:
    """``pearson``: r between the two halves' effects; ``spearman_brown``: 2r / (1 + r);
    ``spearman``: the rank correlation of the halves; ``n_pairs`` compared; ``halves``: the
    replicates in each half."""

    pearson: float
    spearman_brown: float
    spearman: float
    n_pairs: int
    halves: tuple[int, int]


def spearman_brown(r: float) -> float:
    """Reliability of a measure twice as long as one with reliability ``r``: 2r / (1 + r);
    NaN for a negative ``r`` (halves that disagree have no reliability to extrapolate)."""
    return float(2 * r / (1 + r)) if np.isfinite(r) and r >= 0 else float("nan")


def split_half(differences: np.ndarray) -> SplitHalf:
    """The split-half reliability of LOO effects from ``differences`` float[R, ...]: the
    per-replicate differences (full − without i) of R replicates, NaN where missing. Half A
    holds replicates 0, 2, 4, ..., half B 1, 3, 5, ...; each half's effect is its nanmean; the
    pairs compared are those finite in both halves. NaN values below two replicates."""
    d = np.asarray(differences, np.float64)
    R = d.shape[0]
    if R < 2:
        return SplitHalf(float("nan"), float("nan"), float("nan"), 0, (R, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (np.nansum(d[0::2], 0) / np.isfinite(d[0::2]).sum(0)).ravel()
        b = (np.nansum(d[1::2], 0) / np.isfinite(d[1::2]).sum(0)).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    r = _correlation(a[keep], b[keep], rank=False)
    return SplitHalf(
        pearson=r,
        spearman_brown=spearman_brown(r),
        spearman=_correlation(a[keep], b[keep], rank=True),
        n_pairs=int(keep.sum()),
        halves=(len(range(0, R, 2)), len(range(1, R, 2))),
    )
