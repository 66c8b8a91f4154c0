"""Mask and margin inputs: validation, chunked products, per-row-block sufficient statistics.

The masks ``bool[M, n]`` (numpy array, numpy memmap or torch tensor) are the only full-size
array ever held. Every product reads them in row chunks, converts a chunk to float on the fly
(into one reused buffer) and accumulates; nothing of size ``m × n`` in float is ever built.

Centering is implicit: with column means ``mu`` and centred targets ``yc``,
``Xc = X - 1 mu^T`` is never formed; ``Xc^T r = X^T r - mu (1^T r)`` and
``Xc w = X w - (mu . w)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

MaskArray = np.ndarray | torch.Tensor

# Bytes of float chunk held at once; ~256 MiB keeps peak memory flat while the GEMMs stay
# large enough to run at full speed.
CHUNK_BYTES = 256 * 2**20
# A block whose raw Gram matrix X^T X fits in this many bytes keeps it (n <= ~11,500 in
# float32): every later "pass" becomes a gather from it plus small products on the working
# sets, instead of a product with all m rows.
GRAM_BYTES_CACHED = 512 * 2**20
_GRAM_PANEL = 256
_MIN_CHUNK_ROWS = 256
_MAX_CHUNK_ROWS = 16384


def _contiguous_range(rows: np.ndarray) -> tuple[int, int] | None:
    """``(start, stop)`` when ``rows`` is ``arange(start, stop)``, so it can be sliced."""
    if rows.size == 0:
        return None
    start = int(rows[0])
    if int(rows[-1]) - start == rows.size - 1 and np.all(np.diff(rows) == 1):
        return start, start + rows.size
    return None


class MaskRows:
    """A subset of rows of a ``bool[M, n]`` mask matrix, read in row chunks.

    Parameters
    ----------
    masks : bool[M, n] numpy array / memmap or torch tensor (any device).
    rows : int64[m] row indices into ``masks`` (order kept), or None for all rows.
    device, dtype : where and in which float type the chunks are computed.
    chunk_rows : rows per chunk; None picks ~``CHUNK_BYTES`` of float per chunk.
    """

    def __init__(
        self,
        masks: MaskArray,
        rows: np.ndarray | None,
        *,
        device: torch.device,
        dtype: torch.dtype,
        chunk_rows: int | None = None,
    ) -> None:
        self.masks = masks
        self.n = int(masks.shape[1])
        self.device = device
        self.dtype = dtype
        self._slice: tuple[int, int] | None = (0, int(masks.shape[0])) if rows is None else None
        if rows is not None:
            self._slice = _contiguous_range(rows)
        self.rows = rows
        self.m = int(masks.shape[0]) if rows is None else int(rows.size)
        if chunk_rows is None:
            chunk_rows = CHUNK_BYTES // (4 * max(self.n, 1))
            chunk_rows = min(max(chunk_rows, _MIN_CHUNK_ROWS), _MAX_CHUNK_ROWS)
        self.chunk_rows = max(1, int(chunk_rows))
        self._rows_t: torch.Tensor | None = None
        if isinstance(masks, torch.Tensor) and rows is not None and self._slice is None:
            self._rows_t = torch.from_numpy(rows).to(masks.device)
        self._buf: torch.Tensor | None = None
        self._gather: np.ndarray | torch.Tensor | None = None

    def _read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of this block as a bool tensor on ``self.device`` (valid
        until the next read: row gathers reuse one buffer, as fresh pages per chunk cost
        as much as the gather)."""
        if self._slice is not None:
            a = self._slice[0]
            part = self.masks[a + start : a + stop]
        else:
            if self._gather is None or self._gather.shape[0] != stop - start:
                shape = (stop - start, self.n)
                self._gather = (
                    torch.empty(shape, dtype=torch.bool, device=self.masks.device)
                    if isinstance(self.masks, torch.Tensor)
                    else np.empty(shape, dtype=np.bool_)
                )
            if isinstance(self.masks, torch.Tensor):
                assert self._rows_t is not None and isinstance(self._gather, torch.Tensor)
                torch.index_select(self.masks, 0, self._rows_t[start:stop], out=self._gather)
            else:
                assert self.rows is not None
                np.take(self.masks, self.rows[start:stop], axis=0, out=self._gather)
            part = self._gather
        if not isinstance(part, torch.Tensor):
            part = np.ascontiguousarray(part, dtype=np.bool_)
            # read-only memmap views: torch wants a writable buffer (the chunk is tiny next to
            # its float copy)
            part = torch.from_numpy(part if part.flags.writeable else part.copy())
        return part.to(self.device)

    def bool_chunks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(start, stop, bool[c, n])`` over the block's rows (each chunk is valid
        until the next one is read)."""
        for start in range(0, self.m, self.chunk_rows):
            stop = min(start + self.chunk_rows, self.m)
            yield start, stop, self._read(start, stop)

    def float_chunks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(start, stop, float[c, n])``; the float chunk is a reused buffer."""
        for start, stop, part in self.bool_chunks():
            rows = stop - start
            if self._buf is None or self._buf.shape[0] < rows:
                # copy_ into a preallocated buffer is ~6x faster than .to(float) on CPU
                # (no fresh page faults per chunk).
                self._buf = torch.empty(
                    (min(self.chunk_rows, self.m), self.n), dtype=self.dtype, device=self.device
                )
            buf = self._buf[:rows]
            buf.copy_(part)
            yield start, stop, buf

    def release(self) -> None:
        """Drop the chunk buffers (they are re-created on the next pass)."""
        self._buf = self._gather = None

    def raw_gram(self) -> torch.Tensor | None:
        """float[n, n] ``X^T X`` of the block's rows, computed once (one pass) and kept, or
        None when it would exceed ``GRAM_BYTES_CACHED``."""
        itemsize = torch.finfo(self.dtype).bits // 8
        if self.n * self.n * itemsize > GRAM_BYTES_CACHED:
            return None
        if getattr(self, "_gram", None) is None:
            # Upper row panels only, then mirrored: ~5/8 of the flops, and ~3x faster than
            # one xf^T xf product on CPU. Counts are integers, so the mirror is exact.
            n = self.n
            gram = torch.zeros((n, n), dtype=self.dtype, device=self.device)
            edges = list(range(0, n, _GRAM_PANEL)) + [n]
            for _, _, xf in self.float_chunks():
                for a, b in zip(edges[:-1], edges[1:], strict=True):
                    gram[a:b, a:].addmm_(xf[:, a:b].T, xf[:, a:])
            for a, b in zip(edges[:-1], edges[1:], strict=True):
                gram[b:, a:b] = gram[a:b, b:].T
            self._gram = gram
        return self._gram

    def adopt_gram(self, *parts: MaskRows) -> None:
        """Take ``X^T X`` as the sum of the cached Gram matrices of ``parts`` (disjoint row
        blocks whose union is this block's rows), skipping a pass. Counts are integers, so
        the sum is exact; nothing is done when any part has no cached Gram matrix."""
        grams = [p.raw_gram() for p in parts]
        if grams and all(g is not None for g in grams):
            total = grams[0].clone()
            for g in grams[1:]:
                total += g
            self._gram = total.to(device=self.device, dtype=self.dtype)


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


