"""Difference of means by inclusion: the core of downsampling, memorization, Banzhaf and the
per-level terms of Owen-Shapley.

For masks M ∈ {0,1}^{m×n} and margins Y ∈ R^{m×T}, for every target t and training point i

    D(i, t)  = mean(Y_t | M_i = 1) − mean(Y_t | M_i = 0)
    SE(i, t) = sqrt(s1² / n1 + s0² / n0)                       (Welch)

where n1, n0 count the models with and without i and s1², s0² are the unbiased variances of
Y_t in the two groups. Everything follows from five sufficient statistics, accumulated in one
pass over the table in row chunks with one matrix product per chunk (never a loop over
training points):

    n1 = Mᵀ1,  S1 = Yᵀ M,  Q1 = (Y∘Y)ᵀ M,  S = Yᵀ1,  Q = (Y∘Y)ᵀ1;   S0 = S − S1, Q0 = Q − Q1.

(one GEMM: [Y, Y∘Y]ᵀ M). An optional per-model covariate x (the α of a continuous-α Owen
bin) adds x-weighted sums so each group's mean can be adjusted linearly to a common x.

Degenerate columns (i in every model or in none) have no contrast: D = 0 and SE = inf. A
group with a single model has D defined but SE = inf. The output never contains NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodels.estimators.base import (
    EstimatorInputError,
    Scores,
    as_margins,
    as_masks,
    check_finite,
    to_scores,
)

DEFAULT_CHUNK_ROWS = 8192
# Caps the float64 copy of one chunk: with n_train = 50k, 8192 rows would be 3.3 GB.
_CHUNK_BYTES = 256 * 2**20
# Caps the float64 [targets, n_train] working set (accumulators + finishing temporaries):
# 10k targets × 50k points would otherwise need tens of GB.
_BLOCK_BYTES = 2 * 2**30
_BLOCK_TEMPORARIES = 24


@dataclass
class InclusionMoments:
    """Sufficient statistics of one group of models, float64.

    Margins are shifted by a per-target constant before squaring (the mean of the first
    chunk) so that Q − S²/n does not cancel catastrophically for large, similar margins;
    the difference of means does not depend on the shift.

    n_rows: models in the group.
    n_in: float64[n_train], models that contain point i.
    sum_in, sumsq_in: float64[T, n_train] (cross) or float64[n_train] (diagonal, T = i).
    sum_all, sumsq_all: float64[T, 1] (cross) or float64[n_train] (diagonal).
    Covariate sums (None without a covariate), x centred by ``x_shift``:
    x_in, xx_in: float64[n_train] (Σ x, Σ x² over models containing i);
    xy_in: float64[T, n_train]; x_all, xx_all: float; xy_all: float64[T, 1].
    """

    n_rows: int
    n_in: np.ndarray
    sum_in: np.ndarray
    sumsq_in: np.ndarray
    sum_all: np.ndarray
    sumsq_all: np.ndarray
    x_shift: float = 0.0
    x_in: np.ndarray | None = None
    xx_in: np.ndarray | None = None
    xy_in: np.ndarray | None = None
    x_all: float = 0.0
    xx_all: float = 0.0
    xy_all: np.ndarray | None = None


def _chunk_size(chunk_rows: int, n_columns: int) -> int:
    if chunk_rows < 1:
        raise EstimatorInputError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return max(1, min(chunk_rows, _CHUNK_BYTES // (8 * max(n_columns, 1))))


def _checked_table(
    masks: np.ndarray, margins: np.ndarray, diagonal: bool, covariate: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(masks bool[m, n_train], margins float[m, T])`` checked for `accumulate_moments`."""
    masks = as_masks(masks)
    margins = as_margins(margins, masks.shape[0])
    n_train, n_targets = masks.shape[1], margins.shape[1]
    if diagonal and n_targets != n_train:
        raise EstimatorInputError(
            f"self-influence needs one margin column per training point: margins has "
            f"{n_targets} columns, masks {n_train}"
        )
    if diagonal and covariate is not None:
        raise EstimatorInputError("a covariate is only supported for the cross (T x n) table")
    return masks, margins


