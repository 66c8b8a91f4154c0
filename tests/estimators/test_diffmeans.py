"""Difference of means, downsampling, memorization and Banzhaf against direct computation."""

from __future__ import annotations

import numpy as np
import pytest

from datamodels.estimators import (
    EstimatorInputError,
    banzhaf,
    difference_of_means,
    diffmeans,
    downsampling,
    memorization,
    shapley,
)
from datamodels.estimators.diffmeans import accumulate_moments, moments_to_difference


def random_table(m: int = 400, n: int = 12, targets: int = 5, alpha: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = rng.random((m, n)) < alpha
    effect = rng.normal(size=(n, targets))
    margins = 50.0 + masks @ effect + rng.normal(size=(m, targets))  # large offset: tests shift
    return masks, margins.astype(np.float32)


def naive_welch(masks: np.ndarray, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loop over (t, i) with boolean indexing: the definition, written the slow way."""
    n, targets = masks.shape[1], margins.shape[1]
    values, stderr = np.zeros((targets, n)), np.zeros((targets, n))
    y = margins.astype(np.float64)
    for i in range(n):
        inside, outside = y[masks[:, i]], y[~masks[:, i]]
        values[:, i] = inside.mean(axis=0) - outside.mean(axis=0)
        stderr[:, i] = np.sqrt(
            inside.var(axis=0, ddof=1) / len(inside) + outside.var(axis=0, ddof=1) / len(outside)
        )
    return values, stderr


def test_downsampling_matches_naive_definition_with_welch_stderr():
    masks, margins = random_table(alpha=0.7)
    scores = downsampling(masks, margins)
    values, stderr = naive_welch(masks, margins)
    assert scores.values.shape == scores.stderr.shape == (5, 12)
    assert scores.values.dtype == scores.stderr.dtype == np.float32
    assert scores.n_models == 400
    np.testing.assert_allclose(scores.values, values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.stderr, stderr, rtol=1e-5, atol=1e-6)


def test_chunking_and_row_subsets_do_not_change_the_result():
    masks, margins = random_table(m=1000)
    whole = downsampling(masks, margins)
    chunked = downsampling(masks, margins, chunk_rows=7)
    np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(chunked.stderr, whole.stderr, rtol=1e-6, atol=1e-6)
    rows = np.arange(0, 1000, 3)
    subset = difference_of_means(masks, margins, rows=rows, chunk_rows=50)
    np.testing.assert_allclose(
        subset.values, downsampling(masks[rows], margins[rows]).values, rtol=1e-6, atol=1e-6
    )
    assert subset.n_models == len(rows)


def test_target_blocks_do_not_change_the_result(monkeypatch):
    masks, margins = random_table(m=300, n=6, targets=5)
    alpha = np.random.default_rng(0).random(300)
    whole = (downsampling(masks, margins), shapley(masks, margins, alpha, n_bins=4))
    # Room for 2 targets per block with n_train = 6: blocks of 2, 2, 1.
    monkeypatch.setattr(diffmeans, "_BLOCK_BYTES", 8 * diffmeans._BLOCK_TEMPORARIES * 6 * 2)
    assert len(diffmeans.target_blocks(5, 6)) == 3
    blocked = (downsampling(masks, margins), shapley(masks, margins, alpha, n_bins=4))
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.stderr, b.stderr)


def test_banzhaf_is_downsampling_at_one_half_exactly():
    masks, margins = random_table(alpha=0.5, seed=4)
    a = banzhaf(masks, margins, alpha=np.full(len(masks), 0.5, dtype=np.float32))
    b = downsampling(masks, margins)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.stderr, b.stderr)
    with pytest.raises(EstimatorInputError, match="alpha = 0.5"):
        banzhaf(masks, margins, alpha=np.full(len(masks), 0.7))


def test_memorization_is_the_diagonal_of_downsampling():
    rng = np.random.default_rng(1)
    masks = rng.random((600, 9)) < 0.6
    correct = (rng.random((600, 9)) < 0.5 + 0.4 * masks).astype(np.float32)  # 0/1 correctness
    mem = memorization(masks, correct, chunk_rows=64)
    full = downsampling(masks, correct)
    assert mem.values.shape == (9,)
    np.testing.assert_allclose(mem.values, np.diag(full.values), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mem.stderr, np.diag(full.stderr), rtol=1e-6, atol=1e-6)
    assert mem.values.mean() == pytest.approx(0.4, abs=0.1)  # the planted memorization effect
    with pytest.raises(EstimatorInputError, match="one margin column per training point"):
        memorization(masks, correct[:, :5])


def test_degenerate_columns_score_zero_with_infinite_stderr_and_no_nan():
    masks, margins = random_table(m=50, n=6)
    masks[:, 0] = True  # in every model
    masks[:, 1] = False  # in none
    masks[:, 2] = False
    masks[7, 2] = True  # in exactly one: a mean, but no variance
    self_margins = np.tile(margins[:, :1], (1, 6))
    for scores in (downsampling(masks, margins), memorization(masks, self_margins)):
        values = scores.values.reshape(-1, 6)
        stderr = scores.stderr.reshape(-1, 6)
        assert not np.isnan(values).any() and not np.isnan(stderr).any()
        np.testing.assert_array_equal(values[:, :2], 0.0)
        assert np.isinf(stderr[:, :3]).all()
        assert np.isfinite(stderr[:, 3:]).all()
    expected = margins[7] - np.delete(margins, 7, axis=0).mean(axis=0)
    np.testing.assert_allclose(downsampling(masks, margins).values[:, 2], expected, rtol=1e-5)


def test_single_model_and_constant_margins_do_not_produce_nan():
    one = downsampling(np.array([[True, False]]), np.array([[1.0]]))
    assert np.array_equal(one.values, [[0.0, 0.0]]) and np.isinf(one.stderr).all()
    masks, _ = random_table(m=30, n=4)
    flat = downsampling(masks, np.full((30, 2), 3.0))
    np.testing.assert_array_equal(flat.values, 0.0)
    np.testing.assert_array_equal(flat.stderr, 0.0)


def test_covariate_adjustment_removes_a_linear_trend_in_alpha():
    # Margins = 2·α + 0.3·M_0 + noise, with α spread over [0.2, 0.8]: the in-group of every
    # point has larger α, which biases the plain contrast by 2·(ᾱ_in − ᾱ_out).
    rng = np.random.default_rng(2)
    alpha = rng.uniform(0.2, 0.8, size=20_000)
    masks = rng.random((20_000, 3)) < alpha[:, None]
    margins = 2.0 * alpha + 0.3 * masks[:, 0] + 0.05 * rng.normal(size=20_000)
    plain, plain_stderr = moments_to_difference(accumulate_moments(masks, margins))
    adjusted, stderr = moments_to_difference(
        accumulate_moments(masks, margins, covariate=alpha), 0.5
    )
    assert abs(plain[0, 1]) > 0.05  # the bias is real
    np.testing.assert_allclose(adjusted[0], [0.3, 0.0, 0.0], atol=4 * stderr[0].max())
    # The trend in α is also taken out of the noise: 0.05·sqrt(1/n1 + 1/n0) ≈ 0.0007.
    assert stderr[0, 0] < 0.001 < 3 * stderr[0, 0] < plain_stderr[0, 0]


def test_bad_inputs_are_named():
    masks, margins = random_table(m=20, n=3)
    with pytest.raises(EstimatorInputError, match="20 rows"):
        downsampling(masks, margins[:10])
    with pytest.raises(EstimatorInputError, match="masks must be 2-D"):
        downsampling(masks[0], margins)
    broken = margins.copy()
    broken[13, 1] = np.nan
    with pytest.raises(EstimatorInputError, match="row 13"):
        downsampling(masks, broken, chunk_rows=4)
    with pytest.raises(EstimatorInputError, match="0/1"):
        downsampling(masks.astype(np.int64) * 2, margins)
    # 0/1 integer masks are accepted.
    np.testing.assert_array_equal(
        downsampling(masks.astype(np.uint8), margins).values, downsampling(masks, margins).values
    )


def test_prior_df_moderates_small_groups_towards_the_pooled_variance():
    # Point 0 is in 3 models whose margins agree: Welch reports a near-zero variance for that
    # group; moderation borrows the other group's (s_p² = Σ ss / Σ df), by the stated formula.
    rng = np.random.default_rng(4)
    masks = np.zeros((200, 2), dtype=bool)
    masks[:3, 0] = True
    masks[:, 1] = rng.random(200) < 0.5
    margins = rng.normal(size=(200, 1))
    margins[:3] = 1.0
    moments = accumulate_moments(masks, margins)
    diff, welch = moments_to_difference(moments)
    same_diff, moderated = moments_to_difference(moments, prior_df=10.0)
    np.testing.assert_array_equal(same_diff, diff)
    y1, y0 = margins[:3, 0], margins[3:, 0]
    ss1, ss0 = ((y1 - y1.mean()) ** 2).sum(), ((y0 - y0.mean()) ** 2).sum()
    pooled = (ss1 + ss0) / (2 + 196)
    expected = np.sqrt(
        (ss1 + 10 * pooled) / (2 + 10) / 3 + (ss0 + 10 * pooled) / (196 + 10) / 197
    )
    assert welch[0, 0] < 0.2 * moderated[0, 0]  # 0.074 (group 0 only) vs 0.55
    np.testing.assert_allclose(moderated[0, 0], expected, rtol=1e-10)
    # A balanced contrast of many models barely moves (< 1%); a one-model group gets s_p².
    assert abs(moderated[0, 1] / welch[0, 1] - 1) < 0.01
    masks[1:3, 0] = False
    _, single = moments_to_difference(accumulate_moments(masks, margins), prior_df=10.0)
    assert np.isfinite(single[0, 0]) and np.isinf(moments_to_difference(
        accumulate_moments(masks, margins))[1][0, 0])
