"""TRAK's block-regenerated projection: the same numbers as the dense matrix it stands for."""

from __future__ import annotations

import pytest
import torch

from datamodels.gradients.projection import Projection


def gradients(n: int, P: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, P, generator=torch.Generator().manual_seed(7), dtype=dtype)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("block_rows", [7, 50, 0])
def test_block_by_block_equals_the_dense_matrix(kind, block_rows):
    projection = Projection(50, 16, seed=3, kind=kind, block_rows=block_rows, precision="fp64")
    R = projection.dense(dtype=torch.float64)  # [P, k], the blocks stacked
    assert R.shape == (50, 16)
    g = gradients(9, 50)
    torch.testing.assert_close(projection.project(g), g @ R, rtol=1e-12, atol=1e-14)
    # chunks of examples are projected independently: the same rows either way
    torch.testing.assert_close(
        torch.cat([projection.project(g[:4]), projection.project(g[4:])]), projection.project(g)
    )
    g32 = g.float()
    assert projection.project(g32).dtype == torch.float32
    torch.testing.assert_close(projection.project(g32), g32 @ R.float(), rtol=1e-5, atol=1e-5)
    if kind == "rademacher":
        assert set(torch.unique(R * 16**0.5).tolist()) == {-1.0, 1.0}


def test_fp32_products_of_float64_gradients_and_held_blocks():
    wide = Projection(300, 64, seed=5, block_rows=64, precision="fp64")
    fast = Projection(300, 64, seed=5, block_rows=64)  # the default: float32 products
    g = gradients(11, 300)
    exact = wide.project(g)
    out = fast.project(g)
    assert out.dtype == torch.float64  # accumulated across blocks in float64
    assert (out - exact).norm() / exact.norm() < 1e-6
    held = fast.blocks()
    assert len(held) == 5 and held[0].shape == (64, 64)
    torch.testing.assert_close(fast.project(g, held), out, rtol=0, atol=0)
    assert Projection(1 << 13, 1 << 12, seed=0).blocks() is None  # 2^25 entries: drawn per call


def test_bf16_products_stay_close_to_float32():
    projection = Projection(300, 64, seed=0, block_rows=64)
    low = Projection(300, 64, seed=0, block_rows=64, precision="bf16")
    g = gradients(5, 300, torch.float32)
    exact = projection.project(g)
    error = (low.project(g) - exact).norm() / exact.norm()
    assert error < 2e-2  # bfloat16 keeps 8 bits of mantissa: ~0.4% per product


def test_seeds_blocks_and_norms():
    a = Projection(1000, 2048, seed=1, block_rows=128)
    assert a.block(0).shape == (128, 2048) and a.block(7).shape == (1000 - 7 * 128, 2048)
    assert not torch.equal(a.block(0), a.block(1))
    assert torch.equal(a.block(3), Projection(1000, 2048, seed=1, block_rows=128).block(3))
    assert not torch.equal(a.block(0), Projection(1000, 2048, seed=2, block_rows=128).block(0))
    # E[R Rᵀ] = I: squared norms are kept within JL's √(2/k) ≈ 3% per vector
    g = gradients(20, 1000)
    ratio = a.project(g).pow(2).sum(1) / g.pow(2).sum(1)
    assert abs(float(ratio.mean()) - 1.0) < 0.03 and float((ratio - 1).abs().max()) < 0.2
    with pytest.raises(ValueError, match="has 1000 rows; gradients have 999"):
        a.project(g[:, :999])
    with pytest.raises(ValueError, match="proj_dim must be >= 1"):
        Projection(10, 0, seed=0)
