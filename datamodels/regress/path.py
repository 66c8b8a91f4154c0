"""Per-target working sets and one λ step of the LASSO path.

Each target keeps a working set ``W_t`` of columns with its centred covariance block; the
inner problems on those blocks are solved by ``datamodels.regress.fista``.

A λ step alternates: inner solve → one pass over the masks for the full correlation
``Xc^T r / m`` → duality gap on all ``n`` columns → add the worst KKT violators to ``W_t``.
Cost is dominated by the passes (``2·m·n·T`` flops each) and by growing ``C_t``
(``2·m·|W_t|·|new|`` per target), so working sets grow by at most doubling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from datamodels.regress.design import MaskRows
from datamodels.regress.fista import duality_gap, fista
from datamodels.regress.passes import (
    RowStats,
    SparseWeights,
    centred_targets,
    cross_counts,
    residual_pass,
    row_stats,
)
from datamodels.regress.prox import geometric_grid

# Working-set covariance blocks take T · max_features² floats; this bounds them.
GRAM_BYTES = 2**30


class WorkingSets:
    """Per-target column working sets with their centred covariance blocks, for one row block.

    idx : int64[T, cap] columns per slot; size : int64[T] used slots; gram : float[T, cap, cap]
    (zero outside used slots); w : float[T, cap] weights; member : bool[n, T]; lip : float[T]
    FISTA step constants kept across solves (growth raises the top eigenvalue only a little
    and backtracking corrects the rest).
    """

    def __init__(self, block: MaskRows, stats: RowStats, *, max_size: int, min_grow: int) -> None:
        self.block, self.stats, self.max_size, self.min_grow = block, stats, max_size, min_grow
        self.n, self.t = block.n, stats.xty.shape[1]
        dev, dtype, cap = block.device, block.dtype, min(16, max_size)
        self.idx = torch.zeros((self.t, cap), dtype=torch.long, device=dev)
        self.size = torch.zeros(self.t, dtype=torch.long, device=dev)
        self.gram = torch.zeros((self.t, cap, cap), dtype=dtype, device=dev)
        self.w = torch.zeros((self.t, cap), dtype=dtype, device=dev)
        self.member = torch.zeros((self.n, self.t), dtype=torch.bool, device=dev)
        self.lip = torch.zeros(self.t, dtype=dtype, device=dev)

    def _reserve(self, need: int) -> None:
        cap = self.idx.shape[1]
        if need <= cap:
            return
        new = max(need, min(2 * cap, self.max_size))
        idx, w = self.idx.new_zeros((self.t, new)), self.w.new_zeros((self.t, new))
        gram = self.gram.new_zeros((self.t, new, new))
        idx[:, :cap], w[:, :cap], gram[:, :cap, :cap] = self.idx, self.w, self.gram
        self.idx, self.w, self.gram = idx, w, gram

    def _centred_gram(self) -> Tensor | None:
        """float[n, n + 1]: ``Xc^T Xc / m`` (same arithmetic as ``cross_counts``' blocks) and
        a zero last column, built once from the block's cached raw Gram matrix; None when
        that is not cached."""
        if not hasattr(self, "_centred"):
            raw, mu = self.block.raw_gram(), self.stats.mu
            self._centred = None
            if raw is not None:
                self._centred = raw.new_zeros((self.n, self.n + 1))
                self._centred[:, : self.n] = raw / self.stats.m - mu[:, None] * mu[None, :]
        return self._centred

    def _slots(self, targets: Tensor, width: int) -> Tensor:
        """bool[B, width]: which of the first ``width`` slots are in use."""
        return torch.arange(width, device=targets.device)[None, :] < self.size[targets][:, None]

    def candidates(self, corr: Tensor, threshold: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Columns outside ``W_t`` with ``|corr| > threshold``, the largest first, at most
        ``max(min_grow, nnz_t)`` per target and never past ``max_size``.

        corr : float[n, B]; threshold : float[B]. Returns ``(int64[B, k] with -1 padding,
        int64[B] number eligible before the budget cut)``.
        """
        score = corr.abs()
        eligible = (
            self.stats.valid[:, None] & ~self.member[:, targets] & (score > threshold[None, :])
        )
        n_eligible = eligible.sum(0)
        nnz = (self.w[targets] != 0).sum(1)
        budget = torch.minimum(nnz.clamp_min(self.min_grow), self.max_size - self.size[targets])
        k = min(int(budget.max()) if len(targets) else 0, self.n)
        if k <= 0:
            return torch.full((len(targets), 0), -1, device=corr.device), n_eligible
        vals, rows = torch.where(eligible, score, -1.0).topk(k, dim=0)
        take = (vals >= 0) & (torch.arange(k, device=corr.device)[:, None] < budget[None, :])
        return torch.where(take, rows, -1).T.contiguous(), n_eligible

    def grow(self, targets: Tensor, new: Tensor) -> None:
        """Append columns ``new`` (int64[B, N]; real entries first, then -1 padding) to the
        targets' working sets and fill the new rows/columns of their covariance blocks (a
        gather from the centred Gram matrix when the block caches ``X^T X``, else one pass
        over the block)."""
        valid_new = new >= 0
        keep = valid_new.any(1)
        targets, new, valid_new = targets[keep], new[keep], valid_new[keep]
        if len(targets) == 0:
            return
        old = self.size[targets]
        new_size = old + valid_new.sum(1)
        self._reserve(int(new_size.max()))
        width = int(new_size.max())
        pos = old[:, None] + torch.arange(new.shape[1], device=new.device)[None, :]
        rows_b, cols_j = valid_new.nonzero(as_tuple=True)
        t_hit, p_hit, c_hit = targets[rows_b], pos[rows_b, cols_j], new[rows_b, cols_j]
        self.idx[t_hit, p_hit] = c_hit
        self.member[c_hit, t_hit] = True
        self.size[targets] = new_size

        centred = self._centred_gram()
        if centred is not None:
            # One gather per new column: its row of Xc^T Xc / m against the working set (the
            # matrix is symmetric, so reading along the row is ~2x faster than down it);
            # unused slots point at the zero column ``n``.
            cols = torch.where(self._slots(targets, width), self.idx[targets, :width], self.n)
            flat = (c_hit * (self.n + 1))[:, None] + cols[rows_b]
            vals = centred.view(-1).index_select(0, flat.view(-1)).view_as(flat)
        else:
            slots = self._slots(targets, width)[rows_b].to(self.gram.dtype)
            left, right = self.idx[targets, :width], torch.where(valid_new, new, 0)
            mu = self.stats.mu
            raw = cross_counts(self.block, left, right, new_size, valid_new.sum(1))
            cross = raw / self.stats.m - mu[left][:, :, None] * mu[right][:, None, :]
            vals = cross[rows_b, :, cols_j] * slots
        # flat index_copy_ runs several times faster than advanced-index assignment
        cap, span = self.gram.shape[1], torch.arange(width, device=new.device)[None, :]
        row, flat_gram, vals = t_hit * (cap * cap) + p_hit * cap, self.gram.view(-1), vals.view(-1)
        flat_gram.index_copy_(0, (row[:, None] + span).view(-1), vals)
        col = t_hit * (cap * cap) + p_hit
        flat_gram.index_copy_(0, (col[:, None] + span * cap).view(-1), vals)

    def solve(self, targets: Tensor, lam: Tensor, tol_abs: Tensor, max_iter: int) -> Tensor:
        """FISTA on the targets' blocks, warm-started from ``w``; lam, tol_abs: float[B].
        Returns float[B] inner duality gaps."""
        width = int(self.size[targets].max()) if len(targets) else 0
        if width == 0:
            return torch.zeros(len(targets), dtype=self.w.dtype, device=self.w.device)
        if len(targets) == self.t and width == self.gram.shape[1]:
            gram = self.gram  # all targets at full width: no copy
        else:
            gram = self.gram[:, :width, :width][targets]
        cols = self.idx[targets, :width]
        q = self.stats.q[cols, targets[:, None]] * self._slots(targets, width).to(gram.dtype)
        yy, w0, lip0 = self.stats.yy[targets], self.w[targets, :width], self.lip[targets]
        w, gap, lip, _ = fista(gram, q, lam, w0, yy, tol_abs, lip0, max_iter)
        self.w[targets, :width], self.lip[targets] = w, lip
        return gap

    def sparse_weights(self, targets: Tensor) -> tuple[SparseWeights, Tensor]:
        """The targets' weights on the union of their supports, and ``mu . w`` (float[B])."""
        width = int(self.size[targets].max()) if len(targets) else 0
        cols, w = self.idx[targets, :width], self.w[targets, :width]
        nz = w != 0
        union = torch.unique(cols[nz])
        where = torch.full((self.n,), -1, dtype=torch.long, device=cols.device)
        where[union] = torch.arange(len(union), device=cols.device)
        dense = w.new_zeros((len(union), len(targets)))
        owner = torch.arange(len(targets), device=cols.device)[:, None].expand_as(cols)
        dense[where[cols[nz]], owner[nz]] = w[nz]
        return SparseWeights(union, dense, self.n), self.stats.mu[union] @ dense

    def dense(self, targets: Tensor) -> Tensor:
        """float[B, n] weights of the targets (zeros outside their working sets)."""
        out = self.w.new_zeros((len(targets), self.n))
        return out.scatter_add_(1, self.idx[targets], self.w[targets])

    def load(self, targets: Tensor, coef: Tensor) -> None:
        """Set the targets' slot weights from dense float[B, n] ``coef`` (support ⊆ W_t)."""
        ok = self._slots(targets, self.idx.shape[1])
        self.w[targets] = coef.gather(1, self.idx[targets]) * ok.to(coef.dtype)


@dataclass
class SolverOptions:
    """tol: stop when the duality gap ≤ tol·||yc||²/m (scikit-learn's ``tol``); max_iter:
    FISTA iterations per inner solve; max_rounds: working-set rounds (passes) per λ;
    max_features: working-set cap per target; min_grow: smallest working-set growth."""

    tol: float = 1e-4
    max_iter: int = 5000
    max_rounds: int = 30
    max_features: int = 1024
    min_grow: int = 32

    @classmethod
    def build(
        cls, tol: float, max_iter: int, n: int, t: int, dtype: torch.dtype, max_features: int | None
    ) -> SolverOptions:
        """Validated options; ``max_features=None`` picks the cap: building a target's block
        costs ``m·s²`` for ``s`` columns against ``m·n`` for one pass, so past ``s ≈ 4√n`` a
        dense target costs tens of passes per λ; all blocks must also fit in ``GRAM_BYTES``."""
        if not tol > 0 or max_iter < 1:
            raise ValueError(f"tol must be > 0 and max_iter >= 1, got {tol} and {max_iter}")
        if max_features is None:
            by_memory = math.isqrt(GRAM_BYTES // (max(t, 1) * (torch.finfo(dtype).bits // 8)))
            max_features = min(max(256, 4 * math.isqrt(n)), max(32, by_memory))
        return cls(tol=tol, max_iter=max_iter, max_features=max(1, min(int(max_features), n)))


@dataclass
class StepReport:
    """Per solved target (float/bool[B]): final duality gap, whether it met the tolerance,
    and whether it hit the working-set cap."""

    gap: Tensor
    converged: Tensor
    capped: Tensor


def solve_lambda(
    ws: WorkingSets, yc: Tensor, corr: Tensor, lam: Tensor, targets: Tensor, opts: SolverOptions
) -> StepReport:
    """Solve every target in ``targets`` at its ``lam[t]``, warm-started from ``ws.w``.

    yc : float[m, T] centred targets of ``ws.block``'s rows; corr : float[n, T] is updated in
    place to ``Xc^T r / m`` at the new solution (the next λ's strong rule reads it); lam :
    float[T]. Converged targets leave the active set, so later rounds only pay for the others.
    """
    stats, t_all = ws.stats, yc.shape[1]
    tol_abs = opts.tol * stats.yy
    inner = 0.3 * tol_abs  # leaves room for the gap added by columns outside W_t
    floor = 10 * torch.finfo(yc.dtype).eps * stats.yy  # float noise in the inner gap
    gap = torch.full((t_all,), float("inf"), dtype=yc.dtype, device=yc.device)
    converged = torch.zeros(t_all, dtype=torch.bool, device=yc.device)
    capped = torch.zeros_like(converged)
    mu, valid, active = stats.mu, stats.valid, targets
    for _ in range(opts.max_rounds):
        if len(active) == 0:
            break
        ws.solve(active, lam[active], inner[active], opts.max_iter)
        weights, offset = ws.sparse_weights(active)
        xtr, r_sum, rr, ry = residual_pass(
            ws.block, yc[:, active], weights, offset, stats.xty[:, active], stats.col_sum
        )
        c = (xtr - mu[:, None] * r_sum[None, :]) / stats.m * valid[:, None].to(xtr.dtype)
        corr[:, active] = c
        l1 = ws.w[active].abs().sum(1)
        gap[active] = duality_gap(rr / stats.m, ry / stats.m, c.abs().amax(0), l1, lam[active])
        done = gap[active] <= tol_abs[active]
        converged[active[done]] = True
        todo = active[~done]
        if len(todo) == 0:
            break
        new, n_eligible = ws.candidates(corr[:, todo], lam[todo], todo)
        # No violator outside W_t: the inner solve was not tight enough for this target.
        inner[todo[n_eligible == 0]] *= 0.1
        hopeless = (n_eligible == 0) & (inner[todo] < floor[todo])
        # Stop before paying for growth when the violators alone would overflow the cap.
        at_cap = ws.size[todo] + n_eligible > ws.max_size
        capped[todo[at_cap]] = True
        ws.grow(todo[~at_cap], new[~at_cap])
        active = todo[~hopeless & ~at_cap]
    return StepReport(gap[targets], converged[targets], capped[targets])


class PathWalker:
    """Walks the λ path on one row block: statistics, working sets, correlations, warm starts.

    y : float[m, T] the targets of the block's rows.
    """

    def __init__(self, block: MaskRows, y: np.ndarray, opts: SolverOptions) -> None:
        self.block, self.opts = block, opts
        self.yc, y_mean = centred_targets(y, block.device, block.dtype)
        self.stats = row_stats(block, self.yc, y_mean)
        self.ws = WorkingSets(block, self.stats, max_size=opts.max_features, min_grow=opts.min_grow)
        self.corr = self.stats.q.clone()
        self.lam_max = self.corr.abs().amax(0) if block.n else self.corr.new_zeros(y.shape[1])
        self.lam_prev = self.lam_max.clone()

    def grid(self, n_lambdas: int, eps: float) -> Tensor:
        """float[T, K] geometric λ grid from λ_max down to eps·λ_max."""
        return geometric_grid(self.lam_max, n_lambdas, eps)

    def step(self, lam: Tensor, targets: Tensor) -> StepReport:
        """Move ``targets`` to ``lam[t]`` (lam: float[T]): sequential strong rule, then solve."""
        thr = (2 * lam[targets] - self.lam_prev[targets]).clamp_min(0)
        self.ws.grow(targets, self.ws.candidates(self.corr[:, targets], thr, targets)[0])
        report = solve_lambda(self.ws, self.yc, self.corr, lam, targets, self.opts)
        self.lam_prev[targets] = lam[targets]
        return report

    def intercept(self, coef: Tensor) -> Tensor:
        """float64[T] bias ``y_mean - mu · w`` for dense coef float[T, n]."""
        return self.stats.y_mean - coef.to(torch.float64) @ self.stats.mu.to(torch.float64)
