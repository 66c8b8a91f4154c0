"""The mask design matrix: validation of its inputs and chunked reads of its rows.

The masks ``bool[M, n]`` (numpy array, numpy memmap or torch tensor) are the only full-size
array ever held. ``MaskRows`` reads a subset of their rows in row chunks, converting a chunk to
float on the fly (into one reused buffer), and can keep the block's raw Gram matrix ``X^T X``;
nothing of size ``m × n`` in float is ever built. The products over these chunks live in
``datamodels.regress.passes``.
"""

from __future__ import annotations

from collections.abc import Iterator

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