def check_inputs(masks: MaskArray, margins: np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate shapes/dtypes; returns margins as float[M, T]."""
    if getattr(masks, "ndim", 0) != 2 or masks.dtype not in (np.bool_, torch.bool):
        kind = getattr(masks, "dtype", type(masks))
        raise ValueError(
            f"masks must be a 2-D boolean array bool[m, n], got {kind} of shape "
            f"{getattr(masks, 'shape', None)}"
        )
    if masks.shape[1] == 0:
        raise ValueError("masks has no columns: there must be at least one training point")
    y = margins.detach().cpu().numpy() if isinstance(margins, torch.Tensor) else np.asarray(margins)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != masks.shape[0]:
        raise ValueError(
            f"margins must be float[m, T] with m = {masks.shape[0]} rows (one per mask row), "
            f"got shape {y.shape}"
        )
    if not np.all(np.isfinite(y)):
        bad = np.flatnonzero(~np.isfinite(y).all(axis=1))
        raise ValueError(
            f"margins are not finite in {bad.size} rows (first: row {bad[0]}); "
            "drop those models before fitting"
        )
    return y


def as_rows(rows: np.ndarray | torch.Tensor, total: int, name: str) -> np.ndarray:
    """int64[m] row indices from indices or a bool[total] mask (validated)."""
    arr = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    if arr.dtype == np.bool_:
        if arr.shape != (total,):
            raise ValueError(
                f"{name} as a boolean mask must have shape ({total},), got {arr.shape}"
            )
        return np.flatnonzero(arr)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D array of row indices or a bool[{total}] mask")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= total):
        raise ValueError(f"{name} has row indices outside [0, {total})")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{name} has repeated row indices")
    return arr
