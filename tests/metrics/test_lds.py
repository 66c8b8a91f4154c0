import numpy as np
import pytest

from datamodels.metrics.lds import average_replicates, lds, spearman_columns


def test_hand_computed_example():
    # 4 held-out subsets of 3 training points, 1 target; scores tau = (1, 2, -1)
    masks = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 1]], dtype=bool)
    # predictions: 1, 2, 3, 1 -> ranks 1.5, 3, 4, 1.5
    true = np.array([[0.1], [0.5], [0.9], [0.0]])  # ranks 2, 3, 4, 1
    result = lds(np.array([[1.0, 2.0, -1.0]]), masks, true)
    # Pearson of (1.5, 3, 4, 1.5) and (2, 3, 4, 1) computed by hand
    a = np.array([1.5, 3, 4, 1.5]) - 2.5
    b = np.array([2, 3, 4, 1]) - 2.5
    expected = (a @ b) / np.sqrt((a @ a) * (b @ b))
    assert result.value == pytest.approx(expected)
    assert result.n_targets == 1 and result.n_subsets == 4
    assert expected == pytest.approx(4.5 / np.sqrt(4.5 * 5.0))  # = 0.9487


def _planted(seed=0, m=400, n=60, T=20, noise=0.05):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(T, n)) * (rng.random((T, n)) < 0.2)
    masks = rng.random((m, n)) < 0.5
    margins = masks @ weights.T + noise * rng.normal(size=(m, T))
    return weights, masks, margins


def test_planted_weights_score_near_one_and_random_near_zero():
    weights, masks, margins = _planted()
    assert lds(weights, masks, margins).value > 0.95
    random_scores = np.random.default_rng(5).normal(size=weights.shape)
    assert abs(lds(random_scores, masks, margins).value) < 0.1


def test_constant_targets_are_excluded_not_nan():
    weights, masks, margins = _planted(T=3)
    margins[:, 1] = 2.0
    result = lds(weights, masks, margins)
    assert result.n_targets == 2 and np.isnan(result.per_target[1]) and np.isfinite(result.value)


def test_replicates_are_averaged():
    masks = np.array([[1, 0], [0, 1], [1, 0]], dtype=bool)
    margins = np.array([[1.0], [5.0], [3.0]])
    subsets, means = average_replicates(masks, margins)
    lookup = {tuple(s): v for s, v in zip(subsets.tolist(), means[:, 0], strict=True)}
    assert lookup == {(True, False): 2.0, (False, True): 5.0}


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    b[:, 0] = np.round(b[:, 0])  # ties
    ours = spearman_columns(a, b)
    for t in range(3):
        assert ours[t] == pytest.approx(spearmanr(a[:, t], b[:, t]).statistic)


def test_a_constant_prediction_counts_as_zero_so_every_method_covers_the_same_targets():
    # 4 subsets, 2 targets whose true margins vary; method A ranks target 0 perfectly and
    # has all-zero scores (a LASSO datamodel with every weight zero) on target 1
    masks = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 1]], dtype=bool)
    true = np.array([[1.0, 0.1], [2.0, 0.5], [3.0, 0.9], [0.5, 0.0]])
    a = np.array([[1.0, 2.0, -2.5], [0.0, 0.0, 0.0]])
    result = lds(a, masks, true)
    # target 0: predictions (1, 2, 3, -0.5) rank exactly as the truth: 1; target 1: 0
    assert result.per_target.tolist() == [pytest.approx(1.0), 0.0]
    assert result.value == pytest.approx(0.5)  # (1 + 0) / 2, not 1 over one target
    assert result.n_targets == 2 and result.n_constant == 1
    b = np.array([[1.0, 2.0, -2.5], [1.0, 2.0, -1.0]])
    assert lds(b, masks, true).n_targets == result.n_targets  # the same targets
    # a target whose truth is constant stays undefined for every method
    true[:, 1] = 4.0
    for scores in (a, b):
        one = lds(scores, masks, true)
        assert one.n_targets == 1 and np.isnan(one.per_target[1]) and one.n_constant == 0
