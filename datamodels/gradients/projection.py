"""TRAK's random projection R ∈ R^{P×k}, applied block by block and never held whole.

Entries are i.i.d. N(0, 1/k) (``"gaussian"``) or ±1/√k (``"rademacher"``), so E[R Rᵀ] = I.
R is cut into blocks of ``block_rows`` rows; block b is regenerated whenever it is needed
by a generator seeded from (seed, b) on the gradients' device, so

    Rᵀ g = Σ_b R_bᵀ g_b     (g_b: the entries of g in block b's rows)

costs O(block_rows × k) memory instead of the O(P × k) of a dense matrix (for a 6.5M-parameter
ResNet-9 and k = 2048, a float64 R would be 106 GB). The same (P, k, seed, kind, block_rows)
on the same kind of device always gives the same R; CPU and CUDA generators give different
(equally distributed) matrices, so a model's features are comparable only with features
computed on the same kind of device — every task of one stage run is.

Precision: blocks are drawn in float32. ``precision="fp32"`` multiplies in float32 (float64
gradients, those of ``logreg`` / ``mlp``, are rounded to float32 first) and accumulates
across blocks in the gradients' dtype: on the digits MLP this is 2x faster than float64
products and its TRAK scores agree with theirs to r > 0.99999 (``benchmarks/trak_speed.py``).
``"fp64"`` keeps float64 products for float64 gradients (the exact references of the
tests). ``"bf16"`` draws blocks in bfloat16 and multiplies in bfloat16 (tensor cores on a
GPU), accumulated in float32 across blocks. ±1 and N(0, 1) are drawn unscaled and the 1/√k
applied once at the end.

Cost: drawing the P×k entries again for every chunk of examples is what the memory bound
costs (a ``chunk_size`` of B examples shares one pass over the blocks: drawing is amortised
over B, and the B × P gradients bound B). When R is small (``blocks()`` gives it whole up
to ``HELD_ENTRIES`` entries) a caller projecting many chunks draws it once and passes it to
every ``project`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

ProjectionKind = Literal["gaussian", "rademacher"]
ProjectionPrecision = Literal["fp32", "bf16", "fp64"]
BLOCK_ENTRIES = 1 << 23  # entries per generated block (32 MB in float32) when block_rows is 0
HELD_ENTRIES = 1 << 24  # R held whole (64 MB in float32) by ``blocks()`` up to this size


def _block_seed(seed: int, block: int) -> int:
    """A 32-bit seed per (seed, block), decorrelated (not seed + block: models use seed + m)."""
    return int(np.random.SeedSequence([int(seed) % (1 << 63), block]).generate_state(1)[0])


@dataclass(frozen=True)
class Projection:
    """R ∈ R^{P×k} (``num_params`` × ``dim``), regenerated block by block: ``project(g)``
    = gᵀR for g[B, P]; ``dense()`` materialises it (tests and tiny models only)."""

    num_params: int
    dim: int
    seed: int
    kind: ProjectionKind = "gaussian"
    block_rows: int = 0  # 0: BLOCK_ENTRIES // dim
    precision: ProjectionPrecision = "fp32"

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"proj_dim must be >= 1; got {self.dim}")
        if self.kind not in ("gaussian", "rademacher"):
            raise ValueError(
                f"projection kind must be 'gaussian' or 'rademacher'; got {self.kind!r}"
            )
        if self.precision not in ("fp32", "bf16", "fp64"):
            raise ValueError(
                f"projection precision must be 'fp32', 'bf16' or 'fp64'; got {self.precision!r}"
            )

    @property
    def rows(self) -> int:
        return self.block_rows or max(1, BLOCK_ENTRIES // self.dim)

    def block(
        self, index: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Block ``index`` unscaled (N(0, 1) or ±1 entries): [rows_b, k] on ``device``, drawn
        in float32 or directly in bfloat16 (half the memory traffic; on CPU the bfloat16
        block is the float32 one rounded)."""
        start = index * self.rows
        rows = min(self.rows, self.num_params - start)
        gen = torch.Generator(device=device)
        gen.manual_seed(_block_seed(self.seed, index))
        shape = (rows, self.dim)
        if self.kind == "gaussian":
            return torch.randn(shape, generator=gen, device=device, dtype=dtype)
        signs = torch.randint(0, 2, shape, generator=gen, device=device, dtype=dtype)
        return signs.mul_(2.0).sub_(1.0)

    def blocks(self, device: torch.device | str = "cpu") -> list[torch.Tensor] | None:
        """Every block as ``project`` draws it ([rows_b, k] each), or None when R has more
        than ``HELD_ENTRIES`` entries: pass them to ``project(..., blocks=)`` to draw R once
        for many chunks of examples."""
        if self.num_params * self.dim > HELD_ENTRIES:
            return None
        drawn = torch.bfloat16 if self.precision == "bf16" else torch.float32
        count = -(-self.num_params // self.rows)
        return [self.block(i, device, drawn) for i in range(count)]

    def project(
        self, grads: torch.Tensor, blocks: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """grads[B, P] -> gᵀR: [B, k], float64 for float64 gradients, float32 otherwise
        (``blocks``: this projection's ``blocks()`` on the gradients' device, or None to
        draw them here)."""
        if grads.shape[-1] != self.num_params:
            raise ValueError(
                f"the projection has {self.num_params} rows; gradients have {grads.shape[-1]}"
            )
        low = self.precision == "bf16"
        wide = self.precision == "fp64" and grads.dtype == torch.float64
        compute = torch.bfloat16 if low else (torch.float64 if wide else torch.float32)
        result = torch.float64 if grads.dtype == torch.float64 else torch.float32
        g = grads.to(compute)
        out = torch.zeros(len(grads), self.dim, dtype=result, device=grads.device)
        drawn = torch.bfloat16 if low else torch.float32
        for index, start in enumerate(range(0, self.num_params, self.rows)):
            block = self.block(index, grads.device, drawn) if blocks is None else blocks[index]
            out += (g[:, start : start + len(block)] @ block.to(compute)).to(result)
        return out / self.dim**0.5

    def dense(
        self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """R itself: [P, k] (the same numbers ``project`` uses; tests and tiny models only)."""
        blocks = [self.block(i, device) for i in range(-(-self.num_params // self.rows))]
        return torch.cat(blocks).to(dtype) / self.dim**0.5
