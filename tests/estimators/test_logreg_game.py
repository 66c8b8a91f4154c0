"""Owen-Shapley on a real retraining game converges to exhaustive enumeration.

The game: ``logreg`` (weight decay 0.05) on the first 10 digits of classes 0 and 1, utility =
margins on 20 held-out digits. Ground truth: all 2^10 = 1024 subsets trained to gradient
norm 1e-8 and the exact Shapley values summed over them. Estimates: masks sampled at the 5
Gauss-Legendre levels (exact quadrature for D(·; p) of degree n − 1 = 9, so sampling is the
only error), the sampled subsets *trained again* at the default tolerance 1e-6, as a run
would train them.

62 of the subsets hold one class only. Without a bias penalty their optimum is at infinity
and the margins were wherever the solver stopped (up to 16 units apart between the two
tolerances), so the estimates converged to a different game: relative error 0.39, 0.34,
0.33, 0.32 at 200 … 12,800 models. With the centred-bias penalty every subset has one
optimum, and the error falls like 1/sqrt(models): 0.30, 0.14, 0.072, 0.038 (mean of 3 seeds).
"""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from datamodels.estimators import owen_grid, shapley
from datamodels.trainers.api import train_batch
from tests.trainers.digits_arrays import all_subsets, digits_data, logreg_config

N = 10
WEIGHT_DECAY = 0.05
PER_LEVEL = (40, 160, 640, 2560)  # x 5 levels: 200 ... 12,800 models, 4x apart
SEEDS = (0, 1, 2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def exact_shapley(utility: np.ndarray, n: int) -> np.ndarray:
    """float64[T, n] from the exhaustive table ``utility`` float[2^n, T] (row = bit code)."""
    sizes = all_subsets(n).sum(1)
    values = np.zeros((utility.shape[1], n))
    for i in range(n):
        without = np.flatnonzero(((np.arange(2**n) >> i) & 1) == 0)
        gain = utility[without + (1 << i)] - utility[without]
        weight = np.array([1.0 / (n * comb(n - 1, int(k))) for k in sizes[without]])
        values[:, i] = weight @ gain
    return values


def trained_margins(masks: np.ndarray, data, tolerance: float) -> np.ndarray:
    """float64[m, T]: each distinct subset trained once, margins copied to its rows."""
    distinct, rows = np.unique(masks, axis=0, return_inverse=True)
    seeds = np.zeros(len(distinct), dtype=np.int64)
    outcome = train_batch(distinct, seeds, data, logreg_config(WEIGHT_DECAY, tolerance))
    assert not outcome.failed.any()
    return outcome.margins.astype(np.float64)[rows.ravel()]


def test_sampled_shapley_converges_to_exhaustive_logreg_game():
    data = digits_data(N, 20, 2)
    labels = data.train_y.numpy()
    masks = all_subsets(N)
    single_class = np.array([len(set(labels[m])) == 1 for m in masks])
    assert single_class.sum() == 2 * (2**5 - 1)  # 5 of each class: the case under test
    exact = exact_shapley(trained_margins(masks, data, 1e-8), N)
    assert np.abs(exact).max() > 1.0  # a non-trivial game

    nodes, weights = owen_grid(5)
    errors = []
    for per_level in PER_LEVEL:
        relative = []
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            alpha = np.repeat(nodes, per_level)
            sampled = rng.random((len(alpha), N)) < alpha[:, None]
            margins = trained_margins(sampled, data, 1e-6)
            values = shapley(sampled, margins, alpha, grid=(nodes, weights)).values
            relative.append(np.linalg.norm(values - exact) / np.linalg.norm(exact))
        errors.append(float(np.mean(relative)))
    # Monte-Carlo error halves with 4x the models; require 1.5x at every step.
    for fewer, more in zip(errors[:-1], errors[1:], strict=True):
        assert more < fewer / 1.5, f"relative errors {np.round(errors, 4)}"
    assert errors[-1] < 0.06, f"relative errors {np.round(errors, 4)}"  # observed 0.038
