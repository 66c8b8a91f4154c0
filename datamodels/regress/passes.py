"""Passes over the mask design matrix: per-row-block sufficient statistics, residual
correlations, predictions and per-target cross counts.

Every product reads the masks in row chunks (``MaskRows``) and accumulates; nothing of size
``m × n`` in float is ever built.

Centering is implicit: with column means ``mu`` and centred targets ``yc``,
``Xc = X - 1 mu^T`` is never formed; ``Xc^T r = X^T r - mu (1^T r)`` and
``Xc w = X w - (mu . w)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from datamodels.regress.design import CHUNK_BYTES, MaskRows


@dataclass
class RowStats:
    """Sufficient statistics of one row block for the centred problem.

    m : number of rows.
    col_sum : float64[n], column counts ``X^T 1``.
    y_mean : float64[T], target means.
    xty : float[n, T], ``X^T (y - y_mean)`` (equal to ``Xc^T yc``).
    yy : float[T], ``||y - y_mean||^2 / m``.
    """

    m: int
    col_sum: torch.Tensor
    y_mean: torch.Tensor
    xty: torch.Tensor
    yy: torch.Tensor

    @property
    def mu(self) -> torch.Tensor:
        """float[n] column means in the working dtype."""
        return (self.col_sum / self.m).to(self.xty.dtype)

    @property
    def valid(self) -> torch.Tensor:
        """bool[n]: columns with nonzero variance (not always / never true) in this block."""
        return (self.col_sum > 0) & (self.col_sum < self.m)

    @property
    def q(self) -> torch.Tensor:
        """float[n, T], ``Xc^T yc / m``: the correlation at w = 0; zero on invalid columns."""
        return (self.xty / self.m) * self.valid[:, None].to(self.xty.dtype)


def centred_targets(
    y: np.ndarray, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(yc float[m, T], y_mean float64[T])``, centred in float64. A constant target is
    centred to exactly zero (a summed mean is not exact, and the residue would be fitted)."""
    y64 = np.asarray(y, dtype=np.float64)
    mean = y64.mean(axis=0)
    constant = y64.min(axis=0) == y64.max(axis=0)
    mean[constant] = y64[0, constant]
    yc = torch.from_numpy(y64 - mean).to(device=device, dtype=dtype)
    return yc, torch.from_numpy(mean).to(device)


def row_stats(block: MaskRows, yc: torch.Tensor, y_mean: torch.Tensor) -> RowStats:
    """One pass over ``block``: column counts and ``X^T yc`` (yc: float[m, T])."""
    n, t = block.n, yc.shape[1]
    col_sum = torch.zeros(n, dtype=torch.float64, device=block.device)
    xty = torch.zeros((n, t), dtype=block.dtype, device=block.device)
    ones = torch.ones(block.chunk_rows, dtype=block.dtype, device=block.device)
    for start, stop, xf in block.float_chunks():
        # counts are integers < 2^24 per chunk, so float32 sums are exact.
        col_sum += torch.mv(xf.T, ones[: stop - start]).to(torch.float64)
        add_xt_times(xty, xf, yc[start:stop])
    yy = (yc * yc).sum(0) / block.m
    return RowStats(block.m, col_sum, y_mean, xty, yy)


def merge_stats(a: RowStats, b: RowStats) -> RowStats:
    """Statistics of the union of two disjoint row blocks (re-centred on the pooled mean)."""
    m = a.m + b.m
    y_mean = (a.m * a.y_mean + b.m * b.y_mean) / m
    da, db = a.y_mean - y_mean, b.y_mean - y_mean
    dt = a.xty.dtype
    xty = (
        a.xty
        + b.xty
        + a.col_sum[:, None].to(dt) * da[None, :].to(dt)
        + b.col_sum[:, None].to(dt) * db[None, :].to(dt)
    )
    yy = (a.m * a.yy + b.m * b.yy + (a.m * da * da + b.m * db * db).to(dt)) / m
    return RowStats(m, a.col_sum + b.col_sum, y_mean, xty, yy)


def add_xt_times(out: torch.Tensor, xf: torch.Tensor, r: torch.Tensor) -> None:
    """``out += xf^T r`` for out float[n, T], xf float[c, n], r float[c, T]. For T < 16 the
    BLAS path for a transposed left operand is ~10x slower than ``(r^T xf)^T``; for larger T
    the in-place GEMM avoids an n × T temporary per chunk."""
    if r.shape[1] < 16:
        out += (r.T.contiguous() @ xf).T
    else:
        out.addmm_(xf.T, r)


