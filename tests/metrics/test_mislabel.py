import numpy as np
import pytest

from datamodels.metrics.mislabel import mislabel_detection


def test_perfect_random_and_reversed_rankings():
    rng = np.random.default_rng(0)
    n = 1000
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, 100, replace=False)] = True
    perfect = mislabel_detection(flipped.astype(float), flipped)
    assert perfect.found_at(0.1) == pytest.approx(1.0)
    assert perfect.found_at(0.05) == pytest.approx(0.5)
    assert perfect.auc == pytest.approx(1 - 0.1 / 2, abs=1e-3)  # rises linearly over the first 10%
    reversed_ = mislabel_detection(-flipped.astype(float), flipped)
    assert reversed_.found_at(0.9) == pytest.approx(0.0)
    assert reversed_.auc == pytest.approx(0.05, abs=1e-3)
    random_aucs = [mislabel_detection(rng.normal(size=n), flipped).auc for _ in range(20)]
    assert abs(np.mean(random_aucs) - 0.5) < 0.03


def test_curve_endpoints_and_no_flips():
    result = mislabel_detection(np.array([3.0, 1.0, 2.0]), np.array([False, False, True]))
    assert result.inspected.tolist() == [0, 1 / 3, 2 / 3, 1]
    assert result.found.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="flipped"):
        mislabel_detection(np.zeros(3), np.zeros(3, dtype=bool))
