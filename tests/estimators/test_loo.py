"""Leave-one-out from full and left-out model rows."""

from __future__ import annotations

import numpy as np
import pytest

from datamodels.estimators import EstimatorInputError, loo


def test_deterministic_non_additive_utility_gives_u_full_minus_u_without():
    rng = np.random.default_rng(0)
    n = 5
    weights = rng.normal(size=n)

    def utility(mask: np.ndarray) -> float:
        return float(np.tanh(mask @ weights) + (mask[0] and mask[1]))  # interactions

    full = np.ones(n, dtype=bool)
    left_out = np.r_[-1, np.arange(n)]
    masks = np.repeat(full[None], n + 1, axis=0)
    masks[np.arange(1, n + 1), np.arange(n)] = False
    margins = np.array([utility(mask) for mask in masks])
    scores = loo(left_out, margins, n)
    expected = [utility(full) - utility(mask) for mask in masks[1:]]
    np.testing.assert_allclose(scores.values[0], expected, rtol=1e-6)
    assert scores.values.shape == (1, n)
    assert np.isinf(scores.stderr).all()  # one model per group: no degrees of freedom


def test_seeds_are_averaged_and_pooled_stderr_is_calibrated():
    rng = np.random.default_rng(1)
    n, targets, seeds, sd = 4, 3, 3, 0.5
    effect = rng.normal(size=(n, targets))
    left_out = np.repeat(np.r_[-1, np.arange(n)], seeds)
    z = []
    for trial in range(40):
        noise = np.random.default_rng(trial).normal(scale=sd, size=(len(left_out), targets))
        removed = np.where(left_out[:, None] >= 0, effect[np.maximum(left_out, 0)], 0.0)
        clean = effect.sum(axis=0) - removed
        scores = loo(left_out, clean + noise, n)
        z.append((scores.values - effect.T) / scores.stderr)
    rms = float(np.sqrt(np.mean(np.square(z))))
    assert 0.8 < rms < 1.25  # 480 z-scores
    # Expected stderr: sd · sqrt(1/3 + 1/3).
    assert np.median(scores.stderr) == pytest.approx(sd * np.sqrt(2 / 3), rel=0.3)


def test_points_never_left_out_score_zero_and_order_does_not_matter():
    left_out = np.array([2, -1, 0, -1, 2])
    margins = np.array([[1.0], [3.0], [2.5], [3.2], [1.2]])
    scores = loo(left_out, margins, 4)
    np.testing.assert_allclose(scores.values[0], [3.1 - 2.5, 0.0, 3.1 - 1.1, 0.0], rtol=1e-6)
    assert np.isinf(scores.stderr[0, [1, 3]]).all() and np.isfinite(scores.stderr[0, [0, 2]]).all()
    assert not np.isnan(scores.values).any()


def test_bad_layouts_are_named():
    with pytest.raises(EstimatorInputError, match="at least one full model"):
        loo(np.array([0, 1]), np.ones((2, 1)), 3)
    with pytest.raises(EstimatorInputError, match="left_out must be -1"):
        loo(np.array([-1, 3]), np.ones((2, 1)), 3)
    with pytest.raises(EstimatorInputError, match="3 rows"):
        loo(np.array([-1, 0, 1]), np.ones((2, 1)), 3)
