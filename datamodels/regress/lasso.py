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

Solver (see ``path`` and ``fista``): targets share ``M``, so they are solved together: per-target
working sets with batched FISTA on their covariance blocks, one chunked pass over the masks
per KKT check; targets that have converged at a λ leave the active set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from datamodels.regress.design import MaskArray, MaskRows, as_rows, check_inputs
from datamodels.regress.passes import centred_targets, merge_stats, predict_pass, row_stats
from datamodels.regress.path import PathWalker, SolverOptions, WorkingSets, solve_lambda
from datamodels.regress.prox import explicit_grid

# Validation MSE must drop by this relative amount to reset the patience counter.
MIN_REL_IMPROVEMENT = 1e-4


@dataclass
class LassoPath:
    """A full path. lams: float[T, K]; coef: float[K, T, n]; intercept: float[K, T];
    gap: float[K, T] final duality gaps; converged: bool[K, T]. Nothing is warned: a caller
    counts the shortfalls with `n_short` and says so once."""

    lams: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    gap: np.ndarray
    converged: np.ndarray

    @property
    def n_short(self) -> int:
        """Targets that missed ``tol`` at some λ (working-set cap or ``max_iter``)."""
        return int((~self.converged).any(0).sum())


@dataclass
class LassoSelection:
    """Validation-selected datamodels (one per target).

    weights: float32[T, n] (dense; refit on train+val); bias: float32[T]; lam: float32[T]
    (chosen λ, 0 for constant targets); val_mse, val_spearman: float32[T] of the train-only
    fit at the chosen λ on the validation rows; nnz: int64[T]; lams: float32[T, K] the path;
    val_mse_path: float32[T, K] (+inf where early stopping skipped the step);
    converged: bool[T] (every solve this target needed met ``tol``); `n_short` counts the
    others (nothing is warned: the fit stage reports the count in one line).
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

    @property
    def n_short(self) -> int:
        """Targets whose solves stopped before ``tol`` (iteration limit or working-set cap)."""
        return int((~np.asarray(self.converged)).sum())


# Long only by its one-option-per-line signature and docstring (the body is ~40 lines).
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
    target's working set (default: see ``SolverOptions.build``); a target that hits it keeps
    its last solution for the rest of the path, flagged ``converged = False``.
    """
    y = check_inputs(masks, margins)
    rows = None if rows is None else as_rows(rows, masks.shape[0], "rows")
    m = masks.shape[0] if rows is None else rows.size
    if m < 2:
        raise ValueError(
            f"lasso_path needs at least 2 rows (models) to fit, got {m}; train more models"
        )
    dev, (t, n) = torch.device(device), (y.shape[1], masks.shape[1])
    opts = SolverOptions.build(tol, max_iter, n, t, dtype, max_features)
    block = MaskRows(masks, rows, device=dev, dtype=dtype, chunk_rows=chunk_rows)
    walker = PathWalker(block, y if rows is None else y[rows], opts)
    grid = walker.grid(n_lambdas, eps) if lams is None else explicit_grid(lams, (t,), dev, dtype)
    k_total = grid.shape[1]
    coef = np.zeros((k_total, t, n), dtype=np.float32 if dtype == torch.float32 else np.float64)
    intercept, gap = np.zeros((k_total, t)), np.zeros((k_total, t))
    converged = np.ones((k_total, t), dtype=bool)
    alive, everyone = walker.lam_max > 0, torch.arange(t, device=dev)
    for k in range(k_total):
        lam = grid[:, k]
        at_zero = alive & (lam >= walker.lam_max)  # w = 0 is optimal there
        walker.ws.w[at_zero] = 0
        walker.corr[:, at_zero] = walker.stats.q[:, at_zero]
        walker.lam_prev[at_zero] = lam[at_zero]
        targets = everyone[alive & ~at_zero]
        if len(targets):
            report = walker.step(lam, targets)
            gap[k, targets.cpu().numpy()] = report.gap.cpu().numpy()
            converged[k, targets[~report.converged].cpu().numpy()] = False
            converged[k:, targets[report.capped].cpu().numpy()] = False  # frozen from here on
            alive[targets[report.capped]] = False
        dense = walker.ws.dense(everyone)
        coef[k], intercept[k] = dense.cpu().numpy(), walker.intercept(dense).cpu().numpy()
    return LassoPath(grid.cpu().numpy(), coef, intercept, gap, converged)


