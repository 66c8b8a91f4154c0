"""Truncated Monte-Carlo Shapley (Ghorbani & Zou 2019) from models trained on permutation
prefixes.

For P random permutations π of the n training points, the model trained on the first k
points of π ("prefix k") gives the marginal contribution of the k-th point:

    c_π(π_k, t) = U_t(π_{≤k}) − U_t(π_{≤k−1}),        φ(i, t) ≈ (1/P) Σ_π c_π(i, t).

Truncation: a walk may stop early (once U is within tolerance of U(full data)); every point
after the last trained prefix gets contribution 0 in that permutation, and still counts in
the average over P. Without truncation this is an unbiased estimate of the Shapley value.

Row layout (one row per trained prefix model; rows in any order):
    perm_id: int[m]   which permutation (P = number of distinct ids)
    step:    int[m]   prefix length k; 0 = the empty prefix
    added:   int[m]   the point added at this step, π_k (train position); −1 at step 0
    margins: float[m, T]  U_t(prefix) for every target
Every step k ≥ 1 of a permutation needs its step k−1 row (step 0 may instead come from
``empty_margins``, the empty model's margins, identical for all permutations when the
trainer is deterministic — e.g. logreg's all-zero model gives 0).

`tmc_permutation` / `tmc_prefix_masks` make the prefixes a pure function of
(seed, perm_id), so a plan can build masks and rows from ids alone.

Standard error (``STDERR_CONSTRUCTION``): the sample standard deviation of a point's P
per-walk contributions over sqrt(P), widened by t_{P−1, 0.975} / 1.96 so that the usual
±1.96·SE interval is the Student-t interval over walks. Per-walk contributions are
heavy-tailed (large and rare when the point joins a near-empty prefix), and with few walks
the normal interval is too short; the factor is 1.13 at 18 walks, 1.02 at 72 and tends to 1.
``benchmarks/tmc_coverage.py`` measures the coverage of both constructions on exact games.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import sparse, stats

from datamodels.estimators.base import (
    EstimatorInputError,
    Scores,
    as_margins,
    as_row_vector,
    check_finite,
    to_scores,
)

# Keeps permutation streams apart from other seeded streams derived from the same seed.
_STREAM_TAG = zlib.crc32(b"tmc-shapley")

# Names how `tmc_shapley` builds its standard error; part of the method's settings so a run's
# tmc scores are recomputed when the construction changes.
STDERR_CONSTRUCTION = "student-t-over-walks"


def tmc_permutation(seed: int, perm_id: int, n_train: int) -> np.ndarray:
    """int64[n_train]: permutation ``perm_id``'s order of the training points, π_1..π_n."""
    if perm_id < 0 or n_train < 0:
        raise EstimatorInputError(f"perm_id and n_train must be >= 0, got {perm_id}, {n_train}")
    return np.random.default_rng([seed, _STREAM_TAG, perm_id]).permutation(n_train).astype(np.int64)