# Long: a single pass that updates a dozen running sums in place; helpers would only pass
# them all back and forth.
def accumulate_moments(
    masks: np.ndarray,
    margins: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    covariate: np.ndarray | None = None,
    diagonal: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> InclusionMoments:
    """One chunked pass over ``rows`` of the table → `InclusionMoments`.

    masks: bool[m, n_train]; margins: float[m, T]; rows: int[k] row subset (default: all).
    covariate: float[m] per-model value x (e.g. the model's α) to adjust for linearly in
        `moments_to_difference`; costs one more T-column block in the matrix product.
    diagonal: pair target column i with training point i only (requires T = n_train): the
        memorization / self-influence case, O(m·n) instead of O(m·n·T).
    """
    masks, margins = _checked_table(masks, margins, diagonal, covariate)
    n_train, n_targets = masks.shape[1], margins.shape[1]
    all_rows = rows is None
    row_ids = np.arange(masks.shape[0]) if all_rows else np.asarray(rows, dtype=np.int64)
    with_x = covariate is not None
    x_shift = 0.0
    if with_x:
        covariate = np.asarray(covariate, dtype=np.float64)
        x_shift = float(covariate[row_ids].mean()) if len(row_ids) else 0.0
    n_blocks = 3 if with_x else 2
    step = _chunk_size(chunk_rows, n_train + (n_blocks + 1) * n_targets)

    shift = np.zeros(n_targets)
    n_in = np.zeros(n_train)
    in_shape = (n_train,) if diagonal else (n_targets, n_train)
    sum_in, sumsq_in = np.zeros(in_shape), np.zeros(in_shape)
    sum_all, sumsq_all = np.zeros(n_targets), np.zeros(n_targets)
    x_in, xx_in = np.zeros(n_train), np.zeros(n_train)
    xy_in, xy_all = np.zeros(in_shape), np.zeros(n_targets)
    x_all = xx_all = 0.0

    for start in range(0, len(row_ids), step):
        chunk_ids = row_ids[start : start + step]
        # A slice keeps memory-mapped tables a sequential read; fancy indexing would gather.
        index = slice(start, start + len(chunk_ids)) if all_rows else chunk_ids
        y = np.array(margins[index], dtype=np.float64)
        check_finite(y, chunk_ids)
        if start == 0:
            shift = y.mean(axis=0)
        y -= shift
        m = masks[index].astype(np.float64)
        n_in += m.sum(axis=0)
        sum_all += y.sum(axis=0)
        sumsq_all += np.einsum("rt,rt->t", y, y)
        if diagonal:
            y_in = y * m
            sum_in += y_in.sum(axis=0)
            sumsq_in += np.einsum("ri,ri->i", y_in, y)
            continue
        blocks = [y, y * y]
        if with_x:
            x = covariate[chunk_ids] - x_shift
            blocks.append(y * x[:, None])
            x_in += x @ m
            xx_in += (x * x) @ m
            xy_all += x @ y
            x_all += float(x.sum())
            xx_all += float(x @ x)
        # One GEMM for all moments: [Y, Y∘Y, x∘Y]ᵀ M.
        products = np.concatenate(blocks, axis=1).T @ m
        sum_in += products[:n_targets]
        sumsq_in += products[n_targets : 2 * n_targets]
        if with_x:
            xy_in += products[2 * n_targets :]

    if diagonal:
        return InclusionMoments(len(row_ids), n_in, sum_in, sumsq_in, sum_all, sumsq_all)
    moments = InclusionMoments(
        len(row_ids), n_in, sum_in, sumsq_in, sum_all[:, None], sumsq_all[:, None]
    )
    if with_x:
        moments.x_shift, moments.x_all, moments.xx_all = x_shift, x_all, xx_all
        moments.x_in, moments.xx_in, moments.xy_in = x_in, xx_in, xy_in
        moments.xy_all = xy_all[:, None]
    return moments


def moments_to_difference(
    moments: InclusionMoments, covariate_at: float | None = None, prior_df: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """`InclusionMoments` → (D, SE), float64 of the shape of ``moments.sum_in``.

    Without covariate sums: the plain difference of means with Welch SE. With them, each
    group's mean is read off its own least-squares line y = a_g + b_g·x at x = covariate_at
    (default: the mean x of all rows),

        D = [ȳ1 + b1 (x* − x̄1)] − [ȳ0 + b0 (x* − x̄0)],

    which removes the bias of pooling models with different x in one group (models with i
    are tilted towards large α), and SE² = Σ_g s_g² (1/n_g + (x* − x̄_g)² / Sxx_g). A group
    whose x does not vary (or with < 3 models) gets b_g = 0, i.e. the plain mean.

    ``prior_df`` = d₀ > 0 moderates each group's (residual) variance towards the pooled one
    of both groups: s̃_g² = (ν_g s_g² + d₀ s_p²) / (ν_g + d₀), with ν_g the group's degrees
    of freedom and s_p² = Σ_g ν_g s_g² / Σ_g ν_g. A group of a few models then no longer
    reports a variance near zero because its few models happen to agree (as they do when
    the events that move the margin are rare); a group with ν_g ≫ d₀ keeps its own.

    D = 0 where a group is empty; SE = inf there and where a group has fewer than two
    models (d₀ = 0) or the two groups have no degree of freedom between them (d₀ > 0).
    """
    n1 = moments.n_in
    n0 = moments.n_rows - n1
    safe1, safe0 = np.maximum(n1, 1.0), np.maximum(n0, 1.0)
    sum0 = moments.sum_all - moments.sum_in
    mean1, mean0 = moments.sum_in / safe1, sum0 / safe0
    # Within-group sums of squares; clip the tiny negatives rounding can leave.
    ss1 = np.maximum(moments.sumsq_in - moments.sum_in * mean1, 0.0)
    ss0 = np.maximum(moments.sumsq_all - moments.sumsq_in - sum0 * mean0, 0.0)
    both = (n1 > 0) & (n0 > 0)
    if moments.x_in is None:
        diff = np.where(both, mean1 - mean0, 0.0)
        var1, var0, usable = _group_variances(ss1, ss0, n1 - 1.0, n0 - 1.0, prior_df)
        var_of_mean = var1 / safe1 + var0 / safe0
        return diff, np.where(both & usable, np.sqrt(var_of_mean), np.inf)

    at = 0.0 if covariate_at is None else covariate_at - moments.x_shift
    x0_sum = moments.x_all - moments.x_in
    xbar1, xbar0 = moments.x_in / safe1, x0_sum / safe0
    sxx1 = np.maximum(moments.xx_in - moments.x_in * xbar1, 0.0)
    sxx0 = np.maximum(moments.xx_all - moments.xx_in - x0_sum * xbar0, 0.0)
    # A slope needs x to vary within the group: compare with the spread over all rows.
    spread = moments.xx_all / max(moments.n_rows, 1)
    fit1 = (n1 >= 3) & (sxx1 > 1e-9 * spread * n1)
    fit0 = (n0 >= 3) & (sxx0 > 1e-9 * spread * n0)
    sxy1 = moments.xy_in - moments.x_in * mean1
    sxy0 = (moments.xy_all - moments.xy_in) - x0_sum * mean0
    slope1 = np.where(fit1, sxy1 / np.where(fit1, sxx1, 1.0), 0.0)
    slope0 = np.where(fit0, sxy0 / np.where(fit0, sxx0, 1.0), 0.0)
    level1 = mean1 + slope1 * (at - xbar1)
    level0 = mean0 + slope0 * (at - xbar0)
    diff = np.where(both, level1 - level0, 0.0)

    # Residual sums of squares about each group's line, with n_g − 1 − (slope fitted) df.
    rss1 = np.maximum(ss1 - slope1 * sxy1, 0.0)
    rss0 = np.maximum(ss0 - slope0 * sxy0, 0.0)
    var1, var0, usable = _group_variances(rss1, rss0, n1 - 1.0 - fit1, n0 - 1.0 - fit0, prior_df)

    def leverage(n, fit, sxx, xbar):
        extra = np.where(fit, (at - xbar) ** 2 / np.where(fit, sxx, 1.0), 0.0)
        return 1.0 / np.maximum(n, 1.0) + extra

    variance = var1 * leverage(n1, fit1, sxx1, xbar1) + var0 * leverage(n0, fit0, sxx0, xbar0)
    return diff, np.where(both & usable, np.sqrt(variance), np.inf)


def _group_variances(
    ss1: np.ndarray, ss0: np.ndarray, df1: np.ndarray, df0: np.ndarray, prior_df: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s̃1², s̃0², usable) from the groups' sums of squares ``ss_g`` on ``df_g`` degrees of
    freedom: plain s_g² = ss_g / df_g (usable where both df_g ≥ 1) for ``prior_df`` = 0, else
    moderated towards the pooled variance (`moments_to_difference`; usable where
    df1 + df0 ≥ 1)."""
    df1, df0 = np.maximum(df1, 0.0), np.maximum(df0, 0.0)
    if prior_df <= 0.0:
        var1, var0 = ss1 / np.maximum(df1, 1.0), ss0 / np.maximum(df0, 1.0)
        return var1, var0, (df1 >= 1) & (df0 >= 1)
    pooled = (ss1 + ss0) / np.maximum(df1 + df0, 1.0)
    var1 = (ss1 + prior_df * pooled) / (df1 + prior_df)
    var0 = (ss0 + prior_df * pooled) / (df0 + prior_df)
    return var1, var0, (df1 + df0) >= 1


def target_blocks(n_targets: int, n_train: int) -> list[slice]:
    """Column blocks of the margins small enough that one block's float64 [block, n_train]
    statistics and the temporaries of `moments_to_difference` fit ``_BLOCK_BYTES``.

    Each block re-reads the masks, which costs little next to the product with its targets.
    """
    size = max(1, _BLOCK_BYTES // (8 * _BLOCK_TEMPORARIES * max(n_train, 1)))
    return [slice(start, min(start + size, n_targets)) for start in range(0, n_targets, size)]


def difference_of_means(
    masks: np.ndarray,
    margins: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Scores:
    """D(i, t) = mean(Y_t | M_i=1) − mean(Y_t | M_i=0) with its Welch standard error.

    masks: bool[m, n_train]; margins: float[m, T]; rows: optional int[k] subset of models.
    Returns `Scores` with values, stderr float32[T, n_train].
    """
    masks = as_masks(masks)
    margins = as_margins(margins, masks.shape[0])
    values = np.empty((margins.shape[1], masks.shape[1]), dtype=np.float32)
    stderr = np.empty_like(values)
    n_rows = masks.shape[0] if rows is None else len(rows)
    for block in target_blocks(margins.shape[1], masks.shape[1]):
        moments = accumulate_moments(masks, margins[:, block], rows=rows, chunk_rows=chunk_rows)
        values[block], stderr[block] = moments_to_difference(moments)
    return to_scores(values, stderr, n_rows)


def self_difference_of_means(
    masks: np.ndarray, margins: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Scores:
    """D(i, i): the diagonal of `difference_of_means` when margin column i is train point i.

    masks: bool[m, n_train]; margins: float[m, n_train]. Returns values, stderr float32[n_train].
    """
    moments = accumulate_moments(masks, margins, diagonal=True, chunk_rows=chunk_rows)
    diff, stderr = moments_to_difference(moments)
    return to_scores(diff, stderr, moments.n_rows)
