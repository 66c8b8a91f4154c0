"""Exact KNN-Shapley (Jia et al. 2019, "Efficient task-specific data valuation for nearest
neighbor algorithms", Theorem 1) on fixed embeddings — no retraining.

Utility of a subset S for test point (x, y): the unweighted K-nearest-neighbour likelihood of
the correct label,  U(S) = (1/K) Σ_{k ≤ min(K, |S|)} 1[y_{α_k(S)} = y],  α_k(S) the k-th
nearest point of S (Euclidean). Sorting all N training points by distance, nearest first
(α_1 … α_N), its Shapley values satisfy the recursion

    s(α_N) = 1[y_{α_N} = y] / K · min(K, N) / N      (the paper's 1[·]/N assumes N ≥ K)
    s(α_j) = s(α_{j+1}) + (1[y_{α_j} = y] − 1[y_{α_{j+1}} = y]) / K · min(K, j) / j

which is a reverse cumulative sum, vectorised over test points: one sort per test point,
O(N log N) each. Distance ties are broken by the stable sort, i.e. by train position.
"""

from __future__ import annotations

import numpy as np

from datamodels.estimators.base import EstimatorInputError, Scores, to_scores

# Bounds the float64 [test chunk, n_train] distance and order arrays.
_CHUNK_BYTES = 64 * 2**20


def knn_shapley(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    k: int,
) -> Scores:
    """Exact Shapley values of the K-NN utility for every (test point, training point).

    train_embeddings: float[n_train, d]; train_labels: int[n_train];
    test_embeddings: float[n_test, d]; test_labels: int[n_test]; k: neighbours, >= 1.
    Returns `Scores` with values float32[n_test, n_train] (positive = the point's label
    agrees with the test label and it is near), stderr None (exact), n_models 0.
    """
    train_x = np.asarray(train_embeddings, dtype=np.float64)
    test_x = np.asarray(test_embeddings, dtype=np.float64)
    train_y = np.asarray(train_labels).reshape(-1)
    test_y = np.asarray(test_labels).reshape(-1)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise EstimatorInputError(
            f"embeddings must be [n, d] with the same d: train {train_x.shape}, test {test_x.shape}"
        )
    n_train, n_test = train_x.shape[0], test_x.shape[0]
    if train_y.shape[0] != n_train or test_y.shape[0] != n_test:
        raise EstimatorInputError("train_labels / test_labels need one label per embedding row")
    if k < 1:
        raise EstimatorInputError(f"k must be >= 1, got {k}")
    if n_train == 0:
        return to_scores(np.zeros((n_test, 0)), None, 0)

    ranks = np.arange(1, n_train + 1, dtype=np.float64)
    # Weight of the step from rank j to j+1 in the recursion, j = 1..N−1.
    step_weight = np.minimum(k, ranks[:-1]) / ranks[:-1] / k
    train_sq = np.einsum("nd,nd->n", train_x, train_x)
    values = np.empty((n_test, n_train))
    chunk = max(1, _CHUNK_BYTES // (8 * 3 * n_train))
    for start in range(0, n_test, chunk):
        stop = min(start + chunk, n_test)
        # ||a||² is constant per test point, so it cannot change the order: drop it.
        distance = train_sq[None, :] - 2.0 * test_x[start:stop] @ train_x.T
        order = np.argsort(distance, axis=1, kind="stable")
        match = (train_y[order] == test_y[start:stop, None]).astype(np.float64)
        delta = (match[:, :-1] - match[:, 1:]) * step_weight
        sorted_values = np.empty_like(match)
        sorted_values[:, -1] = match[:, -1] * min(k, n_train) / (n_train * k)
        # s_j = s_N + Σ_{l ≥ j} delta_l: reverse cumulative sum.
        sorted_values[:, :-1] = sorted_values[:, -1:] + np.cumsum(delta[:, ::-1], axis=1)[:, ::-1]
        np.put_along_axis(values[start:stop], order, sorted_values, axis=1)
    return to_scores(values, None, 0)