def tmc_prefix_masks(
    seed: int, perm_id: int, n_train: int, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Masks and added points of prefixes ``steps`` of permutation ``perm_id``.

    steps: int[k], prefix lengths in [0, n_train]. Returns (masks bool[k, n_train],
    added int64[k]) with added = π_step (−1 for step 0), ready to be rows of `tmc_shapley`.
    """
    steps = np.asarray(steps, dtype=np.int64)
    if steps.ndim != 1 or ((steps < 0) | (steps > n_train)).any():
        raise EstimatorInputError(f"steps must be a 1-D array of prefix lengths in [0, {n_train}]")
    order = tmc_permutation(seed, perm_id, n_train)
    position = np.empty(n_train, dtype=np.int64)
    position[order] = np.arange(n_train)
    masks = position[None, :] < steps[:, None]
    added = np.where(steps > 0, order[np.maximum(steps - 1, 0)], -1)
    return masks, added


def tmc_shapley(
    perm_id: np.ndarray,
    step: np.ndarray,
    added: np.ndarray,
    margins: np.ndarray,
    n_train: int,
    *,
    empty_margins: np.ndarray | None = None,
) -> Scores:
    """TMC-Shapley values of every training point for every target.

    Rows as in the module docstring; n_train: number of training points.
    Returns `Scores` with values, stderr float32[T, n_train]; stderr is the standard error
    of the mean over the P permutations times t_{P−1, 0.975} / 1.96, so ±1.96·stderr is the
    95% Student-t interval over walks (inf when P < 2). It does not include the bias of
    truncation: a point that no walk reached scores 0 with stderr 0.
    """
    perm_id, step, added, margins = _checked_rows(perm_id, step, added, margins, n_train)
    m = step.shape[0]
    order = np.lexsort((step, perm_id))
    perm_id, step, added, margins = perm_id[order], step[order], added[order], margins[order]
    same_perm = perm_id[1:] == perm_id[:-1]
    duplicate = same_perm & (step[1:] == step[:-1])
    if duplicate.any():
        j = int(np.flatnonzero(duplicate)[0])
        raise EstimatorInputError(f"perm_id {perm_id[j]} has two rows for step {step[j]}")
    point_key = perm_id[step > 0] * (n_train + 1) + added[step > 0]
    if np.unique(point_key).size != point_key.size:
        raise EstimatorInputError("a permutation adds the same training point twice")

    # After the sort, a step-k row's predecessor is the row before it, if it is step k−1.
    has_prev = np.zeros(m, dtype=bool)
    has_prev[1:] = same_perm & (step[1:] == step[:-1] + 1)
    uses_empty = (step == 1) & ~has_prev
    missing = (step > 0) & ~has_prev & ~(uses_empty & (empty_margins is not None))
    if missing.any():
        j = int(np.flatnonzero(missing)[0])
        raise EstimatorInputError(
            f"perm_id {perm_id[j]} step {step[j]} has no step {step[j] - 1} row to difference "
            "against (pass empty_margins for a shared empty model)"
        )

    previous = np.zeros_like(margins)
    previous[1:][has_prev[1:]] = margins[:-1][has_prev[1:]]
    if empty_margins is not None:
        empty = np.asarray(empty_margins, dtype=np.float64).reshape(-1)
        if empty.shape != (margins.shape[1],):
            raise EstimatorInputError(
                f"empty_margins must have one entry per target ({margins.shape[1]}), "
                f"got {empty.shape}"
            )
        previous[uses_empty] = empty
    contributing = step > 0
    contribution = margins[contributing] - previous[contributing]

    n_perms = np.unique(perm_id).size
    return _mean_over_permutations(added[contributing], contribution, n_train, n_perms, m)


def _checked_rows(
    perm_id: np.ndarray, step: np.ndarray, added: np.ndarray, margins: np.ndarray, n_train: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(perm_id, step, added)`` int64[m] and finite float64[m, T] margins."""
    step = np.asarray(step)
    if step.ndim != 1:
        raise EstimatorInputError(f"step must be 1-D (one entry per model), got shape {step.shape}")
    m = step.shape[0]
    perm_id = as_row_vector(perm_id, m, "perm_id", np.int64)
    step = as_row_vector(step, m, "step", np.int64)
    added = as_row_vector(added, m, "added", np.int64)
    if m == 0:
        raise EstimatorInputError("no prefix rows given")
    margins = np.asarray(as_margins(margins, m), dtype=np.float64)
    check_finite(margins, np.arange(m))
    if (step < 0).any() or (step > n_train).any():
        raise EstimatorInputError(f"step must lie in [0, {n_train}]")
    if ((step == 0) != (added == -1)).any() or (added >= n_train).any() or (added < -1).any():
        raise EstimatorInputError(
            f"added must be -1 exactly at step 0 and a train position in [0, {n_train}) otherwise"
        )
    return perm_id, step, added, margins


def _mean_over_permutations(
    added: np.ndarray, contribution: np.ndarray, n_train: int, n_perms: int, m: int
) -> Scores:
    """Each point's marginal contributions (``contribution[j]`` float[T] of adding point
    ``added[j]``) summed and averaged over the ``n_perms`` permutations, with their standard
    error; ``m`` rows were used."""
    # Sparse one-hot scatter: row r of the result sums the contributions of point r.
    scatter = sparse.csr_matrix(
        (np.ones(contribution.shape[0]), (added, np.arange(contribution.shape[0]))),
        shape=(n_train, contribution.shape[0]),
    )
    total = np.asarray(scatter @ contribution).T
    total_sq = np.asarray(scatter @ (contribution * contribution)).T
    mean = total / n_perms
    if n_perms >= 2:
        variance = np.maximum(total_sq - n_perms * mean * mean, 0.0) / (n_perms - 1)
        stderr = np.sqrt(variance / n_perms) * student_t_factor(n_perms)
    else:
        stderr = np.full_like(mean, np.inf)
    return to_scores(mean, stderr, m)


def student_t_factor(n_walks: int) -> float:
    """t_{n_walks−1, 0.975} / 1.96: widens a normal standard error over ``n_walks`` walks so
    that ±1.96·SE is the 95% Student-t interval (1 in the limit of many walks)."""
    if n_walks < 2:
        raise EstimatorInputError(f"a t interval needs at least 2 walks, got {n_walks}")
    return float(stats.t.ppf(0.975, n_walks - 1) / stats.norm.ppf(0.975))
