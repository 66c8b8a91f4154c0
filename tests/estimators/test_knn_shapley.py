"""Closed-form KNN-Shapley against brute-force Shapley of the K-NN utility."""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
import pytest

from datamodels.estimators import EstimatorInputError, knn_shapley


def knn_utility(subset: tuple[int, ...], train_x, train_y, x, y, k: int) -> float:
    """(1/K) · #{correct labels among the min(K, |S|) nearest points of S}."""
    if not subset:
        return 0.0
    subset = np.array(subset)
    distance = np.linalg.norm(train_x[subset] - x, axis=1)
    nearest = subset[np.argsort(distance, kind="stable")[:k]]
    return float(np.sum(train_y[nearest] == y)) / k


def brute_force_shapley(train_x, train_y, x, y, k: int) -> np.ndarray:
    n = len(train_x)
    values = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - 1 - size) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                gain = knn_utility(subset + (i,), train_x, train_y, x, y, k) - knn_utility(
                    subset, train_x, train_y, x, y, k
                )
                values[i] += weight * gain
    return values


@pytest.mark.parametrize("k", [1, 2, 3, 9])  # 9 > n: the utility is additive
def test_closed_form_matches_enumeration(k):
    rng = np.random.default_rng(k)
    n, n_test = 7, 4
    train_x, test_x = rng.normal(size=(n, 3)), rng.normal(size=(n_test, 3))
    train_y, test_y = rng.integers(0, 3, size=n), rng.integers(0, 3, size=n_test)
    scores = knn_shapley(train_x, train_y, test_x, test_y, k)
    assert scores.values.shape == (n_test, n) and scores.stderr is None and scores.n_models == 0
    for t in range(n_test):
        expected = brute_force_shapley(train_x, train_y, test_x[t], test_y[t], k)
        np.testing.assert_allclose(scores.values[t], expected, atol=1e-6)
        # Efficiency: Σφ = U(all) − U(∅).
        full = knn_utility(tuple(range(n)), train_x, train_y, test_x[t], test_y[t], k)
        assert scores.values[t].sum() == pytest.approx(full, abs=1e-6)


def test_many_test_points_are_chunked_consistently(monkeypatch):
    # The package re-exports the function under the module's name; fetch the module itself.
    module = importlib.import_module("datamodels.estimators.knn_shapley")
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(30, 2)), rng.normal(size=(25, 2))
    train_y, test_y = rng.integers(0, 2, size=30), rng.integers(0, 2, size=25)
    whole = knn_shapley(train_x, train_y, test_x, test_y, 5)
    monkeypatch.setattr(module, "_CHUNK_BYTES", 8 * 3 * 30 * 4)  # 4 test points per chunk
    chunked = knn_shapley(train_x, train_y, test_x, test_y, 5)
    np.testing.assert_array_equal(chunked.values, whole.values)


def test_bad_inputs_are_named():
    with pytest.raises(EstimatorInputError, match="same d"):
        knn_shapley(np.zeros((3, 2)), np.zeros(3), np.zeros((2, 3)), np.zeros(2), 1)
    with pytest.raises(EstimatorInputError, match="k must be"):
        knn_shapley(np.zeros((3, 2)), np.zeros(3), np.zeros((2, 2)), np.zeros(2), 0)
