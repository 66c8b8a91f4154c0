"""Batched LASSO paths over boolean mask matrices: the datamodel regression.

For every target ``t`` (a column of ``margins: float[m, T]``) and every λ on its path, solve

    min_{b, w}  1/(2m) ||y_t - b·1 - M w||_2^2 + λ ||w||_1          (M = masks as 0/1)

with the bias ``b`` unpenalised: exactly scikit-learn's ``Lasso(alpha=λ, fit_intercept=True)``.
At the optimum ``b = mean(y_t) - mean(M, 0) · w``. Weights are in raw mask units (no
standardisation is applied, so there is nothing to undo).

* λ path, per target: ``λ_k = λ_max · eps^(k / (K-1))``, k = 0..K-1, where
  ``λ_max = max_j |Xc_j^T yc| / m`` is the smallest λ with ``w = 0`` (``Xc``, ``yc`` centred).
  Defaults ``K = n_lambdas = 20``, ``eps = 1e-3`` (scikit-learn's eps). Warm starts along it.
* Convergence: duality gap ``≤ tol · ||yc||² / m`` with the dual norm taken over all ``n``
  columns (scikit-learn's criterion and meaning of ``tol``; default 1e-4).
* Columns with zero variance on the fitting rows (always or never in the subset) get
  weight 0. A target with ``λ_max = 0`` (e.g. constant) gets ``w = 0``, ``b = mean(y)`` and,
  by convention, ``lam = 0``.

Solver (see ``_solver``): targets share ``M``, so they are solved together: per-target
working sets with batched FISTA on their covariance blocks, one chunked pass over the masks
per KKT check; targets that have converged at a λ leave the active set.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from datamodels.regress._chunks import MaskArray, MaskRows, centred_targets, merge_stats, predict_pass, row_stats
from datamodels.regress._solver import SolverOptions, StepReport, WorkingSets, solve_lambda

# Working-set covariance blocks take T · max_features² floats; this bounds them.
GRAM_BYTES = 2**30
# Validation MSE must drop by this relative amount to reset the patience counter.
MIN_REL_IMPROVEMENT = 1e-4


@dataclass
class LassoPath:
    """A full path. lams: float[T, K]; coef: float[K, T, n]; intercept: float[K, T];
    gap: float[K, T] final duality gaps; converged: bool[K, T]."""

    lams: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    gap: np.ndarray
    converged: np.ndarray


@dataclass
class LassoSelection:
    """Validation-selected datamodels (one per target).

    weights: float32[T, n] (dense; refit on train+val); bias: float32[T]; lam: float32[T]
    (chosen λ, 0 for constant targets); val_mse, val_spearman: float32[T] of the train-only
    fit at the chosen λ on the validation rows; nnz: int64[T]; lams: float32[T, K] the path;
    val_mse_path: float32[T, K] (+inf where early stopping skipped the step);
    converged: bool[T] (every solve this target needed met ``tol``).
    """

    weights: np.ndarray
    bias: np.ndarray
    lam: np.ndarray
    val_mse: np.ndarray
    val_spearman: np.ndarray
    nnz: np.ndarray
    lams: np.ndarray
    val_mse_path: np.ndarray
    converged: np.ndarray


def _check_inputs(masks: MaskArray, margins: np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate shapes/dtypes; returns margins as float[M, T]."""
    if getattr(masks, "ndim", 0) != 2 or masks.dtype not in (np.bool_, torch.bool):
        raise ValueError(f"masks must be a 2-D boolean array bool[m, n], got {getattr(masks, 'dtype', type(masks))} of shape {getattr(masks, 'shape', None)}")
    y = margins.detach().cpu().numpy() if isinstance(margins, torch.Tensor) else np.asarray(margins)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != masks.shape[0]:
        raise ValueError(f"margins must be float[m, T] with m = {masks.shape[0]} rows (one per mask row), got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        bad = np.flatnonzero(~np.isfinite(y).all(axis=1))
        raise ValueError(f"margins are not finite in {bad.size} rows (first: row {bad[0]}); drop those models before fitting")
    return y


def _as_rows(rows: np.ndarray | torch.Tensor, total: int, name: str) -> np.ndarray:
    arr = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    if arr.dtype == np.bool_:
        if arr.shape != (total,):
            raise ValueError(f"{name} as a boolean mask must have shape ({total},), got {arr.shape}")
        return np.flatnonzero(arr)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D array of row indices or a bool[{total}] mask")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= total):
        raise ValueError(f"{name} has row indices outside [0, {total})")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{name} has repeated row indices")
    return arr


def _max_features(n: int, t: int, dtype: torch.dtype, max_features: int | None) -> int:
    """Working-set cap per target. Building a target's covariance block costs ``m·s²`` for
    ``s`` columns against ``m·n`` for one pass, so past ``s ≈ 4√n`` a dense target costs
    more than tens of passes per λ; the blocks also must fit in ``GRAM_BYTES``."""
    if max_features is not None:
        return max(1, min(int(max_features), n))
    itemsize = torch.finfo(dtype).bits // 8
    by_memory = int(math.sqrt(GRAM_BYTES / (max(t, 1) * itemsize)))
    return max(1, min(n, max(256, 4 * math.isqrt(n)), max(32, by_memory)))


class _Walker:
    """Fits a path on one row block: statistics, working sets, correlations, warm starts."""

    def __init__(
        self, masks: MaskArray, y: np.ndarray, rows: np.ndarray | None, device: torch.device,
        dtype: torch.dtype, chunk_rows: int | None, opts: SolverOptions,
    ) -> None:
        self.block = MaskRows(masks, rows, device=device, dtype=dtype, chunk_rows=chunk_rows)
        self.yc, y_mean = centred_targets(y if rows is None else y[rows], device, dtype)
        self.stats = row_stats(self.block, self.yc, y_mean)
        self.opts = opts
        self.t = y.shape[1]
        self.ws = WorkingSets(self.block.n, self.t, device=device, dtype=dtype, max_size=opts.max_features)
        self.corr = self.stats.q.clone()
        self.lam_max = self.corr.abs().amax(0) if self.block.n else torch.zeros(self.t, dtype=dtype, device=device)
        self.lam_prev = self.lam_max.clone()

    def grid(self, n_lambdas: int, eps: float) -> torch.Tensor:
        """float[T, K] geometric λ grid from λ_max down to eps·λ_max."""
        ratio = torch.logspace(0, math.log10(eps), n_lambdas, dtype=torch.float64)
        return self.lam_max[:, None] * ratio.to(self.lam_max)[None, :]

    def step(self, lam: torch.Tensor, targets: torch.Tensor) -> StepReport:
        """Move ``targets`` to ``lam[t]``: sequential strong rule, then solve."""
        thr = (2 * lam[targets] - self.lam_prev[targets]).clamp_min(0)
        new, _ = self.ws.candidates(self.corr[:, targets], thr, targets, self.stats.valid, self.opts.min_grow)
        self.ws.grow(self.block, self.stats, targets, new)
        report = solve_lambda(self.block, self.yc, self.stats, self.ws, self.corr, lam, targets, self.opts)
        self.lam_prev[targets] = lam[targets]
        return report

    def intercept(self, coef: torch.Tensor) -> torch.Tensor:
        """float64[T] bias ``y_mean - mu · w`` for dense coef float[T, n]."""
        return self.stats.y_mean - coef.to(torch.float64) @ self.stats.mu.to(torch.float64)


def _options(tol: float, max_iter: int, n: int, t: int, dtype: torch.dtype, max_features: int | None) -> SolverOptions:
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    return SolverOptions(tol=tol, max_iter=max_iter, max_features=_max_features(n, t, dtype, max_features))


def lasso_path(
    masks: MaskArray,
    margins: np.ndarray | torch.Tensor,
    *,
    rows: np.ndarray | None = None,
    lams: np.ndarray | None = None,
    n_lambdas: int = 20,
    eps: float = 1e-3,
    tol: float = 1e-4,
    max_iter: int = 5000,
    max_features: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    chunk_rows: int | None = None,
) -> LassoPath:
    """LASSO path for every target (scikit-learn ``lasso_path`` style, batched over targets).

    masks: bool[M, n]; margins: float[M, T] (or float[M]); rows: int64[m] rows to fit on
    (default all); lams: float[K] or float[T, K] explicit positive λ values (default: the
    geometric grid from λ_max with ``n_lambdas``, ``eps``). Returns a ``LassoPath`` holding
    ``coef: float[K, T, n]`` (mind the memory for large T·n). ``max_features`` caps each
    target's working set (default from ``GRAM_BYTES``); a target that hits it keeps its last
    solution for the rest of the path with ``converged = False``.
    """
    y = _check_inputs(masks, margins)
    rows_np = None if rows is None else _as_rows(rows, masks.shape[0], "rows")
    m = masks.shape[0] if rows_np is None else rows_np.size
    if m < 2:
        raise ValueError(f"lasso_path needs at least 2 rows (models) to fit, got {m}; train more models")
    dev = torch.device(device)
    opts = _options(tol, max_iter, masks.shape[1], y.shape[1], dtype, max_features)
    walker = _Walker(masks, y, rows_np, dev, dtype, chunk_rows, opts)
    t, n = y.shape[1], masks.shape[1]
    if lams is None:
        grid = walker.grid(n_lambdas, eps)
    else:
        grid = torch.as_tensor(np.asarray(lams, dtype=np.float64)).to(device=dev, dtype=dtype)
        grid = grid.expand(t, -1) if grid.ndim == 1 else grid
        if grid.shape[0] != t or not bool((grid > 0).all()):
            raise ValueError(f"lams must be positive float[K] or float[{t}, K], got shape {tuple(grid.shape)}")
    k_total = grid.shape[1]
    coef = np.zeros((k_total, t, n), dtype=np.float32 if dtype == torch.float32 else np.float64)
    intercept = np.zeros((k_total, t))
    gap = np.zeros((k_total, t))
    converged = np.ones((k_total, t), dtype=bool)
    alive = walker.lam_max > 0
    everyone = torch.arange(t, device=dev)
    for k in range(k_total):
        lam = grid[:, k]
        at_zero = alive & (lam >= walker.lam_max)
        walker.ws.w[at_zero] = 0  # λ ≥ λ_max: w = 0 is optimal
        walker.corr[:, at_zero] = walker.stats.q[:, at_zero]
        walker.lam_prev[at_zero] = lam[at_zero]
        targets = everyone[alive & ~at_zero]
        if len(targets):
            report = walker.step(lam, targets)
            gap[k, targets.cpu().numpy()] = report.gap.cpu().numpy()
            stuck = targets[report.capped | ~report.converged]
            converged[k:, stuck.cpu().numpy()] = False
            alive[targets[report.capped]] = False
        dense = walker.ws.dense(everyone)
        coef[k] = dense.cpu().numpy()
        intercept[k] = walker.intercept(dense).cpu().numpy()
    if not converged.all():
        warnings.warn(f"lasso_path: {int((~converged).any(0).sum())} targets did not meet tol={tol} (working-set cap or max_iter); see LassoPath.converged", stacklevel=2)
    return LassoPath(grid.cpu().numpy(), coef, intercept, gap, converged)


def split_rows(m: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(train_rows, val_rows)`` int64 arrays partitioning ``range(m)``."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(m)
    n_val = max(1, int(round(val_fraction * m)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _spearman(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float[T] Spearman correlation per column (average ranks for ties; 0 if a side is constant)."""
    rp, ry = rankdata(pred, axis=0), rankdata(y, axis=0)
    rp -= rp.mean(0)
    ry -= ry.mean(0)
    den = np.sqrt((rp * rp).sum(0) * (ry * ry).sum(0))
    return np.where(den > 0, (rp * ry).sum(0) / np.where(den > 0, den, 1.0), 0.0)


def lasso_select(
    masks: MaskArray,
    margins: np.ndarray | torch.Tensor,
    split: np.ndarray | tuple[np.ndarray, np.ndarray],
    *,
    n_lambdas: int = 20,
    eps: float = 1e-3,
    patience: int = 3,
    refit: bool = True,
    tol: float = 1e-4,
    max_iter: int = 5000,
    max_features: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    chunk_rows: int | None = None,
) -> LassoSelection:
    """Fit each target's path on the training rows, pick λ by validation MSE, refit.

    masks: bool[M, n]; margins: float[M, T]; split: bool[M] (True = validation row) or
    ``(train_rows, val_rows)`` (int64 indices or bool[M] masks, disjoint). A target leaves
    the path once its validation MSE has not dropped by ``MIN_REL_IMPROVEMENT`` (relative)
    for ``patience`` consecutive λ (or its working set hits ``max_features``). The chosen λ
    is the one with the lowest validation MSE (λ_max, the constant model, included); with
    ``refit`` the model is re-solved at that λ on train+val, warm-started.
    """
    y = _check_inputs(masks, margins)
    total = masks.shape[0]
    if isinstance(split, tuple):
        train_rows, val_rows = _as_rows(split[0], total, "train_rows"), _as_rows(split[1], total, "val_rows")
    else:
        is_val = _as_rows(split, total, "split")
        train_rows, val_rows = np.setdiff1d(np.arange(total), is_val), is_val
    if train_rows.size < 2 or val_rows.size < 2:
        raise ValueError(f"lasso_select needs at least 2 training and 2 validation rows (models), got {train_rows.size} and {val_rows.size}; train more models or change the split")
    if np.intersect1d(train_rows, val_rows).size:
        raise ValueError("train_rows and val_rows overlap; validation rows must be held out")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    dev = torch.device(device)
    t, n = y.shape[1], masks.shape[1]
    opts = _options(tol, max_iter, n, t, dtype, max_features)
    walker = _Walker(masks, y, train_rows, dev, dtype, chunk_rows, opts)
    val_block = MaskRows(masks, val_rows, device=dev, dtype=dtype, chunk_rows=chunk_rows)
    y_val = torch.from_numpy(y[val_rows].astype(np.float64)).to(device=dev, dtype=dtype)
    grid = walker.grid(n_lambdas, eps)
    everyone = torch.arange(t, device=dev)

    # k = 0 is λ_max: the constant model predicting the training mean.
    best_pred = walker.stats.y_mean.to(dtype)[None, :].expand_as(y_val).clone()
    best_mse = ((y_val - best_pred) ** 2).mean(0)
    mse_path = torch.full((t, grid.shape[1]), float("inf"), dtype=dtype, device=dev)
    mse_path[:, 0] = best_mse
    best_k = torch.zeros(t, dtype=torch.long, device=dev)
    best_coef = torch.zeros((t, n), dtype=dtype, device=dev)
    ref_mse, stale = best_mse.clone(), torch.zeros(t, dtype=torch.long, device=dev)
    alive = walker.lam_max > 0
    converged = torch.ones(t, dtype=torch.bool, device=dev)
    for k in range(1, grid.shape[1]):
        targets = everyone[alive]
        if len(targets) == 0:
            break
        report = walker.step(grid[:, k], targets)
        converged[targets[~report.converged & ~report.capped]] = False
        alive[targets[report.capped]] = False
        ev = targets[~report.capped]
        weights, offset = walker.ws.sparse_weights(ev, walker.stats.mu)
        pred = predict_pass(val_block, weights, walker.stats.y_mean[ev].to(dtype) - offset)
        mse = ((y_val[:, ev] - pred) ** 2).mean(0)
        mse_path[ev, k] = mse
        better = mse < best_mse[ev]
        winners = ev[better]
        best_mse[winners], best_k[winners] = mse[better], k
        best_pred[:, winners] = pred[:, better]
        best_coef[winners] = walker.ws.dense(winners)
        significant = mse < ref_mse[ev] * (1 - MIN_REL_IMPROVEMENT)
        ref_mse[ev] = torch.where(significant, mse, ref_mse[ev])
        stale[ev] = torch.where(significant, 0, stale[ev] + 1)
        alive[ev[stale[ev] >= patience]] = False
    walker.block.release()

    lam = grid.gather(1, best_k[:, None]).squeeze(1)  # 0 for λ_max = 0 targets
    nontrivial = everyone[walker.lam_max > 0]
    if refit:
        coef, bias = _refit(masks, y, train_rows, val_rows, walker, val_block, best_coef, lam, nontrivial, converged, chunk_rows)
    else:
        coef, bias = best_coef, walker.intercept(best_coef)
    if not bool(converged.all()):
        warnings.warn(f"lasso_select: {int((~converged).sum())} targets did not meet tol={tol}; see LassoSelection.converged", stacklevel=2)
    weights_np = coef.cpu().numpy().astype(np.float32)
    return LassoSelection(
        weights=weights_np,
        bias=bias.cpu().numpy().astype(np.float32),
        lam=lam.cpu().numpy().astype(np.float32),
        val_mse=best_mse.cpu().numpy().astype(np.float32),
        val_spearman=_spearman(best_pred.cpu().numpy(), y[val_rows]).astype(np.float32),
        nnz=np.count_nonzero(weights_np, axis=1).astype(np.int64),
        lams=grid.cpu().numpy().astype(np.float32),
        val_mse_path=mse_path.cpu().numpy().astype(np.float32),
        converged=converged.cpu().numpy(),
    )


def _refit(
    masks: MaskArray, y: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray, walker: _Walker,
    val_block: MaskRows, best_coef: torch.Tensor, lam: torch.Tensor, targets: torch.Tensor,
    converged: torch.Tensor, chunk_rows: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-solve ``targets`` at ``lam`` on train+val rows, warm-started from ``best_coef``.

    The statistics are merged from the training pass and one pass over the validation rows;
    working sets restart from the chosen supports (the path's last ones are usually far
    larger) and grow again only where the KKT check asks for it.
    """
    dev, dtype = best_coef.device, best_coef.dtype
    val_yc, val_mean = centred_targets(y[val_rows], dev, dtype)
    pooled = merge_stats(walker.stats, row_stats(val_block, val_yc, val_mean))
    val_block.release()
    all_rows = np.concatenate([train_rows, val_rows])
    block = MaskRows(masks, all_rows, device=dev, dtype=dtype, chunk_rows=chunk_rows)
    yc = torch.from_numpy(y[all_rows].astype(np.float64) - pooled.y_mean.cpu().numpy()).to(device=dev, dtype=dtype)
    t, n = best_coef.shape
    support = best_coef != 0
    width = int(support.sum(1).max()) if t else 0
    opts = walker.opts
    # The chosen supports obey the path's cap, but on more rows a few more columns may
    # enter: the refit must converge, so it gets twice the room.
    ws = WorkingSets(n, t, device=dev, dtype=dtype, max_size=min(n, 2 * max(opts.max_features, width)))
    del walker.ws  # its covariance blocks are the largest thing held
    if len(targets):
        # stable sort puts each target's support columns first, in column order
        order = torch.sort(support.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
        first = torch.where(support.gather(1, order), order, -1)
        ws.grow(block, pooled, targets, first[targets])
        ws.load(targets, best_coef[targets])
        report = solve_lambda(block, yc, pooled, ws, pooled.q.clone(), lam, targets, opts)
        converged[targets[~report.converged]] = False
    coef = ws.dense(torch.arange(t, device=dev))
    return coef, pooled.y_mean - coef.to(torch.float64) @ pooled.mu.to(torch.float64)


class DatamodelRegressor:
    """Thin estimator over ``lasso_select`` (scikit-learn style; learned attributes end in _)."""

    def __init__(
        self, *, n_lambdas: int = 20, eps: float = 1e-3, patience: int = 3, val_fraction: float = 0.1,
        tol: float = 1e-4, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        chunk_rows: int | None = None,
    ) -> None:
        self.n_lambdas, self.eps, self.patience, self.val_fraction = n_lambdas, eps, patience, val_fraction
        self.tol, self.seed, self.device, self.dtype, self.chunk_rows = tol, seed, device, dtype, chunk_rows

    def fit(self, masks: MaskArray, margins: np.ndarray, split: np.ndarray | tuple[np.ndarray, np.ndarray] | None = None) -> DatamodelRegressor:
        """Fit on bool[M, n] masks and float[M, T] margins; split defaults to a random
        ``val_fraction`` of the rows (``split_rows``)."""
        if split is None:
            split = split_rows(masks.shape[0], self.val_fraction, self.seed)
        self.result_ = lasso_select(
            masks, margins, split, n_lambdas=self.n_lambdas, eps=self.eps, patience=self.patience,
            tol=self.tol, device=self.device, dtype=self.dtype, chunk_rows=self.chunk_rows,
        )
        self.coef_, self.intercept_, self.lam_ = self.result_.weights, self.result_.bias, self.result_.lam
        return self

    def predict(self, masks: MaskArray) -> np.ndarray:
        """float32[m, T] predicted margins for bool[m, n] masks (chunked)."""
        mask_np = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else masks
        out = np.empty((mask_np.shape[0], self.coef_.shape[0]), dtype=np.float32)
        step = 4096
        for start in range(0, mask_np.shape[0], step):
            out[start : start + step] = mask_np[start : start + step].astype(np.float32) @ self.coef_.T + self.intercept_
        return out
