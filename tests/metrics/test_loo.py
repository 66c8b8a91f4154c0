"""The LOO metrics: split-half reliability (against a hand computation), its Spearman–Brown
value, and the correlation of a method's scores with the LOO effects."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from datamodels.metrics.loo import loo_correlation, spearman_brown, split_half


def test_split_half_by_hand():
    # R = 4 replicates of 1 point x 3 targets. Half A = replicates 0, 2; half B = 1, 3.
    d = np.array([[[0, 2, 4]], [[1, 3, 1]], [[2, 2, 2]], [[1, 3, 3]]], dtype=float)
    # A = mean(d0, d2) = (1, 2, 3); B = mean(d1, d3) = (1, 3, 2).
    # Deviations (-1, 0, 1) and (-1, 1, 0): covariance 1, variances 2 and 2 -> r = 1/2.
    result = split_half(d)
    assert result.pearson == pytest.approx(0.5)
    assert result.spearman_brown == pytest.approx(2 * 0.5 / 1.5)  # 2/3
    assert result.spearman == pytest.approx(0.5)  # ranks equal the values here
    assert result.n_pairs == 3 and result.halves == (2, 2)


def test_split_half_skips_missing_replicates_and_odd_counts():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(5, 4, 6))
    d[2, 1, :] = np.nan  # replicate 2 lacks point 1: half A averages replicates 0 and 4 there
    result = split_half(d)
    a = np.nanmean(d[[0, 2, 4]], 0).ravel()
    b = d[[1, 3]].mean(0).ravel()
    assert result.pearson == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert result.halves == (3, 2) and result.n_pairs == 24
    d[:, 0, 0] = np.nan  # a pair nobody measured is left out
    assert split_half(d).n_pairs == 23


def test_split_half_of_pure_noise_is_near_zero_and_of_signal_near_one():
    rng = np.random.default_rng(1)
    effect = rng.normal(size=(30, 40))
    noisy = effect[None] + 0.1 * rng.normal(size=(8, 30, 40))
    assert split_half(noisy).spearman_brown > 0.98
    assert abs(split_half(rng.normal(size=(8, 30, 40))).pearson) < 0.1


def test_spearman_brown_and_undefined_cases():
    assert spearman_brown(0.8) == pytest.approx(1.6 / 1.8)
    assert spearman_brown(0.0) == 0.0
    assert np.isnan(spearman_brown(-0.2))  # halves that disagree: nothing to extrapolate
    assert np.isnan(split_half(np.ones((1, 2, 3))).pearson)  # one replicate: no halves


def test_loo_correlation_is_scipys_over_the_finite_pairs():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(7, 5))
    scores = truth + rng.normal(size=(7, 5))
    truth[3, 2] = np.nan
    pearson, spearman, n = loo_correlation(scores, truth)
    keep = np.isfinite(truth.ravel())
    assert n == 34
    assert pearson == pytest.approx(stats.pearsonr(scores.ravel()[keep], truth.ravel()[keep])[0])
    assert spearman == pytest.approx(stats.spearmanr(scores.ravel()[keep], truth.ravel()[keep])[0])
    assert np.isnan(loo_correlation(np.zeros((2, 2)), truth[:2, :2])[0])  # constant scores