def split_rows(m: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(train_rows, val_rows)`` int64 arrays partitioning ``range(m)``."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(m)
    n_val = max(1, int(round(val_fraction * m)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _spearman(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float[T] Spearman correlation per column (average ranks for ties; 0 if a side is
    constant)."""
    rp, ry = rankdata(pred, axis=0), rankdata(y, axis=0)
    rp, ry = rp - rp.mean(0), ry - ry.mean(0)
    den = np.sqrt((rp * rp).sum(0) * (ry * ry).sum(0))
    return np.where(den > 0, (rp * ry).sum(0) / np.where(den > 0, den, 1.0), 0.0)


def _split(
    split: np.ndarray | tuple[np.ndarray, np.ndarray], total: int
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(split, tuple):
        train = as_rows(split[0], total, "train_rows")
        val = as_rows(split[1], total, "val_rows")
    else:
        val = as_rows(split, total, "split")
        train = np.setdiff1d(np.arange(total), val)
    if train.size < 2 or val.size < 2:
        raise ValueError(
            f"lasso_select needs at least 2 training and 2 validation rows (models), got "
            f"{train.size} and {val.size}; train more models or change the split"
        )
    if np.intersect1d(train, val).size:
        raise ValueError("train_rows and val_rows overlap; validation rows must be held out")
    return train, val


# Long only by its one-option-per-line signature and docstring (the body is ~40 lines).
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
    y = check_inputs(masks, margins)
    train_rows, val_rows = _split(split, masks.shape[0])
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    dev, (t, n) = torch.device(device), (y.shape[1], masks.shape[1])
    opts = SolverOptions.build(tol, max_iter, n, t, dtype, max_features)
    walker = PathWalker(
        MaskRows(masks, train_rows, device=dev, dtype=dtype, chunk_rows=chunk_rows),
        y[train_rows],
        opts,
    )
    val_block = MaskRows(masks, val_rows, device=dev, dtype=dtype, chunk_rows=chunk_rows)
    y_val = torch.from_numpy(y[val_rows].astype(np.float64)).to(device=dev, dtype=dtype)
    grid = walker.grid(n_lambdas, eps)
    best = _validated_path(walker, val_block, y_val, grid, patience)
    walker.block.release()

    lam = grid.gather(1, best.k[:, None]).squeeze(1)  # 0 for λ_max = 0 targets
    converged = best.converged
    if refit:
        rows = (train_rows, val_rows)
        coef, bias = _refit(masks, y, rows, walker, val_block, best.coef, lam, converged)
    else:
        coef, bias = best.coef, walker.intercept(best.coef)
    weights_np = coef.cpu().numpy().astype(np.float32)
    return LassoSelection(
        weights=weights_np,
        bias=bias.cpu().numpy().astype(np.float32),
        lam=lam.cpu().numpy().astype(np.float32),
        val_mse=best.mse.cpu().numpy().astype(np.float32),
        val_spearman=_spearman(best.pred.cpu().numpy(), y[val_rows]).astype(np.float32),
        nnz=np.count_nonzero(weights_np, axis=1).astype(np.int64),
        lams=grid.cpu().numpy().astype(np.float32),
        val_mse_path=best.mse_path.cpu().numpy().astype(np.float32),
        converged=converged.cpu().numpy(),
    )


@dataclass
class _PathChoice:
    """Per target, the λ step with the lowest validation MSE: its index ``k`` (int64[T]),
    ``mse`` float[T], validation predictions ``pred`` float[m_val, T] and weights ``coef``
    float[T, n]; ``mse_path`` float[T, K] and ``converged`` bool[T] over the whole walk."""

    k: torch.Tensor
    mse: torch.Tensor
    pred: torch.Tensor
    coef: torch.Tensor
    mse_path: torch.Tensor
    converged: torch.Tensor


def _validated_path(
    walker: PathWalker, val_block: MaskRows, y_val: torch.Tensor, grid: torch.Tensor,
    patience: int,
) -> _PathChoice:
    """Walk ``grid`` (float[T, K]) on the training rows, scoring every step on the validation
    rows (``val_block``, targets ``y_val``) and dropping a target after ``patience`` steps
    without a significant improvement (see ``lasso_select``)."""
    dev, dtype, (t, n) = y_val.device, y_val.dtype, (y_val.shape[1], walker.block.n)
    everyone = torch.arange(t, device=dev)
    # k = 0 is λ_max: the constant model predicting the training mean.
    best_pred = walker.stats.y_mean.to(dtype)[None, :].expand_as(y_val).clone()
    best_mse = ((y_val - best_pred) ** 2).mean(0)
    mse_path = torch.full((t, grid.shape[1]), float("inf"), dtype=dtype, device=dev)
    mse_path[:, 0] = best_mse
    best_k, stale = (
        torch.zeros(t, dtype=torch.long, device=dev),
        torch.zeros(t, dtype=torch.long, device=dev),
    )
    best_coef, ref_mse = torch.zeros((t, n), dtype=dtype, device=dev), best_mse.clone()
    alive, converged = walker.lam_max > 0, torch.ones(t, dtype=torch.bool, device=dev)
    for k in range(1, grid.shape[1]):
        targets = everyone[alive]
        if len(targets) == 0:
            break
        report = walker.step(grid[:, k], targets)
        converged[targets[~report.converged & ~report.capped]] = False
        alive[targets[report.capped]] = False
        ev = targets[~report.capped]  # a capped target's last iterate is not a solution
        weights, offset = walker.ws.sparse_weights(ev)
        pred = predict_pass(val_block, weights, walker.stats.y_mean[ev].to(dtype) - offset)
        mse = ((y_val[:, ev] - pred) ** 2).mean(0)
        mse_path[ev, k] = mse
        better = mse < best_mse[ev]
        winners = ev[better]
        best_mse[winners], best_k[winners], best_pred[:, winners] = mse[better], k, pred[:, better]
        best_coef[winners] = walker.ws.dense(winners)
        significant = mse < ref_mse[ev] * (1 - MIN_REL_IMPROVEMENT)
        ref_mse[ev] = torch.where(significant, mse, ref_mse[ev])
        stale[ev] = torch.where(significant, 0, stale[ev] + 1)
        alive[ev[stale[ev] >= patience]] = False
    return _PathChoice(best_k, best_mse, best_pred, best_coef, mse_path, converged)


def _refit(
    masks: MaskArray,
    y: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray],
    walker: PathWalker,
    val_block: MaskRows,
    best_coef: torch.Tensor,
    lam: torch.Tensor,
    converged: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-solve at ``lam`` (float[T]) on train+val ``rows``, warm-started from ``best_coef``
    (float[T, n]); returns dense weights float[T, n] and float64[T] biases.

    The statistics are merged from the training pass and one pass over the validation rows.
    Working sets restart from the chosen supports (the path's last ones are usually far
    larger) and grow only where the KKT check asks. Seeding them with the columns that were
    nearly active on the training rows was measured not to save the extra round (the
    pooled rows activate other columns) while making the blocks several times larger.
    """
    dev, dtype, (t, n) = best_coef.device, best_coef.dtype, best_coef.shape
    val_yc, val_mean = centred_targets(y[rows[1]], dev, dtype)
    pooled = merge_stats(walker.stats, row_stats(val_block, val_yc, val_mean))
    all_rows = np.concatenate(rows)
    block = MaskRows(masks, all_rows, device=dev, dtype=dtype, chunk_rows=val_block.chunk_rows)
    block.adopt_gram(walker.block, val_block)
    val_block.release()
    yc = y[all_rows].astype(np.float64) - pooled.y_mean.cpu().numpy()
    yc = torch.from_numpy(yc).to(device=dev, dtype=dtype)
    support = best_coef != 0
    width = int(support.sum(1).max()) if t else 0
    # The chosen supports obey the path's cap, but on more rows a few more columns may
    # enter: the refit must converge, so it gets twice the room.
    room = min(n, 2 * max(walker.opts.max_features, width))
    ws = WorkingSets(block, pooled, max_size=room, min_grow=walker.opts.min_grow)
    del walker.ws  # its covariance blocks are the largest thing held
    targets = torch.arange(t, device=dev)[walker.lam_max > 0]
    if len(targets):
        # a stable sort puts each target's support columns first, in column order
        order = torch.sort(support.to(torch.int8), dim=1, descending=True, stable=True).indices
        first = torch.where(support.gather(1, order[:, :width]), order[:, :width], -1)
        ws.grow(targets, first[targets])
        ws.load(targets, best_coef[targets])
        report = solve_lambda(ws, yc, pooled.q.clone(), lam, targets, walker.opts)
        converged[targets[~report.converged]] = False
    coef = ws.dense(torch.arange(t, device=dev))
    return coef, pooled.y_mean - coef.to(torch.float64) @ pooled.mu.to(torch.float64)
