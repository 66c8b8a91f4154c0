"""The applications on small synthetic tables with planted answers: a planted weight and a
planted duplicate for leakage, two planted subpopulations for the embedding, exact LOO for
agreement, hand-counted supports for brittleness."""

from __future__ import annotations

import numpy as np
import pytest

from datamodels.applications import (
    brittleness,
    cosine_pairs,
    embed,
    extremes,
    loo_agreement,
    spectral_clusters,
    top_weight_pairs,
)


def test_top_weight_pairs_finds_the_planted_weights_in_order():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 0.01, size=(6, 30))
    scores[2, 17] = 5.0
    scores[4, 3] = 3.0
    pairs = top_weight_pairs(scores, test_targets=np.arange(100, 106), k=3)
    assert pairs[["target", "train_position"]].values[:2].tolist() == [[102, 17], [104, 3]]
    assert pairs["weight"].iloc[0] == pytest.approx(5.0)
    assert pairs["rank"].tolist() == [0, 1, 2]


def test_cosine_pairs_find_a_planted_duplicate_that_weight_ranking_misses():
    rng = np.random.default_rng(1)
    n_train, n_test = 40, 8
    train_rows = rng.normal(0, 1, size=(n_train, n_train))
    test_scores = rng.normal(0, 1, size=(n_test, n_train))
    # test 5 is a duplicate of train 11: the same datamodel vector up to scale and noise,
    # with no single weight standing out
    test_scores[5] = 0.3 * train_rows[11] + rng.normal(0, 0.01, n_train)
    pairs = cosine_pairs(test_scores, train_rows, k=5)
    assert pairs[["target", "train_position"]].values[0].tolist() == [5, 11]
    assert pairs["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-3)
    assert pairs["cosine"].iloc[1] < 0.8
    # zero vectors are similar to nothing (no division by zero)
    test_scores[0] = 0.0
    assert np.isfinite(cosine_pairs(test_scores, train_rows, k=400)["cosine"]).all()


def _two_populations(seed: int = 0):
    """12 targets: 0..5 depend on train 0..9, 6..11 on train 10..19 (plus noise)."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.02, size=(12, 40))
    weights[:6, :10] += 1.0
    weights[6:, 10:20] += 1.0
    return weights, np.repeat([0, 1], 6)


def test_first_component_and_clusters_separate_planted_subpopulations():
    weights, group = _two_populations()
    embedding = embed(weights, n_components=2, targets=np.arange(50, 62))
    assert embedding.coordinates.shape == (12, 2) and embedding.components.shape == (2, 40)
    assert embedding.explained[0] > 0.9
    first = embedding.coordinates[:, 0]
    assert (np.sign(first[group == 0]) != np.sign(first[group == 1][0])).all()
    assert (np.sign(first[group == 1]) == np.sign(first[group == 1][0])).all()
    low, high = extremes(embedding.coordinates, k=3)[0]
    assert len(set(group[low])) == 1 and len(set(group[high])) == 1
    assert group[low][0] != group[high][0]
    clusters = spectral_clusters(weights, n_clusters=2)
    assert len(set(clusters[group == 0])) == 1 and len(set(clusters[group == 1])) == 1
    assert clusters[0] != clusters[-1]
    # deterministic sign: the same table gives the same embedding
    np.testing.assert_array_equal(embed(weights).coordinates, embed(weights).coordinates)


def test_loo_agreement_is_one_for_loo_itself_and_scale_free():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(5, 20))
    points = np.array([1, 4, 7, 9, 12, 15])
    noisy = truth + rng.normal(0, 10.0, size=truth.shape)
    table = loo_agreement({"exact": 3.0 * truth, "noisy": noisy}, truth, points)
    exact = table.set_index("method").loc["exact"]
    assert exact["pearson"] == pytest.approx(1.0)
    assert exact["spearman"] == pytest.approx(1.0)
    assert exact["mean_target_spearman"] == pytest.approx(1.0)
    assert exact["n_points"] == 6 and exact["n_targets"] == 5
    assert table.set_index("method").loc["noisy", "pearson"] < 0.9


def test_brittleness_supports_counted_by_hand():
    weights = np.array(
        [
            [3.0, 2.0, 1.0, -5.0, 0.0],  # margin 4: remove 3 (4-3=1), then 2 (4-5<0) -> k=2
            [0.5, 0.5, 0.5, 0.5, 0.5],  # margin 0.9: 0.9-0.5 > 0, 0.9-1.0 < 0 -> k=2
            [1.0, 0.0, 0.0, 0.0, 0.0],  # margin 10: never flips -> inf
            [1.0, 1.0, 1.0, 1.0, 1.0],  # margin -1: already wrong -> 0
            [0.0, 0.0, 0.0, 0.0, 2.0],  # margin 1.5: one removal -> k=1
        ]
    )
    margin = np.array([4.0, 0.9, 10.0, -1.0, 1.5])
    result = brittleness(weights, margin)
    np.testing.assert_array_equal(result.support, [2, 2, np.inf, 0, 1])
    # 4 correct targets; budget floor(0.2 * 5) = 1 -> one flips; floor(0.4 * 5) = 2 -> three
    assert result.fraction_flipped(0.2) == pytest.approx(1 / 4)
    assert result.fraction_flipped(0.4) == pytest.approx(3 / 4)
    assert np.isnan(brittleness(weights[3:4], margin[3:4]).fraction_flipped(0.5))
