"""Owen-sampling Shapley: grid rules, α binning, degenerate levels and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from datamodels.estimators import EstimatorInputError, beta_shapley, owen_grid, shapley
from datamodels.estimators.shapley import _binned_levels


@pytest.mark.parametrize("rule, exact_degree", [("gauss-legendre", 7), ("midpoint", 1)])
def test_owen_grid_integrates_polynomials_on_the_unit_interval(rule, exact_degree):
    nodes, weights = owen_grid(4, rule)
    assert ((nodes > 0) & (nodes < 1)).all() and weights.sum() == pytest.approx(1.0)
    for degree in range(exact_degree + 1):
        assert weights @ nodes**degree == pytest.approx(1.0 / (degree + 1), abs=1e-12)


def test_float32_alpha_matches_grid_nodes_and_off_grid_rows_are_named():
    rng = np.random.default_rng(0)
    nodes, weights = owen_grid(3)
    alpha = nodes[rng.integers(0, 3, size=300)].astype(np.float32)  # as stored in Parquet
    masks = rng.random((300, 4)) < alpha[:, None]
    margins = masks @ np.array([1.0, 2.0, 3.0, 4.0])
    scores = shapley(masks, margins, alpha, grid=(nodes, weights))
    assert scores.values.shape == (1, 4)
    alpha[17] = 0.3
    with pytest.raises(EstimatorInputError, match="row 17 has alpha 0.3"):
        shapley(masks, margins, alpha, grid=(nodes, weights))


def test_grid_node_without_models_or_contrast_gives_infinite_stderr_not_nan():
    rng = np.random.default_rng(1)
    nodes, weights = owen_grid(3)
    alpha = np.repeat(nodes[:2], 200)  # the third node has no models
    masks = rng.random((400, 5)) < alpha[:, None]
    masks[:, 4] = False  # never included at any level
    margins = rng.normal(size=(400, 2))
    scores = shapley(masks, margins, alpha, grid=(nodes, weights))
    assert not np.isnan(scores.values).any() and not np.isnan(scores.stderr).any()
    assert np.isinf(scores.stderr).all()
    np.testing.assert_array_equal(scores.values[:, 4], 0.0)
    continuous = shapley(masks, margins, rng.random(400))
    assert not np.isnan(continuous.values).any() and np.isinf(continuous.stderr[:, 4]).all()


def test_bins_keep_tied_alpha_together_and_cover_the_unit_interval():
    alpha = np.repeat([0.2, 0.5, 0.8], 100)
    level, mass, centre = _binned_levels(alpha, 2, _Uniform())
    assert len(mass) == 2 and mass.sum() == pytest.approx(1.0)
    for value in (0.2, 0.5, 0.8):
        assert len(set(level[alpha == value])) == 1
    continuous = np.random.default_rng(2).random(1000)
    level, mass, centre = _binned_levels(continuous, 10, _Uniform())
    np.testing.assert_array_equal(np.bincount(level), 100)
    assert mass.sum() == pytest.approx(1.0) and (np.diff(centre) > 0).all()


class _Uniform:
    """The law interface `_binned_levels` needs, written out for U(0, 1)."""

    def cdf(self, p):
        return np.clip(p, 0.0, 1.0)

    def expect(self, func, lb, ub, conditional):
        return (lb + ub) / 2.0


def test_beta_shapley_weights_small_subsets_for_alpha_greater_than_beta():
    # Utility = 1 if |S| ≤ 1 contains point 0 … i.e. point 0 only matters in tiny subsets.
    rng = np.random.default_rng(3)
    alpha = rng.random(20_000)
    masks = rng.random((20_000, 6)) < alpha[:, None]
    margins = (masks[:, 0] & (masks.sum(axis=1) <= 2)).astype(float)
    small = beta_shapley(masks, margins, alpha, beta_params=(16.0, 1.0)).values[0, 0]
    large = beta_shapley(masks, margins, alpha, beta_params=(1.0, 16.0)).values[0, 0]
    assert small > 0.5 > 0.01 > large


def test_bad_arguments_are_named():
    masks = np.ones((4, 2), dtype=bool)
    with pytest.raises(EstimatorInputError, match="alpha must lie in"):
        shapley(masks, np.ones(4), np.array([0.1, 0.2, 1.5, 0.3]))
    with pytest.raises(EstimatorInputError, match="one entry per model"):
        shapley(masks, np.ones(4), np.array([0.1, 0.2]))
    with pytest.raises(EstimatorInputError, match="beta_params"):
        beta_shapley(masks, np.ones(4), np.full(4, 0.5), beta_params=(0.0, 1.0))
    with pytest.raises(EstimatorInputError, match="grid nodes"):
        grid = (np.array([0.0, 0.5]), np.array([0.5, 0.5]))
        shapley(masks, np.ones(4), np.full(4, 0.5), grid=grid)


def test_thin_bins_are_merged_until_both_sides_expect_enough_models():
    from scipy import stats

    alpha = np.random.default_rng(5).random(2_000)
    level, mass, centre = _binned_levels(alpha, 32, stats.beta(1.0, 16.0), min_group=15.0)
    expected_in = np.bincount(level, weights=alpha)
    expected_out = np.bincount(level, weights=1.0 - alpha)
    assert (expected_in >= 15).all() and (expected_out >= 15).all()
    assert 3 < len(mass) < 32 and mass.sum() == pytest.approx(1.0)
    # Bins stay runs of sorted α, and only the thin ends were merged.
    assert (np.diff(level[np.argsort(alpha)]) >= 0).all() and (np.diff(centre) > 0).all()
    unmerged, _, _ = _binned_levels(alpha, 32, stats.beta(1.0, 16.0))
    assert unmerged.max() == 31


def test_grid_weights_for_a_beta_law_are_its_interpolatory_weights():
    from scipy import stats

    from datamodels.estimators.shapley import _grid_weights

    nodes, weights = owen_grid(4)
    law = stats.beta(1.0, 16.0)
    v = _grid_weights(nodes, weights, law)
    # Exact for polynomials of degree < 4 against the law: E[p^j] = Π_{r<j} (1 + r) / (17 + r).
    for degree in range(4):
        assert v @ nodes**degree == pytest.approx(law.moment(degree), rel=1e-10)
    # The product rule does not even integrate a constant (its weights sum to 0.958).
    assert (weights * law.pdf(nodes)).sum() == pytest.approx(0.958, abs=1e-3)
    # The uniform law keeps the rule as given (Shapley); so do unstable interpolatory weights
    # (Σ|v| > 2: 24 equispaced nodes), which fall back to w_k · density(p_k).
    uniform = _grid_weights(nodes, weights, stats.beta(1.0, 1.0))
    np.testing.assert_allclose(uniform, weights, rtol=1e-12)
    midpoint, equal = owen_grid(24, "midpoint")
    steep = stats.beta(1.0, 4.0)
    np.testing.assert_allclose(_grid_weights(midpoint, equal, steep), equal * steep.pdf(midpoint))
