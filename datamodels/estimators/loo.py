"""Leave-one-out retraining.

    LOO(i, t) = mean(Y_t | full models) − mean(Y_t | models without i)

Positive = removing i lowers the margin, i.e. including i helps (the run-wide convention).

Row layout: ``left_out: int[m]`` is −1 for a model trained on the full training set and the
train position i for a model trained on everything but i; ``margins: float[m, T]``. Several
rows with the same ``left_out`` (different seeds) are averaged. Points never left out score 0
with stderr inf.

Standard error: training noise (seed variance) is assumed the same for every model, so one
variance per target is pooled over all groups (full and every left-out point, each about its
own mean) and SE(i, t) = s_t · sqrt(1/n_full + 1/n_i). This gives an error bar with a single
seed per left-out point as long as some group has two or more models; with no replicated
group at all (no degrees of freedom) stderr is inf.

Paired (`paired_loo`, the ``paired_loo`` plan kind): every model carries a replicate key;
within a replicate the full model and the model without i share their seed, initialisation
and batch order (i weighted 0), so d_r(i, t) = Y_t(full_r) − Y_t(without i_r) is one draw of
the effect free of seed noise. LOO(i, t) = mean_r d_r(i, t) over the replicates that have
both models, SE(i, t) = sd_r(d_r(i, t)) / √n_i (inf below two replicates).
`loo_differences` returns the d_r themselves (the split-half reliability reads them).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from datamodels.estimators.base import (
    EstimatorInputError,
    Scores,
    as_margins,
    as_row_vector,
    check_finite,
    to_scores,
)


def loo(left_out: np.ndarray, margins: np.ndarray, n_train: int) -> Scores:
    """Leave-one-out scores of every training point for every target.

    left_out: int[m], −1 for full models, else the left-out train position;
    margins: float[m, T]; n_train: number of training points.
    Returns `Scores` with values, stderr float32[T, n_train].
    """
    left_out, margins = _check_left_out(left_out, margins, n_train)
    m = left_out.shape[0]

    # Group g = left_out + 1: group 0 holds the full models, group i+1 the models without i.
    group = left_out + 1
    n_groups = n_train + 1
    one_hot = sparse.csr_matrix((np.ones(m), (group, np.arange(m))), shape=(n_groups, m))
    count = np.bincount(group, minlength=n_groups).astype(np.float64)
    group_sum = np.asarray(one_hot @ margins)  # [n_groups, T]
    group_mean = group_sum / np.maximum(count, 1.0)[:, None]

    without_i = group_mean[1:]
    seen = count[1:] > 0
    values = np.where(seen[:, None], group_mean[:1] - without_i, 0.0).T  # [T, n_train]

    residual = margins - group_mean[group]
    dof = m - int((count > 0).sum())
    if dof > 0:
        pooled_sd = np.sqrt(np.einsum("rt,rt->t", residual, residual) / dof)  # [T]
        scale = np.sqrt(1.0 / count[0] + 1.0 / np.maximum(count[1:], 1.0))  # [n_train]
        stderr = np.where(seen[None, :], pooled_sd[:, None] * scale[None, :], np.inf)
    else:
        stderr = np.full(values.shape, np.inf)
    return to_scores(values, stderr, m)


def left_out_points(masks: np.ndarray) -> np.ndarray:
    """int64[m]: −1 for a full-data mask, else the one train position the mask leaves out."""
    masks = np.asarray(masks, dtype=bool)
    return np.where(masks.all(1), -1, np.argmin(masks, axis=1)).astype(np.int64)


def replicate_keys(ids: np.ndarray, mask_index: np.ndarray, seeds: int) -> np.ndarray:
    """int64[m]: one key per replicate of a plan (model id ``first + j·seeds + r`` of mask j,
    replicate r gives ``first + r``), pairing each model with its replicate's full model."""
    return np.asarray(ids, np.int64) - np.asarray(mask_index, np.int64) * int(seeds)


