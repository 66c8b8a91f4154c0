"""TMC-Shapley row layout, prefix helpers, truncation and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from datamodels.estimators import (
    EstimatorInputError,
    tmc_permutation,
    tmc_prefix_masks,
    tmc_shapley,
)
from datamodels.estimators.tmc import student_t_factor
from tests.estimators.test_games import exact_semivalue, ridge_game, shapley_weight


def test_permutations_are_a_pure_function_of_seed_and_perm_id():
    a = tmc_permutation(3, 5, 20)
    np.testing.assert_array_equal(a, tmc_permutation(3, 5, 20))
    assert sorted(a) == list(range(20))
    assert not np.array_equal(a, tmc_permutation(3, 6, 20))
    assert not np.array_equal(a, tmc_permutation(4, 5, 20))


def test_prefix_masks_follow_the_permutation():
    order = tmc_permutation(0, 2, 6)
    masks, added = tmc_prefix_masks(0, 2, 6, np.array([0, 1, 2, 6, 3]))
    assert masks.shape == (5, 6) and masks.dtype == bool
    np.testing.assert_array_equal(masks.sum(axis=1), [0, 1, 2, 6, 3])
    np.testing.assert_array_equal(added, [-1, order[0], order[1], order[5], order[2]])
    assert set(np.flatnonzero(masks[4])) == set(order[:3])
    with pytest.raises(EstimatorInputError, match="prefix lengths"):
        tmc_prefix_masks(0, 2, 6, np.array([7]))


def walk_rows(seed: int, n_perms: int, n: int, stop_after: dict[int, int] | None = None):
    """Prefix rows of ``n_perms`` walks, walk p truncated after ``stop_after[p]`` steps."""
    perm_id, step, added, masks = [], [], [], []
    for perm in range(n_perms):
        last = (stop_after or {}).get(perm, n)
        steps = np.arange(last + 1)
        prefix_masks, prefix_added = tmc_prefix_masks(seed, perm, n, steps)
        perm_id.append(np.full(len(steps), perm))
        step.append(steps)
        added.append(prefix_added)
        masks.append(prefix_masks)
    return tuple(np.concatenate(x) for x in (perm_id, step, added, masks))


def test_truncated_points_contribute_zero_but_still_count():
    n = 4
    contributions = np.array([1.0, 2.0, 4.0, 8.0])
    perm_id, step, added, masks = walk_rows(1, 2, n, stop_after={1: 2})
    utility = masks @ contributions
    scores = tmc_shapley(perm_id, step, added, utility, n)
    # Walk 0 sees every point; walk 1 only its first two; the mean is over both walks.
    seen_twice = np.isin(np.arange(n), tmc_permutation(1, 1, n)[:2])
    np.testing.assert_allclose(
        scores.values[0], np.where(seen_twice, contributions, contributions / 2)
    )
    assert scores.n_models == len(step)


def test_rows_in_any_order_and_shared_empty_model():
    n = 5
    perm_id, step, added, masks = walk_rows(2, 3, n)
    utility = np.stack([masks @ np.arange(1.0, 6.0), np.sqrt(masks.sum(axis=1))], axis=1)
    reference = tmc_shapley(perm_id, step, added, utility, n)
    shuffle = np.random.default_rng(0).permutation(len(step))
    shuffled = tmc_shapley(perm_id[shuffle], step[shuffle], added[shuffle], utility[shuffle], n)
    np.testing.assert_allclose(shuffled.values, reference.values, rtol=1e-6)
    keep = step > 0  # drop the step-0 rows; the empty model's margins are 0
    shared = tmc_shapley(
        perm_id[keep], step[keep], added[keep], utility[keep], n, empty_margins=np.zeros(2)
    )
    np.testing.assert_allclose(shared.values, reference.values, rtol=1e-6)
    # Symmetric utility sqrt(|S|): efficiency Σφ = sqrt(n) holds for every single walk.
    assert reference.values[1].sum() == pytest.approx(np.sqrt(n), rel=1e-6)


def test_points_never_added_score_zero_and_stderr_is_finite_elsewhere():
    n = 6
    perm_id, step, added, masks = walk_rows(3, 4, n, stop_after={0: 2, 1: 2, 2: 2, 3: 2})
    scores = tmc_shapley(perm_id, step, added, masks.sum(axis=1, keepdims=True) ** 2.0, n)
    never = ~np.isin(np.arange(n), added)
    assert never.any()
    np.testing.assert_array_equal(scores.values[0, never], 0.0)
    assert not np.isnan(scores.values).any() and np.isfinite(scores.stderr).all()
    single = tmc_shapley(perm_id[:3], step[:3], added[:3], np.ones((3, 1)), n)
    assert np.isinf(single.stderr).all()  # one permutation: no spread to estimate


def test_broken_layouts_are_named():
    perm_id, step, added, masks = walk_rows(4, 2, 3)
    utility = masks.sum(axis=1).astype(float)
    gap = step != 1
    with pytest.raises(EstimatorInputError, match="no step 1 row"):
        tmc_shapley(perm_id[gap], step[gap], added[gap], utility[gap], 3)
    twice = np.r_[np.arange(len(step)), 2]
    with pytest.raises(EstimatorInputError, match="two rows for step"):
        tmc_shapley(perm_id[twice], step[twice], added[twice], utility[twice], 3)
    no_empty = step > 0
    with pytest.raises(EstimatorInputError, match="empty_margins"):
        tmc_shapley(perm_id[no_empty], step[no_empty], added[no_empty], utility[no_empty], 3)
    wrong = added.copy()
    wrong[0] = 1
    with pytest.raises(EstimatorInputError, match="added must be -1"):
        tmc_shapley(perm_id, step, wrong, utility, 3)


# ---------------------------------------------------------------- interval coverage

N_GAME = 10
GAME_SEEDS = (0, 1, 2, 3)  # four ridge games, scored as four targets of the same walks


def exact_games(n: int = N_GAME, game_seeds=GAME_SEEDS) -> tuple[np.ndarray, np.ndarray]:
    """(utility float64[2^n, G], exact Shapley float64[G, n]) of G ridge games."""
    utility = np.stack([ridge_game(n, seed=s) for s in game_seeds], axis=1)
    exact = np.stack([exact_semivalue(u, n, shapley_weight(n)) for u in utility.T])
    return utility, exact


def complete_walks(rng: np.random.Generator, n_walks: int, n: int):
    """Rows of ``n_walks`` untruncated walks (steps 0..n each) drawn at once:
    (perm_id, step, added int64[n_walks·(n+1)], subset codes int64[n_walks·(n+1)])."""
    order = np.argsort(rng.random((n_walks, n)), axis=1)
    codes = np.concatenate([np.zeros((n_walks, 1), np.int64), np.cumsum(1 << order, axis=1)], 1)
    added = np.concatenate([np.full((n_walks, 1), -1), order], axis=1)
    perm_id = np.repeat(np.arange(n_walks), n + 1)
    step = np.tile(np.arange(n + 1), n_walks)
    return perm_id, step, added.ravel(), codes.ravel()


def outside_fraction(
    utility: np.ndarray, exact: np.ndarray, n_models: int, n_seeds: int, *, t_interval: bool = True
) -> float:
    """Fraction of (seed, game, point) whose exact Shapley value lies outside the 95% interval
    ±1.96·stderr of `tmc_shapley` from ``n_models`` prefix models (n_models // (n+1) walks);
    ``t_interval=False`` undoes the Student-t factor (the normal interval used before)."""
    n = exact.shape[1]
    n_walks = n_models // (n + 1)
    outside = []
    for seed in range(n_seeds):
        perm_id, step, added, codes = complete_walks(np.random.default_rng(seed), n_walks, n)
        scores = tmc_shapley(perm_id, step, added, utility[codes], n)
        stderr = scores.stderr if t_interval else scores.stderr / student_t_factor(n_walks)
        outside.append(np.abs(scores.values - exact) > 1.96 * stderr)
    return float(np.mean(outside))


@pytest.fixture(scope="module")
def games() -> tuple[np.ndarray, np.ndarray]:
    return exact_games()


@pytest.mark.parametrize("n_models", [800, 3_200, 12_800])
def test_intervals_cover_exact_shapley_values(games, n_models):
    # 150 seeds x 4 games x 10 points = 6,000 intervals: a true 5% reads 0.05 ± 0.006 (1 sd,
    # more with the games' shared walks), far inside the band.
    outside = outside_fraction(*games, n_models, n_seeds=150)
    assert 0.02 <= outside <= 0.08, f"{n_models} models: {outside:.3f} outside the 95% interval"


def test_student_t_factor_widens_few_walks_only():
    assert student_t_factor(18) == pytest.approx(2.110 / 1.96, abs=1e-3)
    assert 1.0 < student_t_factor(1_163) < 1.002
    with pytest.raises(EstimatorInputError, match="at least 2 walks"):
        student_t_factor(1)