class SparseWeights:
    """Weights of several targets on the union of their supports, ready for chunk products.

    cols : int64[u] the union of support columns; w : float[u, T'] weights on them.
    Products use a column gather when the union is small and a dense GEMM otherwise.
    """

    def __init__(self, cols: torch.Tensor, w: torch.Tensor, n: int) -> None:
        self.cols, self.w = cols, w
        # A column gather costs ~ as much per element as a T'-wide GEMM; past ~n/3 columns
        # the dense product is cheaper.
        self.dense: torch.Tensor | None = None
        if cols.numel() * 3 > n:
            self.dense = torch.zeros((n, w.shape[1]), dtype=w.dtype, device=w.device)
            self.dense[cols] = w

    def times(self, xf: torch.Tensor) -> torch.Tensor:
        """``X_chunk w``: float[c, T'] for a float chunk ``xf`` (float[c, n])."""
        if self.dense is not None:
            return xf @ self.dense
        if self.cols.numel() == 0:
            return xf.new_zeros((xf.shape[0], self.w.shape[1]))
        return xf.index_select(1, self.cols) @ self.w


def residual_pass(
    block: MaskRows, yc: torch.Tensor, weights: SparseWeights, offset: torch.Tensor,
    xty: torch.Tensor | None = None, col_sum: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass: residual ``r = yc - (X w - offset)`` and its correlations.

    yc : float[m, T']; offset : float[T'] (``mu . w``); xty : float[n, T'] ``X^T yc`` and
    col_sum : float[n] ``X^T 1`` of the same rows, when known, allow the Gram shortcut.
    Returns ``(X^T r float[n, T'], 1^T r, r.r, r.yc)`` (the last three float[T']).
    """
    gram = block.raw_gram() if xty is not None and col_sum is not None else None
    if gram is not None:
        return _residual_from_gram(gram, yc, weights, offset, xty, col_sum, block.m)
    t = yc.shape[1]
    xtr = torch.zeros((block.n, t), dtype=block.dtype, device=block.device)
    r_sum = torch.zeros(t, dtype=block.dtype, device=block.device)
    rr = torch.zeros_like(r_sum)
    ry = torch.zeros_like(r_sum)
    for start, stop, xf in block.float_chunks():
        y_part = yc[start:stop]
        r = y_part - (weights.times(xf) - offset)
        add_xt_times(xtr, xf, r)
        r_sum += r.sum(0)
        rr += (r * r).sum(0)
        ry += (r * y_part).sum(0)
    return xtr, r_sum, rr, ry


def _residual_from_gram(
    gram: torch.Tensor, yc: torch.Tensor, weights: SparseWeights, offset: torch.Tensor,
    xty: torch.Tensor, col_sum: torch.Tensor, m: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``residual_pass`` from ``G = X^T X``: X^T r = X^T yc - G w + (X^T 1) offset, and the
    scalars by expanding r = yc - X w + offset (small products, float64 where they cancel)."""
    cols, w = weights.cols, weights.w
    gw = gram.index_select(1, cols) @ w  # float[n, T'] = X^T X w
    s = col_sum.to(gram.dtype)
    xtr = xty - gw + s[:, None] * offset[None, :]
    w64, off64 = w.double(), offset.double()
    sw = s[cols].double() @ w64  # 1^T X w
    wgw = (w64 * gw[cols].double()).sum(0)  # ||X w||^2
    wxy = (w64 * xty[cols].double()).sum(0)  # (X w) . yc
    ysum, yy = yc.double().sum(0), (yc.double() ** 2).sum(0)
    r_sum = ysum - sw + m * off64
    fit_y = wxy - off64 * ysum  # (X w - offset) . yc
    fit_fit = wgw - 2 * off64 * sw + m * off64 * off64  # ||X w - offset||^2
    dt = gram.dtype
    return xtr, r_sum.to(dt), (yy - 2 * fit_y + fit_fit).clamp_min(0).to(dt), (yy - fit_y).to(dt)


def predict_pass(block: MaskRows, weights: SparseWeights, offset: torch.Tensor) -> torch.Tensor:
    """float[m, T'] predictions ``X w + offset`` for the block's rows."""
    out = torch.empty((block.m, weights.w.shape[1]), dtype=block.dtype, device=block.device)
    for start, stop, xf in block.float_chunks():
        out[start:stop] = weights.times(xf) + offset
    return out


def _width_groups(
    left_len: torch.Tensor, right_len: torch.Tensor, rows: int, itemsize: int
) -> list[tuple[torch.Tensor, int, int]]:
    """Split targets (sorted by width) into groups ``(targets, p, n)`` whose gathered columns
    fit in ``CHUNK_BYTES``; each group is padded only to its own widths."""
    order = torch.argsort(left_len, descending=True).cpu()
    lens_l, lens_r = left_len.cpu()[order], right_len.cpu()[order]
    groups, start = [], 0
    while start < len(order):
        p, nr = int(lens_l[start]), int(lens_r[start:].max())
        size = max(1, min(len(order) - start, CHUNK_BYTES // (max(p + nr, 1) * rows * itemsize)))
        nr = int(lens_r[start : start + size].max())
        if p > 0 and nr > 0:
            groups.append((order[start : start + size], p, nr))
        start += size
    return groups


def cross_counts(
    block: MaskRows,
    left: torch.Tensor,
    right: torch.Tensor,
    left_len: torch.Tensor | None = None,
    right_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-target raw cross products ``X[:, left[t]]^T X[:, right[t]]`` over the block.

    left : int64[B, P]; right : int64[B, N] column indices; left_len, right_len : int64[B]
    how many leading entries are real (default all; the rest of the output is left at 0).
    Returns float[B, P, N] counts.
    """
    b, p = left.shape
    nr = right.shape[1]
    dev, dtype = block.device, block.dtype
    out = torch.zeros((b, p, nr), dtype=dtype, device=dev)
    if b == 0 or p == 0 or nr == 0:
        return out
    left_len = torch.full((b,), p, device=dev) if left_len is None else left_len
    right_len = torch.full((b,), nr, device=dev) if right_len is None else right_len
    gram = block.raw_gram()
    if gram is not None:
        keep = (torch.arange(p, device=dev)[None, :, None] < left_len[:, None, None]) & (
            torch.arange(nr, device=dev)[None, None, :] < right_len[:, None, None]
        )
        picked = gram[left.clamp_min(0)[:, :, None], right.clamp_min(0)[:, None, :]]
        return torch.where(keep, picked, out)
    return _chunked_cross_counts(block, left, right, left_len, right_len, out)


def _chunked_cross_counts(
    block: MaskRows, left: torch.Tensor, right: torch.Tensor, left_len: torch.Tensor,
    right_len: torch.Tensor, out: torch.Tensor,
) -> torch.Tensor:
    """``cross_counts`` by one pass over the block's rows, accumulated into ``out``
    (float[B, P, N] zeros): targets grouped by width, each group one batched GEMM per chunk."""
    dev, dtype = block.device, block.dtype
    itemsize = torch.finfo(dtype).bits // 8
    groups = _width_groups(left_len, right_len, block.chunk_rows, itemsize)
    cols, remap = torch.arange(block.n, device=dev), None
    needed = torch.unique(torch.cat([left.reshape(-1), right.reshape(-1)]))
    if 3 * needed.numel() < block.n:
        # Few distinct columns: gather them first instead of transposing the whole chunk.
        cols, remap = needed, torch.full((block.n,), -1, dtype=torch.long, device=dev)
        remap[needed] = torch.arange(needed.numel(), device=dev)
    plan = []
    for members, gp, gn in groups:
        members = members.to(dev)
        gl, gr = left[members, :gp], right[members, :gn]
        if remap is not None:
            gl, gr = remap[gl], remap[gr]
        plan.append(
            (members, gl.reshape(-1), gr.reshape(-1), out.new_zeros((len(members), gp, gn)))
        )
    widest = max(len(m) * (gp + gn) for m, gp, gn in groups) if groups else 0
    xt: torch.Tensor | None = None
    for start, stop, part in block.bool_chunks():
        rows = stop - start
        if xt is None or xt.shape[1] != rows:
            xt = torch.empty((cols.numel(), rows), dtype=dtype, device=dev)
            gathered = torch.empty((widest, rows), dtype=dtype, device=dev)
        # Row gathers on the transposed chunk are ~10x faster than column gathers.
        xt.copy_(part.T if remap is None else part.index_select(1, cols).T)
        for _, gl, gr, acc in plan:
            size, gp, gn = acc.shape
            a = gathered[: size * gp]
            c = gathered[size * gp : size * (gp + gn)]
            torch.index_select(xt, 0, gl, out=a)
            torch.index_select(xt, 0, gr, out=c)
            acc.baddbmm_(a.view(size, gp, rows), c.view(size, gn, rows).transpose(1, 2))
    for members, _, _, acc in plan:
        out[members, : acc.shape[1], : acc.shape[2]] = acc
    return out