def _check_left_out(left_out: np.ndarray, margins: np.ndarray, n_train: int):
    """(int64[m] left_out, float64[m, T] margins), or one `EstimatorInputError` line."""
    left_out = np.asarray(left_out)
    if left_out.ndim != 1 or left_out.size == 0:
        raise EstimatorInputError(
            f"left_out must be a non-empty 1-D array, got shape {left_out.shape}"
        )
    m = left_out.shape[0]
    left_out = as_row_vector(left_out, m, "left_out", np.int64)
    margins = np.asarray(as_margins(margins, m), dtype=np.float64)
    check_finite(margins, np.arange(m))
    if ((left_out < -1) | (left_out >= n_train)).any():
        raise EstimatorInputError(
            f"left_out must be -1 (full model) or a train position in [0, {n_train})"
        )
    if not (left_out == -1).any():
        raise EstimatorInputError("loo needs at least one full model (left_out == -1)")
    return left_out, margins


def _check_rows(left_out: np.ndarray, replicate: np.ndarray, margins: np.ndarray, n_train: int):
    left_out, margins = _check_left_out(left_out, margins, n_train)
    replicate = as_row_vector(replicate, left_out.shape[0], "replicate", np.int64)
    return left_out, replicate, margins


def loo_differences(
    left_out: np.ndarray, replicate: np.ndarray, margins: np.ndarray, points: np.ndarray,
    n_train: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-replicate differences d_r(i, t) = Y_t(full_r) − Y_t(without i_r).

    left_out: int[m] (−1: full model); replicate: int[m], the key pairing a model with its
    replicate's full model (several rows with one (replicate, left_out) are averaged);
    margins: float[m, T]; points: int[P] the left-out points wanted.
    Returns (replicates int64[R] with a full model, in ascending order; d float64[R, P, T],
    NaN where replicate r has no model without point p).
    """
    left_out, replicate, margins = _check_rows(left_out, replicate, margins, n_train)
    points = np.asarray(points, dtype=np.int64)
    reps = np.unique(replicate[left_out == -1])
    found = np.minimum(np.searchsorted(reps, replicate), len(reps) - 1)
    rep_row = np.where(reps[found] == replicate, found, -1)  # -1: no full model to pair with
    slot = np.full(n_train + 1, -1, dtype=np.int64)
    slot[0] = 0  # the full models
    slot[points + 1] = np.arange(1, len(points) + 1)
    column = slot[left_out + 1]
    keep = (rep_row >= 0) & (column >= 0)
    R, P, T = len(reps), len(points), margins.shape[1]
    total = np.zeros((R, P + 1, T))
    count = np.zeros((R, P + 1))
    np.add.at(total, (rep_row[keep], column[keep]), margins[keep])
    np.add.at(count, (rep_row[keep], column[keep]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count[:, :, None]  # NaN where a (replicate, mask) has no model
    return reps, mean[:, :1, :] - mean[:, 1:, :]


def paired_loo(
    left_out: np.ndarray, replicate: np.ndarray, margins: np.ndarray, n_train: int
) -> Scores:
    """Leave-one-out scores from paired models: the mean over replicates of
    d_r(i, t) = Y_t(full_r) − Y_t(without i_r), with SE = sd_r / √n_i (`loo_differences`).

    Returns `Scores` with values, stderr float32[T, n_train]; points never left out (or
    without a paired full model) score 0 with stderr inf.
    """
    left_out, replicate, margins = _check_rows(left_out, replicate, margins, n_train)
    points = np.unique(left_out[left_out >= 0])
    _, d = loo_differences(left_out, replicate, margins, points, n_train)
    n = np.isfinite(d).sum(0)  # [P, T]
    T = margins.shape[1]
    values = np.zeros((T, n_train))
    stderr = np.full((T, n_train), np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(d, 0) / n
        centred = np.where(np.isfinite(d), d - mean[None], 0.0)
        sd = np.sqrt((centred**2).sum(0) / (n - 1))
        se = np.where(n >= 2, sd / np.sqrt(n), np.inf)
    values[:, points] = np.where(n > 0, mean, 0.0).T
    stderr[:, points] = np.where(n > 0, se, np.inf).T
    return to_scores(values, stderr, len(left_out))
